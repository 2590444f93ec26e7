"""Kueue's Workload in a queued CompressionJob's status, and who decides admission, without a cluster.
The same paths against real Kueue: test_kueue.py."""

from __future__ import annotations

import asyncio
import copy
import re
from pathlib import Path
from typing import Any

import yaml
from fakeapi import FakeApi

from factories import manifest
from kompression.api.validation import SpecInvalid, parse_job
from kompression.controller import kueue
from kompression.controller.builders import build_job
from kompression.controller.metrics import Metrics
from kompression.controller.reconcile import Reconciler
from kompression.controller.settings import Settings
from kompression.controller.store import Store

DOCS = Path(__file__).resolve().parents[2] / "docs" / "install.md"
JOBS = "/apis/batch/v1/namespaces/team-a/jobs"
CRS = "/apis/kompression.dev/v1alpha1/namespaces/team-a/compressionjobs"
# Kueue's own words (v0.17), as it writes them on a Workload that waits for quota.
NO_QUOTA = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 1 more needed"
)
PREEMPTED = "Preempted to accommodate a workload (UID: 1f2e, JobUID: 9a8b) due to prioritization in the ClusterQueue"


def _workload(job: str = "resnet", job_uid: str = "uid-resnet", *conditions: dict[str, str], **spec: Any) -> Any:
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {
            "name": f"job-{job}-3c1a",
            "namespace": "team-a",
            "uid": f"wl-{job}",
            "resourceVersion": "7",
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": job_uid, "controller": True}
            ],
        },
        "spec": {"queueName": "gpu", "podSets": [{"name": "main", "count": 1, "template": {"spec": {}}}], **spec},
        "status": {"conditions": list(conditions)},
    }


def _cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def _view(*conditions: dict[str, str], **spec: Any) -> kueue.WorkloadView:
    return kueue.WorkloadView.of(kueue.slim_workload(_workload("resnet", "uid-resnet", *conditions, **spec)))


def test_no_workload_yet_waits_for_kueue() -> None:
    obs = kueue.queued(None)
    assert (obs.phase, obs.reason) == ("Queued", kueue.WAITING)


def test_a_workload_without_quota_says_kueues_reason() -> None:
    obs = kueue.queued(_view(_cond("QuotaReserved", "False", "Pending", NO_QUOTA)))
    assert (obs.phase, obs.reason) == ("Queued", kueue.QUEUED)
    assert NO_QUOTA in obs.message and "job-resnet-3c1a" in obs.message and "LocalQueue gpu" in obs.message
    assert not obs.stalled


def test_a_missing_queue_is_inadmissible() -> None:
    said = "LocalQueue gpu doesn't exist"
    obs = kueue.queued(_view(_cond("QuotaReserved", "False", "Inadmissible", said)))
    assert (obs.reason, said in obs.message) == (kueue.INADMISSIBLE, True)
    assert kueue.EVENT_TYPES[obs.reason] == "Warning"


