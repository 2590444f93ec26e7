"""What the operator has seen through its watches: CompressionJobs, and the Jobs and pods they own.

Filled by the kopf event handlers; read by the reconciler, the queue and the progress server, so
that a reconcile costs no API reads in the common case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kompression.api.v1alpha1 import CompressionJob
from kompression.api.validation import SpecInvalid, parse_job
from kompression.controller import kueue
from kompression.controller.labels import controller_ref, is_planner, owner_name
from kompression.controller.queueing import Key

Body = dict[str, Any]


def _key_of_child(obj: Body) -> Key | None:
    name = owner_name(obj)
    ns = obj.get("metadata", {}).get("namespace")
    return (ns, name) if name and ns else None


def _identity(cr: Body) -> tuple[object, object, object]:
    """What makes a stored CompressionJob's parse stale: another object, or a new spec."""
    return (cr["metadata"].get("uid"), cr["metadata"].get("generation"), cr.get("spec"))


def _older(meta: Body, than: Body) -> bool:
    try:  # resourceVersions are opaque by contract but etcd revisions in practice
        return int(meta.get("resourceVersion") or 0) < int(than.get("resourceVersion") or 0)
    except ValueError:
        return False


def _listed_before(meta: Body, rv: str) -> bool:
    """Last written before a LIST read at `rv`, so the LIST speaks for it (see `_older`)."""
    try:
        return int(meta.get("resourceVersion") or 0) <= int(rv)
    except ValueError:
        return False


def _pod_job_key(pod: Body) -> Key | None:
    # Pods are owned by the Job, not by the CompressionJob: map through the Job's name.
    ref = controller_ref(pod, "Job")
    return (pod["metadata"].get("namespace"), ref.name) if ref is not None and ref.name else None


# Deleted CompressionJobs remembered by uid, so that the answer to a status write that crossed the
# deletion never brings one back (it would haunt the gauges and the queue until the next resync).
TOMBSTONES = 4096

_POD_META = (
    "name",
    "namespace",
    "uid",
    "ownerReferences",
    "labels",
    "creationTimestamp",
    "deletionTimestamp",
    "resourceVersion",
)


def _meta(obj: Body) -> Body:
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)  # often the largest part of an object, and never read here
    return meta


def slim_cr(cr: Body) -> Body:
    return {**cr, "metadata": _meta(cr)}


