"""The reconcile loop: one CompressionJob at a time, level-triggered, from the Store to the API.

A work queue (as in controller-runtime) rather than kopf's per-change handlers: every watch event
only enqueues a key, and `sync` derives everything from what exists now (the CR, its Job, its
pods). Nothing is remembered between runs, so an operator killed at any point resumes by listing.
Failed syncs are retried with backoff; user errors (an invalid spec) are recorded and not retried.
Queueing is admission.py's, status writes and Events statuswriter.py's, the queue workqueue.py's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kompression.api import failures
from kompression.api.constants import GROUP, PLURAL, VERSION
from kompression.api.memory_plan import gib
from kompression.api.v1alpha1 import CompressionJob, MemoryPlan
from kompression.api.validation import SpecInvalid, check_architectures
from kompression.controller import outputs
from kompression.controller.admission import Admission
from kompression.controller.builders import (
    ResourcesTooSmall,
    build_configmap,
    build_job,
    build_planning_job,
    job_spec_drift,
    planned,
    planned_resources,
)
from kompression.controller.conditions import MEMORY_PLANNED, RESOURCES_TOO_SMALL, TERMINAL_PHASES, Observation
from kompression.controller.kubeapi import Api, ApiError, path
from kompression.controller.kueue import WorkloadView, kueue_admits
from kompression.controller.labels import MANAGED_SELECTOR, controller_uid
from kompression.controller.leadership import Leadership
from kompression.controller.metrics import Metrics
from kompression.controller.naming import configmap_name, job_name, planning_job_name
from kompression.controller.observe import Planned, final_report, observe, planning
from kompression.controller.queueing import Key
from kompression.controller.report_status import report_status
from kompression.controller.settings import Settings
from kompression.controller.statuswriter import StatusWriter
from kompression.controller.store import Body, Store
from kompression.controller.views import CompressionJobView, JobView, PodView
from kompression.controller.workqueue import WorkQueue

log = logging.getLogger(__name__)

RECREATE_LIMIT = "RecreateLimitExceeded"


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
        self.queue = WorkQueue(self.sync, paused=self._paused, on_error=metrics.reconcile_errors.inc)
        self.admission = Admission(api, settings, store, metrics)
        self.status = StatusWriter(api, store, metrics, requeue=self.enqueue, finished=self.kick_queue)

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        self.queue.add(key, delay)

    async def run(self) -> None:
        await self.queue.run(self.settings.workers)

    def _paused(self) -> bool:
        return self.leadership is not None and not self.leadership.active

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
            if self._paused():
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
        view = CompressionJobView.of(cr)
        try:
            spec = self.store.job_of(key)
        except SpecInvalid as exc:
            # What kopf.PermanentError means: recorded, not retried, until the spec changes.
            obs = Observation("Failed", failures.INVALID_SPEC.reason, str(exc), stalled=True)
            await self.status.write(cr, obs, None, {})
            return
        body = self.store.jobs.get(key)
        if body is not None and controller_uid(body) != view.uid:
            body = None  # a Job of a deleted namesake, on its way out through garbage collection
        if body is None:
            if view.finished or view.deleting:
                return  # done (its Job may have gone through ttlSecondsAfterFinished), or going
            # The worker would refuse it at start (exit 2): refused here, before a pod takes a GPU.
            # Only before its Job exists: a running job keeps running if the list changes later.
            try:
                check_architectures(spec, self.settings.architecture_modules)
            except SpecInvalid as exc:
                obs = Observation("Failed", failures.INVALID_SPEC.reason, str(exc), stalled=True)
                await self.status.write(cr, obs, None, {})
                return
            resolved = await self._plan_memory(key, cr, spec)
            if resolved is None:
                return
            body = await self._make_job(key, cr, resolved)
            if body is None:
                return
        else:
            drift = job_spec_drift(spec, JobView.of(body))
            if drift:
                body = await self.api.merge_patch(
                    path("batch", "v1", "jobs", namespace=key[0], name=body["metadata"]["name"]), drift
                )
                self.store.put_job(body)
        job = JobView.of(body)
        # Counted on the Job itself, so that no crash or conflicting write between its creation
        # and this status write can lose the count.
        extra: dict[str, Any] = {"jobRecreations": job.recreation} if job.recreation else {}
        pods = [PodView.of(p) for p in self.store.pods_of(key[0], job.name)]
        workload = self._workload(key[0], job)
        obs = observe(
            job,
            pods,
            user_suspended=spec.spec.runPolicy.suspend,
            kueue_managed=kueue_admits(spec),
            workload=workload,
            memory=job.memory_limit or spec.spec.resources.memory_or_default,
            memory_plan=(cr.get("status") or {}).get("memoryPlan"),
        )
        if obs.phase in TERMINAL_PHASES:
            reports = [r for r in map(final_report, pods) if r is not None]
            if reports:
                # The termination message is compact (no steps, environment): keep what POSTs left.
                extra.update(report_status(max(reports, key=lambda r: r.sequence), partial=True))
        await self.status.write(cr, obs, job, extra)

    def _workload(self, namespace: str, job: JobView) -> WorkloadView | None:
        """The Kueue Workload of this very Job (not of a deleted namesake's)."""
        body = self.store.workload_of(namespace, job.name) if job.kueue_queue else None
        view = WorkloadView.of(body) if body is not None else None
        return view if view is not None and view.job_uid == job.uid else None

    async def _plan_memory(self, key: Key, cr: Body, spec: CompressionJob) -> CompressionJob | None:
        """`spec` with the resources its memory plan fills in, before its worker Job is made; None
        while the plan is being made, or once the job is refused for it. Only LLM jobs are planned."""
        if not planned(spec):
            return spec
        plan = (cr.get("status") or {}).get("memoryPlan")
        if plan is None:
            outcome = await self._planning(key, cr, spec)
            if isinstance(outcome, Observation):
                await self.status.write(cr, outcome, None, {})
                if outcome.phase in TERMINAL_PHASES:
                    await self._drop_planner(key)
                return None
            if outcome.plan is not None:
                # Recorded before the worker Job is made, so that no retry or recreation plans again.
                host, disk = gib(int(outcome.plan["hostBytes"])), gib(int(outcome.plan["scratchBytes"]))
                message = f"planned {host} of host memory and {disk} of scratch disk (status.memoryPlan)"
                obs = Observation("Pending", MEMORY_PLANNED, message)
                await self.status.write(cr, obs, None, {"memoryPlan": dict(outcome.plan)})
                self.status.event(cr, "Normal", MEMORY_PLANNED, message)
                self.enqueue(key)
                return None
        try:
            return planned_resources(spec, MemoryPlan.model_validate(plan) if plan is not None else None)
        except ResourcesTooSmall as exc:
            await self.status.write(cr, Observation("Failed", RESOURCES_TOO_SMALL, str(exc), stalled=True), None, {})
            await self._drop_planner(key)
            return None

    async def _planning(self, key: Key, cr: Body, spec: CompressionJob) -> Observation | Planned:
        """The planning Job's outcome; it is created (with the ConfigMap it reads) when missing."""
        body = self.store.planners.get(key)
        if body is not None and controller_uid(body) != cr["metadata"]["uid"]:
            body = None  # a namesake's, on its way out
        if body is None:
            try:
                await self._create_configmap(key, cr, spec)
                body, created = await self._create_owned(
                    path("batch", "v1", "jobs", namespace=key[0]),
                    build_planning_job(spec, self.settings),
                    cr["metadata"]["uid"],
                    path("batch", "v1", "jobs", namespace=key[0], name=planning_job_name(key[1])),
                )
            except Conflict as exc:
                return Observation("Pending", "JobConflict", str(exc), stalled=True)
            self.store.put_job(body)
            if created:
                log.info("created planning Job %s/%s", key[0], planning_job_name(key[1]))
        job = JobView.of(body)
        return planning(job, [PodView.of(p) for p in self.store.pods_of(key[0], job.name)])

    async def _drop_planner(self, key: Key) -> None:
        """Delete a planning Job once its plan is used: its pod is done, and its name is free again."""
        if key in self.store.planners:
            await self.api.delete(path("batch", "v1", "jobs", namespace=key[0], name=planning_job_name(key[1])))

    async def _make_job(self, key: Key, cr: Body, spec: CompressionJob) -> Body | None:
        """Create the children, unless queued, conflicting, or deleted by hand too often."""
        view = CompressionJobView.of(cr)
        # A Job was made before and is gone unfinished: someone deleted it.
        recreation = view.job_recreations + 1 if view.job_name else 0
        if recreation > self.settings.max_job_recreations:
            # The store may just not have seen it yet (a restart lists CRs before Jobs): ask.
            existing = await self.api.get(path("batch", "v1", "jobs", namespace=key[0], name=job_name(key[1])))
            if existing is not None and controller_uid(existing) == view.uid:
                self.store.put_job(existing)
                return existing
            await self.status.write(cr, _recreate_limit(key[1], self.settings.max_job_recreations), None, {})
            return None
        held_by = self._output_held_by(key, cr)
        if held_by is not None:
            obs = Observation("Pending", outputs.REASON, outputs.message(key[1], spec.spec.output.uri, held_by), True)
            await self.status.write(cr, obs, None, {})
            return None
        admitted, position = await self.admission.admit(key, spec)
        if not admitted:
            obs = Observation(
                "Queued", "Queued", f"waiting for a GPU slot: position {position} in the operator's queue"
            )
            await self.status.write(cr, obs, None, {"queuePosition": position})
            return None
        try:
            return await self._create_children(key, cr, spec, recreation)
        except Conflict as exc:
            await self.status.write(cr, Observation("Pending", "JobConflict", str(exc), stalled=True), None, {})
            return None

    async def _create_children(self, key: Key, cr: Body, spec: CompressionJob, recreation: int) -> Body:
        ns, name = key
        uid = cr["metadata"]["uid"]
        await self._create_configmap(key, cr, spec)
        manifest = build_job(spec, self.settings, recreation)
        job, created = await self._create_owned(
            path("batch", "v1", "jobs", namespace=ns),
            manifest,
            uid,
            path("batch", "v1", "jobs", namespace=ns, name=job_name(name)),
        )
        self.store.put_job(job)
        log.info("%s Job %s/%s", "created" if created else "found our", ns, job_name(name))
        await self._drop_planner(key)
        if created:
            if recreation:
                limit = self.settings.max_job_recreations
                self.status.event(
                    cr,
                    "Warning",
                    "JobRecreated",
                    f"the worker Job {job_name(name)} was deleted before the job finished; recreated it "
                    f"({recreation} of at most {limit} times)",
                )
            else:
                self.status.event(cr, "Normal", "JobCreated", f"created worker Job {job_name(name)}")
        return job

    async def _create_configmap(self, key: Key, cr: Body, spec: CompressionJob) -> None:
        await self._create_owned(
            path("", "v1", "configmaps", namespace=key[0]),
            build_configmap(spec),
            cr["metadata"]["uid"],
            path("", "v1", "configmaps", namespace=key[0], name=configmap_name(key[1])),
        )

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
        view = CompressionJobView.of(cr)
        if view.deleting or view.finished:
            return None
        body = self.store.jobs.get(key)
        job = JobView.of(body) if body is not None else None
        if job is not None and (job.owner_uid != view.uid or job.finished):
            return None
        spec = self.store.valid_job(key)
        if spec is None:
            return None
        return outputs.Claim(key[1], spec.spec.output.uri, view.created, started=job is not None)

    def _output_held_by(self, key: Key, cr: Body) -> outputs.Claim | None:
        me = self._claim(key, cr)
        if me is None:
            return None
        others = (self._claim(k, c) for k, c in self.store.crs.items() if k[0] == key[0] and k != key)
        return outputs.holder(me, (c for c in others if c is not None))

    # ---------------------------------------------------------------- queueing

    def kick_queue(self) -> None:
        """A slot or a prefix may have been freed (a Job finished, a job was deleted): let the
        waiting try again."""
        for key, cr in self.store.crs.items():
            if CompressionJobView.of(cr).ready_reason == outputs.REASON:
                self.enqueue(key)
        if self.admission.limited:
            for key, _, _ in self.admission.waiting():
                self.enqueue(key)


def _recreate_limit(name: str, limit: int) -> Observation:
    return Observation(
        "Failed",
        RECREATE_LIMIT,
        f"the worker Job {job_name(name)} was deleted before the job finished once more after being recreated "
        f"{limit} times; not recreating it again (operator setting --max-job-recreations). Find what deletes it, "
        "then create the CompressionJob anew",
        stalled=True,
    )