def test_preemption_reads_as_preempted_and_queued_not_failed() -> None:
    view = _view(
        _cond("QuotaReserved", "False", "Pending", NO_QUOTA),
        _cond("Evicted", "True", "Preempted", PREEMPTED),
        _cond("Preempted", "True", "InClusterQueue", PREEMPTED),
        _cond("Requeued", "True", "Preempted", PREEMPTED),
        priority=10,
        priorityClassRef={"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "low"},
    )
    obs = kueue.queued(view)
    assert (obs.phase, obs.reason, obs.stalled) == ("Queued", kueue.PREEMPTED, False)
    assert PREEMPTED in obs.message and "WorkloadPriorityClass low, priority 10" in obs.message


def test_another_eviction_is_named_for_what_kueue_said() -> None:
    obs = kueue.queued(_view(_cond("Evicted", "True", "ClusterQueueStopped", "The ClusterQueue is stopped")))
    assert obs.reason == kueue.EVICTED and "ClusterQueueStopped" in obs.message


def test_readmitted_after_preemption_is_no_longer_preempted() -> None:
    # Kueue sets Evicted back to False when it reserves quota again.
    view = _view(
        _cond("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpu-cq"),
        _cond("Admitted", "True", "Admitted", "The workload is admitted"),
        _cond("Evicted", "False", "QuotaReserved", "Previously: Preempted"),
    )
    obs = kueue.queued(view)
    assert obs.reason == kueue.QUEUED and "admitted it" in obs.message


def test_slim_workload_keeps_only_what_is_read() -> None:
    body = _workload("resnet", "uid-resnet", _cond("QuotaReserved", "False", "Pending", NO_QUOTA))
    slim = kueue.slim_workload(body)
    assert "podSets" not in slim["spec"]
    assert kueue.WorkloadView.of(slim) == kueue.WorkloadView.of(body)
    assert kueue.job_key(body) == ("team-a", "resnet")
    body["metadata"]["ownerReferences"][0]["apiVersion"] = "example.com/v1"  # a Job of another API
    assert kueue.job_key(body) is None


def test_workload_priority_class_becomes_kueues_label_and_needs_a_queue() -> None:
    job = parse_job(manifest(runPolicy={"queueName": "gpu", "workloadPriorityClassName": "high"}))
    labels = build_job(job, Settings())["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/priority-class"] == "high"
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu"
    try:
        parse_job(manifest(runPolicy={"workloadPriorityClassName": "high"}))
    except SpecInvalid as exc:
        assert "workloadPriorityClassName needs queueName" in str(exc)
    else:
        raise AssertionError("a WorkloadPriorityClass without a queue was accepted")


# ---------------------------------------------------------------- in the reconciler


def _cr(name: str, created: str, **spec: Any) -> dict[str, Any]:
    doc = manifest(name=name, resources={"gpus": 1}, **spec)
    doc["metadata"].update(uid=f"cr-{name}", creationTimestamp=created, resourceVersion="1")
    return doc


def _setup(*crs: dict[str, Any], settings: Settings) -> tuple[FakeApi, Store, Reconciler]:
    api, store = FakeApi(), Store()
    for cr in crs:
        api.put(f"{CRS}/{cr['metadata']['name']}", cr)
        store.put_cr(copy.deepcopy(cr))
    return api, store, Reconciler(api, settings, store, Metrics())  # type: ignore[arg-type]


def _status(api: FakeApi, name: str) -> dict[str, Any]:
    return api.objects[f"{CRS}/{name}"].get("status", {})


def test_kueue_decides_for_a_queued_job_and_the_operators_limit_for_the_rest() -> None:
    # One GPU slot in the operator's queue. The Kueue job is created at once (suspended, Kueue's to
    # admit) and holds no slot: the operator's own job after it still gets the slot.
    queued = _cr("kq", "2025-01-01T00:00:01Z", runPolicy={"queueName": "gpu"})
    own = _cr("own", "2025-01-01T00:00:02Z")
    later = _cr("later", "2025-01-01T00:00:03Z")
    api, store, rec = _setup(queued, own, later, settings=Settings(max_gpu_jobs=1))
    for name in ("kq", "own", "later"):
        asyncio.run(rec.sync(("team-a", name)))
    assert sorted(u for u in api.objects if u.startswith(JOBS)) == [f"{JOBS}/kq", f"{JOBS}/own"]
    assert api.objects[f"{JOBS}/kq"]["spec"]["suspend"] is True
    assert (_status(api, "later")["phase"], _status(api, "later")["queuePosition"]) == ("Queued", 1)
    assert rec.admission.in_flight() == {"team-a": 1}  # own's; kq is Kueue's to count
    assert [k for k, _, _ in rec.admission.waiting()] == [("team-a", "later")]
    # Kueue admits kq (unsuspends it): still not the operator's to count
    running = copy.deepcopy(store.jobs[("team-a", "kq")])
    running["spec"]["suspend"] = False
    store.put_job(running)
    assert rec.admission.in_flight() == {"team-a": 1}


def test_the_workload_of_a_queued_job_reaches_its_status() -> None:
    api, store, rec = _setup(_cr("kq", "2025-01-01T00:00:01Z", runPolicy={"queueName": "gpu"}), settings=Settings())
    key = ("team-a", "kq")
    asyncio.run(rec.sync(key))
    assert _status(api, "kq")["conditions"][0]["reason"] == kueue.WAITING
    job_uid = store.jobs[key]["metadata"]["uid"]
    # A Workload of a deleted namesake Job (another uid) says nothing about this one
    assert store.put_workload(_workload("kq", "old-uid", _cond("QuotaReserved", "False", "Pending", "x"))) == key
    asyncio.run(rec.sync(key))
    assert _status(api, "kq")["conditions"][0]["reason"] == kueue.WAITING
    pending = _workload("kq", job_uid, _cond("QuotaReserved", "False", "Pending", NO_QUOTA))
    assert store.put_workload(pending) == key
    asyncio.run(rec.sync(key))
    ready = _status(api, "kq")["conditions"][0]
    assert (ready["reason"], NO_QUOTA in ready["message"]) == (kueue.QUEUED, True)
    assert _status(api, "kq")["phase"] == "Queued"
    # deleted with its Job: forgotten
    store.put_workload(pending, deleted=True)
    assert store.workload_of("team-a", "kq") is None


def docs_example() -> list[dict[str, Any]]:
    """The objects of docs/install.md's Kueue example, in order (test_kueue.py runs them)."""
    section = DOCS.read_text().split("## Queueing with Kueue", 1)[1]
    (block,) = re.findall(r"```yaml\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    return [dict(doc) for doc in yaml.safe_load_all(block)]


def test_the_docs_kueue_example_is_a_valid_job_for_kueue() -> None:
    objects = docs_example()
    assert [o["kind"] for o in objects] == [
        "ResourceFlavor",
        "ClusterQueue",
        "LocalQueue",
        "WorkloadPriorityClass",
        "CompressionJob",
    ]
    job = parse_job(objects[-1])
    assert kueue.kueue_admits(job)
    assert job.spec.runPolicy.workloadPriorityClassName == objects[3]["metadata"]["name"]