def _parse(cr: Body) -> CompressionJob | SpecInvalid:
    try:
        # Without status: what an older operator wrote there must not make the spec invalid.
        return parse_job({k: cr.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
    except SpecInvalid as exc:
        return exc


def slim_job(job: Body) -> Body:
    """What the reconciler reads of a Job: metadata, status, run policy and the container resources."""
    spec = job.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    kept = {k: v for k, v in spec.items() if k != "template"}
    kept["template"] = {
        "spec": {"containers": [{"name": c.get("name"), "resources": c.get("resources") or {}} for c in containers]}
    }
    return {"metadata": _meta(job), "spec": kept, "status": job.get("status") or {}}


def slim_pod(pod: Body) -> Body:
    """What the status and progress checks read of a pod: identity, owner, node and status."""
    meta = pod.get("metadata") or {}
    return {
        "metadata": {k: meta[k] for k in _POD_META if k in meta},
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": pod.get("status") or {},
    }


@dataclass
class Store:
    """Slimmed copies (no managedFields, no pod specs): memory stays flat at thousands of jobs."""

    crs: dict[Key, Body] = field(default_factory=dict)
    # Each CompressionJob parsed once per generation (status writes and relists leave it be).
    parsed: dict[Key, CompressionJob | SpecInvalid] = field(default_factory=dict)
    jobs: dict[Key, Body] = field(default_factory=dict)  # the worker Jobs, keyed by the owning CompressionJob
    planners: dict[Key, Body] = field(default_factory=dict)  # the memory-planning Jobs, likewise
    job_owner: dict[Key, Key] = field(default_factory=dict)  # (ns, job name) -> CompressionJob key
    pods: dict[Key, dict[str, Body]] = field(default_factory=dict)  # keyed by (ns, job name)
    gone: dict[str, None] = field(default_factory=dict)  # uids of deleted CompressionJobs, oldest first
    workloads: dict[Key, Body] = field(default_factory=dict)  # Kueue's, keyed by (ns, job name)

    def put_cr(self, body: Body) -> Key:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if meta.get("uid") in self.gone:
            return key
        # Our own status writes land here before their watch events do: never step back.
        old = self.crs.get(key)
        if old is None or old["metadata"].get("uid") != meta.get("uid") or not _older(meta, old["metadata"]):
            self.crs[key] = slim_cr(body)
            if old is None or _identity(old) != _identity(body) or key not in self.parsed:
                self.parsed[key] = _parse(body)
        return key

    def job_of(self, key: Key) -> CompressionJob:
        """The CompressionJob stored under `key`, parsed; SpecInvalid if its spec is invalid."""
        parsed = self.parsed.get(key)
        if parsed is None:
            parsed = self.parsed[key] = _parse(self.crs[key])
        if isinstance(parsed, SpecInvalid):
            raise parsed
        return parsed

    def valid_job(self, key: Key) -> CompressionJob | None:
        parsed = self.parsed.get(key)
        return parsed if isinstance(parsed, CompressionJob) else None

    def drop_cr(self, key: Key, uid: str | None = None) -> None:
        """Forget a deleted CompressionJob (`uid`: the deleted one's; None: whatever is stored)."""
        held = self.crs.get(key, {}).get("metadata", {}).get("uid")
        if uid is None or held == uid:
            self.crs.pop(key, None)
            self.parsed.pop(key, None)
        if uid or held:
            self.gone[uid or held] = None
            if len(self.gone) > TOMBSTONES:
                del self.gone[next(iter(self.gone))]

    def holds(self, key: Key, uid: str | None) -> bool:
        held: str | None = self.crs.get(key, {}).get("metadata", {}).get("uid")
        return held == uid

    def put_job(self, job: Body, deleted: bool = False) -> Key | None:
        key = _key_of_child(job)
        if key is None:
            return None
        job_key = (key[0], job["metadata"]["name"])
        held = self.planners if is_planner(job) else self.jobs
        if deleted:
            if held.get(key, {}).get("metadata", {}).get("uid") == job["metadata"].get("uid"):
                held.pop(key, None)
                self.job_owner.pop(job_key, None)
                self.workloads.pop(job_key, None)
        else:
            held[key] = slim_job(job)
            self.job_owner[job_key] = key
        return key

    def put_pod(self, pod: Body, deleted: bool = False) -> Key | None:
        job_key = _pod_job_key(pod)
        if job_key is None:
            return None
        pods = self.pods.setdefault(job_key, {})
        if deleted:
            pods.pop(pod["metadata"]["name"], None)
            if not pods:
                self.pods.pop(job_key, None)
        else:
            pods[pod["metadata"]["name"]] = slim_pod(pod)
        return self.job_owner.get(job_key)

    def put_workload(self, workload: Body, deleted: bool = False) -> Key | None:
        """Keep a Kueue Workload of one of our Jobs; the key of the CompressionJob it concerns."""
        job_key = kueue.job_key(workload)
        if job_key is None:
            return None
        if deleted:
            held = self.workloads.get(job_key, {}).get("metadata", {}).get("uid")
            if held == workload["metadata"].get("uid"):
                self.workloads.pop(job_key, None)
        else:
            # Kept even while its Job is unknown: after a restart the Workloads may be listed
            # before the Jobs, and nothing would bring a Workload that then stays unchanged back.
            self.workloads[job_key] = kueue.slim_workload(workload)
        return self.job_owner.get(job_key)

    def workload_of(self, namespace: str, job_name: str) -> Body | None:
        return self.workloads.get((namespace, job_name))

    def pods_of(self, namespace: str, job_name: str) -> list[Body]:
        return list(self.pods.get((namespace, job_name), {}).values())

    # ------------------------------------------------------------ resync: deletions the watches missed

    def drop_unlisted_crs(self, listed: list[Body], rv: str, namespace: str | None) -> list[Key]:
        """Drop the CompressionJobs a LIST read at `rv` (of `namespace`, None: all) no longer has."""
        present = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in listed}
        gone = [
            key
            for key, cr in self.crs.items()
            if namespace in (None, key[0]) and key not in present and _listed_before(cr["metadata"], rv)
        ]
        for key in gone:
            self.drop_cr(key)
        return gone

    def drop_unlisted_jobs(self, listed: list[Body], rv: str, namespace: str | None) -> list[Key]:
        """Drop the Jobs a LIST no longer has; the keys of the CompressionJobs that owned them."""
        present = {o["metadata"].get("uid") for o in listed}
        gone = []
        for held in (self.jobs, self.planners):
            for key, job in list(held.items()):
                meta = job["metadata"]
                # A Job without a uid is a queue reservation, not something the API server has yet.
                unlisted = meta.get("uid") and meta["uid"] not in present and _listed_before(meta, rv)
                if namespace in (None, key[0]) and unlisted:
                    del held[key]
                    self.job_owner.pop((key[0], meta["name"]), None)
                    gone.append(key)
        return gone

    def drop_unlisted_pods(self, listed: list[Body], rv: str, namespace: str | None) -> list[Key]:
        """Drop the pods a LIST no longer has; the keys of the CompressionJobs they belonged to."""
        present = {o["metadata"].get("uid") for o in listed}
        owners = []
        for job_key, pods in list(self.pods.items()):
            if namespace not in (None, job_key[0]):
                continue
            for name, pod in list(pods.items()):
                if pod["metadata"].get("uid") not in present and _listed_before(pod["metadata"], rv):
                    del pods[name]
                    owner = self.job_owner.get(job_key)
                    if owner is not None:
                        owners.append(owner)
            if not pods:
                del self.pods[job_key]
        return owners
