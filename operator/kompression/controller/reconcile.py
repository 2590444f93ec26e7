"""The reconcile loop: one CompressionJob at a time, level-triggered, from the Store to the API.

A work queue (as in controller-runtime) rather than kopf's per-change handlers: every watch event
only enqueues a key, and `sync` derives everything from what exists now (the CR, its Job, its
pods). Nothing is remembered between runs, so an operator killed at any point resumes by listing.
Failed syncs are retried with backoff; user errors (an invalid spec) are recorded and not retried.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from kompression.api import failures
from kompression.api.constants import GROUP, PLURAL, VERSION
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import CompressionJob, ReportCursor, Result, StepStatus
from kompression.api.validation import SpecInvalid, parse_job
from kompression.controller import outputs
from kompression.controller.builders import build_configmap, build_job, job_recreation, job_spec_drift
from kompression.controller.conditions import (
    TERMINAL_PHASES,
    Observation,
    desired_conditions,
    merge_conditions,
    same_conditions,
)
from kompression.controller.events import post_event
from kompression.controller.kubeapi import Api, ApiError, path
from kompression.controller.labels import MANAGED_SELECTOR, controller_uid
from kompression.controller.leadership import Leadership
from kompression.controller.metrics import Metrics
from kompression.controller.naming import configmap_name, job_name
from kompression.controller.observe import final_report, observe
from kompression.controller.queueing import Candidate, Key, Limits, decide
from kompression.controller.reports import differs, report_status
from kompression.controller.settings import Settings
from kompression.controller.store import Body, Store

log = logging.getLogger(__name__)

WARNING_REASONS = {"Unschedulable", "ImagePullBackOff", "JobConflict", failures.INVALID_SPEC.reason, outputs.REASON}
MAX_BACKOFF_S = 60.0
RECREATE_LIMIT = "RecreateLimitExceeded"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _job_finished(job: Body) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in job.get("status", {}).get("conditions") or ()
    )


def _cr_path(ns: str, name: str, sub: str | None = None) -> str:
    return path(GROUP, VERSION, PLURAL, namespace=ns, name=name, sub=sub)


class Conflict(Exception):
    """A child with our deterministic name exists and is not ours."""


class Reconciler:
    def __init__(
        self, api: Api, settings: Settings, store: Store, metrics: Metrics, leadership: Leadership | None = None
    ) -> None:
        self.api, self.settings, self.store, self.metrics = api, settings, store, metrics
        self.leadership = leadership
        if leadership is not None:
            leadership.on_change(self._leadership_changed)
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._events: set[asyncio.Future[None]] = set()
        self._admission = asyncio.Lock()
        self._priorities: dict[str, int] = {}
        self._limits = Limits(settings.max_gpu_jobs, settings.max_gpu_jobs_per_namespace)
        # Counted when scraped, from what the watches show.
        metrics.gpu_in_flight.set_function(lambda: float(sum(self._in_flight().values())))

    # ---------------------------------------------------------------- the queue

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.enqueue, key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def run(self) -> None:
        # Reconciles wait on the API server, not the CPU: several in flight keep a burst moving.
        await asyncio.gather(*(self._work() for _ in range(max(1, self.settings.workers))))

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            if self.leadership is not None and not self.leadership.active:
                continue  # paused: everything is enqueued again when this replica leads
            if key in self._active:  # another worker has it: run again once it is done
                self._dirty.add(key)
                continue
            self._active.add(key)
            try:
                await self.sync(key)
                self._failures.pop(key, None)
            except ApiError as err:
                if not err.namespace_terminating:
                    self._failed(key)
                # else: the namespace and this CR are going away; nothing to create there.
            except Exception:
                self._failed(key)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.enqueue(key)

    def _failed(self, key: Key) -> None:
        """Count, log (inside the caller's except block) and retry with exponential backoff."""
        self.metrics.reconcile_errors.inc()
        n = self._failures[key] = self._failures.get(key, 0) + 1
        log.exception("reconcile of %s/%s failed (attempt %d)", *key, n)
        self.enqueue(key, min(2.0**n * 0.25, MAX_BACKOFF_S))

    def _event(self, cr: Body, type_: str, reason: str, message: str) -> None:
        """Post an Event without holding up the reconcile (an Event is advice, never state)."""
        task = asyncio.ensure_future(post_event(self.api, cr, type_, reason, message))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    def _leadership_changed(self, active: bool) -> None:
        if active:  # what the store holds may be stale; kopf's resumed watches refresh it
            for key in list(self.store.crs):
                self.enqueue(key)

    def cr_gone(self, key: Key, uid: str | None = None) -> None:
        """A CompressionJob no longer exists: forget it, and let a queued one have its place."""
        self.store.drop_cr(key, uid)
        self.metrics.forget(key)
        self.kick_queue()

    # ---------------------------------------------------------------- resync

    async def resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval_s)
            if self.leadership is not None and not self.leadership.active:
                continue
            try:
                await self.resync()
            except Exception:
                log.exception("resync failed; the next one is in %.0f s", self.settings.resync_interval_s)

    async def resync(self) -> None:
        """Drop from the store what a LIST no longer has: deletions no watch event reported.

        kopf resumes a watch after a 410 Gone (etcd compacted past its resourceVersion) with a
        fresh LIST, which brings what was created or changed in the gap but says nothing of what
        was deleted. A ghost CompressionJob would keep its queue place; a ghost Job its GPU slot.
        """
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_SELECTOR.items())
        for ns in self.settings.namespaces or (None,):
            crs, rv = await self.api.identities(path(GROUP, VERSION, PLURAL, namespace=ns))
            for key in self.store.drop_unlisted_crs(crs, rv, ns):
                log.info("%s/%s was deleted while no watch saw it; forgotten", *key)
                self.cr_gone(key)
            jobs, rv = await self.api.identities(path("batch", "v1", "jobs", namespace=ns), selector)
            pods, pods_rv = await self.api.identities(path("", "v1", "pods", namespace=ns), selector)
            owners = self.store.drop_unlisted_jobs(jobs, rv, ns) + self.store.drop_unlisted_pods(pods, pods_rv, ns)
            for key in owners:
                self.enqueue(key)
            if owners:
                self.kick_queue()

    # ---------------------------------------------------------------- one CompressionJob

    async def sync(self, key: Key) -> None:
        cr = self.store.crs.get(key)
        if cr is None:
            return
        # Held by someone else's finalizer: it still reports on its Job, but gets no new children
        # (as a ReplicaSet being deleted makes no pods); garbage collection takes what it has.
        deleting = bool(cr["metadata"].get("deletionTimestamp"))
        status = cr.get("status") or {}
        generation = int(cr["metadata"].get("generation") or 1)
        try:
            spec = parse_job({k: cr[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        except SpecInvalid as exc:
            # What kopf.PermanentError means: recorded, not retried, until the spec changes.
            await self._write(cr, Observation("Failed", failures.INVALID_SPEC.reason, str(exc), stalled=True), None, {})
            return
        job = self.store.jobs.get(key)
        if job is not None and controller_uid(job) != cr["metadata"]["uid"]:
            job = None  # a Job of a deleted namesake, on its way out through garbage collection
        finished = status.get("phase") in TERMINAL_PHASES and status.get("observedGeneration") == generation
        if job is None:
            if finished or deleting:
                return  # done (its Job may have gone through ttlSecondsAfterFinished), or going
            job = await self._make_job(key, cr, spec)
            if job is None:
                return
        else:
            drift = job_spec_drift(spec, job)
            if drift:
                job = await self.api.merge_patch(
                    path("batch", "v1", "jobs", namespace=key[0], name=job["metadata"]["name"]), drift
                )
                self.store.put_job(job)
        # Counted on the Job itself, so that no crash or conflicting write between its creation
        # and this status write can lose the count.
        extra: dict[str, Any] = {"jobRecreations": job_recreation(job)} if job_recreation(job) else {}
        pods = self.store.pods_of(key[0], job["metadata"]["name"])
        policy = spec.spec.runPolicy
        obs = observe(job, pods, user_suspended=policy.suspend, kueue_managed=policy.queueName is not None)
        if obs.phase in TERMINAL_PHASES:
            reports = [r for r in map(final_report, pods) if r is not None]
            if reports:
                # The termination message is compact (no steps, environment): keep what POSTs left.
                extra.update(report_status(max(reports, key=lambda r: r.sequence), partial=True))
        await self._write(cr, obs, job, extra)

    async def _make_job(self, key: Key, cr: Body, spec: CompressionJob) -> Body | None:
        """Create the children, unless queued, conflicting, or deleted by hand too often."""
        status = cr.get("status") or {}
        # A Job was made before and is gone unfinished: someone deleted it.
        recreation = int(status.get("jobRecreations") or 0) + 1 if status.get("jobName") else 0
        if recreation > self.settings.max_job_recreations:
            # The store may just not have seen it yet (a restart lists CRs before Jobs): ask.
            existing = await self.api.get(path("batch", "v1", "jobs", namespace=key[0], name=job_name(key[1])))
            if existing is not None and controller_uid(existing) == cr["metadata"]["uid"]:
                self.store.put_job(existing)
                return existing
            await self._write(cr, _recreate_limit(key[1], self.settings.max_job_recreations), None, {})
            return None
        held_by = self._output_held_by(key, cr)
        if held_by is not None:
            obs = Observation("Pending", outputs.REASON, outputs.message(key[1], spec.spec.output.uri, held_by), True)
            await self._write(cr, obs, None, {})
            return None
        if not await self._admit(key, cr, spec):
            return None
        try:
            return await self._create_children(key, cr, spec, recreation)
        except Conflict as exc:
            await self._write(cr, Observation("Pending", "JobConflict", str(exc), stalled=True), None, {})
            return None

    async def _create_children(self, key: Key, cr: Body, spec: CompressionJob, recreation: int) -> Body:
        ns, name = key
        uid = cr["metadata"]["uid"]
        await self._create_owned(
            path("", "v1", "configmaps", namespace=ns),
            build_configmap(spec),
            uid,
            path("", "v1", "configmaps", namespace=ns, name=configmap_name(name)),
        )
        manifest = build_job(spec, self.settings, recreation)
        job, created = await self._create_owned(
            path("batch", "v1", "jobs", namespace=ns),
            manifest,
            uid,
            path("batch", "v1", "jobs", namespace=ns, name=job_name(name)),
        )
        self.store.put_job(job)
        log.info("%s Job %s/%s", "created" if created else "found our", ns, job_name(name))
        if created:
            if recreation:
                limit = self.settings.max_job_recreations
                self._event(
                    cr,
                    "Warning",
                    "JobRecreated",
                    f"the worker Job {job_name(name)} was deleted before the job finished; recreated it "
                    f"({recreation} of at most {limit} times)",
                )
            else:
                self._event(cr, "Normal", "JobCreated", f"created worker Job {job_name(name)}")
        return job

    async def _create_owned(self, collection: str, body: Body, uid: str, item: str) -> tuple[Body, bool]:
        """Create, or accept what is there if it is ours: AlreadyExists after a crash is success."""
        try:
            return await self.api.create(collection, body), True
        except ApiError as err:
            if err.status != 409:
                raise
        existing = await self.api.get(item)
        if existing is None:  # deleted between our create and get: let the retry create it
            raise RuntimeError(f"{item} vanished after AlreadyExists")
        if controller_uid(existing) != uid:
            kind = body["kind"]
            raise Conflict(
                f"a {kind} named {body['metadata']['name']} already exists and is not owned by this "
                f"CompressionJob; delete or rename it"
            )
        return existing, False

    # ---------------------------------------------------------------- output prefixes

    def _claim(self, key: Key, cr: Body) -> outputs.Claim | None:
        """The output prefix a CompressionJob holds or wants, while it is live."""
        meta = cr["metadata"]
        status = cr.get("status") or {}
        if meta.get("deletionTimestamp"):
            return None
        generation = int(meta.get("generation") or 1)
        if status.get("phase") in TERMINAL_PHASES and status.get("observedGeneration") == generation:
            return None
        job = self.store.jobs.get(key)
        if job is not None and (controller_uid(job) != meta.get("uid") or _job_finished(job)):
            return None
        uri = ((cr.get("spec") or {}).get("output") or {}).get("uri")
        if not isinstance(uri, str):
            return None
        return outputs.Claim(key[1], uri, meta.get("creationTimestamp") or "", started=job is not None)

    def _output_held_by(self, key: Key, cr: Body) -> outputs.Claim | None:
        me = self._claim(key, cr)
        if me is None:
            return None
        others = (self._claim(k, c) for k, c in self.store.crs.items() if k[0] == key[0] and k != key)
        return outputs.holder(me, (c for c in others if c is not None))

    # ---------------------------------------------------------------- queueing

    async def _priority(self, class_name: str | None) -> int:
        if not class_name:
            return 0
        if class_name not in self._priorities:
            obj = await self.api.get(path("scheduling.k8s.io", "v1", "priorityclasses", name=class_name))
            self._priorities[class_name] = int((obj or {}).get("value") or 0)
        return self._priorities[class_name]

    def _gpus(self, cr: Body) -> int:
        return int((cr.get("spec", {}).get("resources") or {}).get("gpus", 1))

    def _waiting(self) -> list[tuple[Key, Body]]:
        out = []
        for key, cr in self.store.crs.items():
            status = cr.get("status") or {}
            if (
                key not in self.store.jobs
                and status.get("phase") not in TERMINAL_PHASES
                and _ready_reason(status) != outputs.REASON  # not waiting for a GPU, but for its prefix
                and not cr["metadata"].get("deletionTimestamp")  # never admitted: it is going
                and self._gpus(cr) > 0
            ):
                out.append((key, cr))
        return out

    def _in_flight(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (ns, _), job in self.store.jobs.items():
            limits = job["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
            if self.settings.gpu_resource in limits and not _job_finished(job):
                counts[ns] = counts.get(ns, 0) + 1
        return counts

    async def _admit(self, key: Key, cr: Body, spec: CompressionJob) -> bool:
        if spec.spec.resources.gpus == 0 or (self._limits.total <= 0 and self._limits.per_namespace <= 0):
            return True
        async with self._admission:
            waiting = [
                Candidate(
                    k[0],
                    k[1],
                    c["metadata"].get("creationTimestamp") or "",
                    await self._priority((c["spec"].get("runPolicy") or {}).get("priorityClassName")),
                    self._gpus(c),
                )
                for k, c in self._waiting()
            ]
            decision = decide(waiting, self._in_flight(), self._limits)
            self.metrics.queue_depth.set(len(decision.positions))
            if key in decision.admitted:
                # Reserve the slot before letting go of the lock; the create follows at once.
                self.store.jobs[key] = build_job(spec, self.settings)
                return True
        position = decision.positions.get(key)
        obs = Observation("Queued", "Queued", f"waiting for a GPU slot: position {position} in the operator's queue")
        await self._write(cr, obs, None, {"queuePosition": position})
        return False

    def kick_queue(self) -> None:
        """A slot or a prefix may have been freed (a Job finished, a job was deleted): let the
        waiting try again."""
        for key, cr in self.store.crs.items():
            if _ready_reason(cr.get("status") or {}) == outputs.REASON:
                self.enqueue(key)
        if self._limits.total > 0 or self._limits.per_namespace > 0:
            for key, _ in self._waiting():
                self.enqueue(key)

    # ---------------------------------------------------------------- status

    async def _write(self, cr: Body, obs: Observation, job: Body | None, extra: dict[str, Any]) -> None:
        meta = cr["metadata"]
        key = (meta["namespace"], meta["name"])
        status = cr.get("status") or {}
        generation = int(meta.get("generation") or 1)
        conditions = merge_conditions(status.get("conditions") or [], desired_conditions(obs, generation), _now())
        patch: dict[str, Any] = {"phase": obs.phase, "observedGeneration": generation, "queuePosition": None}
        if job is not None:
            patch["jobName"] = job["metadata"]["name"]
            job_status = job.get("status") or {}
            # Written with the phase it belongs to, not as a write of its own while still Pending.
            if obs.phase == "Running" or obs.phase in TERMINAL_PHASES:
                patch["startTime"] = status.get("startTime") or job_status.get("startTime") or _now()
            if obs.phase in TERMINAL_PHASES:
                patch["completionTime"] = status.get("completionTime") or job_status.get("completionTime") or _now()
        patch.update(extra)
        if not differs(status, patch) and same_conditions(status.get("conditions") or [], conditions):
            if not self.store.holds(key, meta.get("uid")):
                return  # deleted while this reconcile ran
            self.metrics.set_phase(key, obs.phase)
            if obs.phase in TERMINAL_PHASES and status.get("result") and not self.metrics.has_results(key):
                # Finished before this process started: its gauges live in this process only.
                self.metrics.results(key, Result.model_validate(status["result"]))
            return
        patch["conditions"] = conditions
        # The conditions list is written whole, so the write is conditional on the resourceVersion
        # it was computed from: a concurrent status writer gets a 409 here instead of losing its
        # update, and the reconcile runs again on a fresh read.
        rv = meta.get("resourceVersion")
        body: dict[str, Any] = {"status": patch}
        if rv:
            body["metadata"] = {"resourceVersion": rv}
        try:
            updated = await self.api.merge_patch(_cr_path(*key, sub="status"), body)
        except ApiError as err:
            if err.status != 409:
                raise
            self.metrics.status_conflicts.inc()
            fresh = await self.api.get(_cr_path(*key))
            if fresh is not None:
                self.store.put_cr(fresh)
                self.enqueue(key)
            return
        self.store.put_cr(updated)
        if not self.store.holds(key, meta.get("uid")):
            return  # deleted while this write was on its way: it must not come back
        self.metrics.set_phase(key, obs.phase)
        await self._announce(cr, status, obs, updated)

    async def _announce(self, cr: Body, before: dict[str, Any], obs: Observation, updated: Body) -> None:
        was = (before.get("phase"), _ready_reason(before))
        if was == (obs.phase, obs.reason):
            return
        key = (cr["metadata"]["namespace"], cr["metadata"]["name"])
        if obs.phase in TERMINAL_PHASES and before.get("phase") not in TERMINAL_PHASES:
            after = updated.get("status") or {}
            steps = [StepStatus.model_validate(s) for s in after.get("steps") or []]
            report = WorkerReport.model_validate({"phase": obs.phase, "result": after.get("result")})
            self.metrics.finished(
                key,
                obs.phase,
                created=cr["metadata"].get("creationTimestamp"),
                completed=after.get("completionTime"),
                steps=steps,
                result=report.result,
            )
            self.kick_queue()
            self._event(cr, "Normal" if obs.phase == "Succeeded" else "Warning", obs.reason, obs.message)
        elif obs.reason in WARNING_REASONS:
            self._event(cr, "Warning", obs.reason, obs.message)

    async def apply_report(self, key: Key, report: WorkerReport, cursor: ReportCursor) -> None:
        """Merge a live report into status, unless the job already finished (the final report rules).
        `cursor` (the pod and sequence it came with) goes along, so that a restart keeps the order."""
        cr = self.store.crs.get(key)
        if cr is None or (cr.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return
        patch = report_status(report) | {"lastReport": cursor.to_wire()}
        if report.phase != "Running":
            patch.pop("currentStep")  # the outcome itself is the Job's to tell
        if differs(cr.get("status") or {}, patch):
            updated = await self.api.merge_patch(_cr_path(*key, sub="status"), {"status": patch})
            self.store.put_cr(updated)


def _recreate_limit(name: str, limit: int) -> Observation:
    return Observation(
        "Failed",
        RECREATE_LIMIT,
        f"the worker Job {job_name(name)} was deleted before the job finished once more after being recreated "
        f"{limit} times; not recreating it again (operator setting --max-job-recreations). Find what deletes it, "
        "then create the CompressionJob anew",
        stalled=True,
    )


def _ready_reason(status: dict[str, Any]) -> str | None:
    for c in status.get("conditions") or ():
        if c.get("type") == "Ready":
            reason = c.get("reason")
            return str(reason) if reason is not None else None
    return None
