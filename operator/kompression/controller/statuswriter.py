"""The status writer: an Observation into a CompressionJob's status, and the Events and gauges
that go with a change of phase or reason.

Every write is conditional on the resourceVersion it was computed from, and nothing is written
when nothing changed, so a reconcile that runs again costs no write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kompression.api import failures
from kompression.api.constants import GROUP, PLURAL, VERSION
from kompression.api.report import WorkerReport
from kompression.api.timestamps import now
from kompression.api.v1alpha1 import ReportCursor, Result, StepStatus
from kompression.controller import outputs
from kompression.controller.conditions import (
    TERMINAL_PHASES,
    Observation,
    desired_conditions,
    merge_conditions,
    ready_reason,
    same_conditions,
)
from kompression.controller.events import post_event
from kompression.controller.kubeapi import Api, ApiError, path
from kompression.controller.kueue import EVENT_TYPES as KUEUE_EVENT_TYPES
from kompression.controller.metrics import Metrics
from kompression.controller.queueing import Key
from kompression.controller.report_status import differs, report_status
from kompression.controller.store import Body, Store
from kompression.controller.views import JobView

WARNING_REASONS = {"Unschedulable", "ImagePullBackOff", "JobConflict", failures.INVALID_SPEC.reason, outputs.REASON}


def cr_path(ns: str, name: str, sub: str | None = None) -> str:
    return path(GROUP, VERSION, PLURAL, namespace=ns, name=name, sub=sub)


class StatusWriter:
    def __init__(
        self,
        api: Api,
        store: Store,
        metrics: Metrics,
        *,
        requeue: Callable[[Key], None],
        finished: Callable[[], None],
    ) -> None:
        """`requeue`: reconcile a key again (its status changed under us); `finished`: a job
        reached a terminal phase, so a GPU slot or an output prefix may be free."""
        self.api, self.store, self.metrics = api, store, metrics
        self._requeue, self._finished = requeue, finished
        self._events: set[asyncio.Future[None]] = set()

    def event(self, cr: Body, type_: str, reason: str, message: str) -> None:
        """Post an Event without holding up the reconcile (an Event is advice, never state)."""
        task = asyncio.ensure_future(post_event(self.api, cr, type_, reason, message))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def write(self, cr: Body, obs: Observation, job: JobView | None, extra: dict[str, Any]) -> None:
        meta = cr["metadata"]
        key = (meta["namespace"], meta["name"])
        status = cr.get("status") or {}
        generation = int(meta.get("generation") or 1)
        conditions = merge_conditions(status.get("conditions") or [], desired_conditions(obs, generation), now())
        patch: dict[str, Any] = {"phase": obs.phase, "observedGeneration": generation, "queuePosition": None}
        if job is not None:
            patch["jobName"] = job.name
            # Written with the phase it belongs to, not as a write of its own while still Pending.
            if obs.phase == "Running" or obs.phase in TERMINAL_PHASES:
                patch["startTime"] = status.get("startTime") or job.start_time or now()
            if obs.phase in TERMINAL_PHASES:
                patch["completionTime"] = status.get("completionTime") or job.completion_time or now()
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
            updated = await self.api.merge_patch(cr_path(*key, sub="status"), body)
        except ApiError as err:
            if err.status != 409:
                raise
            self.metrics.status_conflicts.inc()
            fresh = await self.api.get(cr_path(*key))
            if fresh is not None:
                self.store.put_cr(fresh)
                self._requeue(key)
            return
        self.store.put_cr(updated)
        if not self.store.holds(key, meta.get("uid")):
            return  # deleted while this write was on its way: it must not come back
        self.metrics.set_phase(key, obs.phase)
        self._announce(cr, status, obs, updated)

    def _announce(self, cr: Body, before: dict[str, Any], obs: Observation, updated: Body) -> None:
        was = (before.get("phase"), ready_reason(before))
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
            self._finished()
            self.event(cr, "Normal" if obs.phase == "Succeeded" else "Warning", obs.reason, obs.message)
        elif obs.reason in WARNING_REASONS:
            self.event(cr, "Warning", obs.reason, obs.message)
        elif obs.reason in KUEUE_EVENT_TYPES:
            self.event(cr, KUEUE_EVENT_TYPES[obs.reason], obs.reason, obs.message)

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
            updated = await self.api.merge_patch(cr_path(*key, sub="status"), {"status": patch})
            self.store.put_cr(updated)
