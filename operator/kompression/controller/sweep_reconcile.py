"""The CompressionSweep controller: one reconcile per sweep, level-triggered.

Each sync reads the sweep and lists its trials (the CompressionJobs it owns) from the API server,
decides with sweep_builders.decide_sweep, creates the trials due, and writes the status. Nothing is
kept between syncs, so an operator restarted at any point resumes from what the cluster holds; a
trial created twice (a crash between create and status) meets AlreadyExists and is simply read next time.
Deleting a sweep deletes its trials through their ownerReferences (the garbage collector's work).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kompression.api import failures
from kompression.api.constants import GROUP, PLURAL, SWEEP_PLURAL, VERSION
from kompression.api.sweep_plan import next_trials, parse_sweep, trial_count
from kompression.api.timestamps import now
from kompression.api.validation import SpecInvalid
from kompression.controller.conditions import (
    TERMINAL_PHASES,
    Observation,
    desired_conditions,
    merge_conditions,
    same_conditions,
)
from kompression.controller.kubeapi import Api, ApiError, path
from kompression.controller.leadership import Leadership
from kompression.controller.metrics import Metrics
from kompression.controller.queueing import Key
from kompression.controller.settings import Settings
from kompression.controller.sweep_builders import (
    build_trial,
    decide_sweep,
    owned_by,
    sweep_finished,
    sweep_selector,
    sweep_status,
    trial_of,
)
from kompression.controller.workqueue import WorkQueue

log = logging.getLogger(__name__)


def sweep_path(ns: str, name: str | None = None, sub: str | None = None) -> str:
    return path(GROUP, VERSION, SWEEP_PLURAL, namespace=ns, name=name, sub=sub)


class SweepReconciler:
    def __init__(self, api: Api, settings: Settings, metrics: Metrics, leadership: Leadership | None = None) -> None:
        self.api, self.settings, self.leadership = api, settings, leadership
        self.known: set[Key] = set()
        self.queue = WorkQueue(self.sync, paused=self._paused, on_error=metrics.reconcile_errors.inc)
        if leadership is not None:
            leadership.on_change(lambda active: self._enqueue_all() if active else None)

    def _paused(self) -> bool:
        return self.leadership is not None and not self.leadership.active

    def enqueue(self, key: Key) -> None:
        self.known.add(key)
        self.queue.add(key)

    def forget(self, key: Key) -> None:
        self.known.discard(key)

    def _enqueue_all(self) -> None:
        for key in list(self.known):
            self.queue.add(key)

    async def run(self) -> None:
        await self.queue.run(self.settings.workers)

    async def resync_forever(self) -> None:
        """Every sweep again now and then: a trial's change that no watch event reported is still seen."""
        while True:
            await asyncio.sleep(self.settings.resync_interval_s)
            self._enqueue_all()

    async def sync(self, key: Key) -> None:
        ns, name = key
        sweep = await self.api.get(sweep_path(ns, name))
        if sweep is None:
            self.forget(key)
            return
        meta = sweep["metadata"]
        if meta.get("deletionTimestamp") or sweep_finished(sweep):
            return  # its trials go with it, or it ended: make no new ones, and its status stays as it ended
        try:
            parsed = parse_sweep(sweep)
        except SpecInvalid as exc:
            obs = Observation("Failed", failures.INVALID_SPEC.reason, str(exc), stalled=True)
            await self._write(sweep, obs, {"phase": "Failed"})
            return
        spec = parsed.spec
        children = await self.api.list(path(GROUP, VERSION, PLURAL, namespace=ns), sweep_selector(name))
        trials = [trial_of(c) for c in children if owned_by(c, meta["uid"])]
        total = trial_count(spec)
        decision = decide_sweep(spec, trials, total)
        for planned in next_trials(spec, trials, decision.create):
            body = build_trial(name, meta["uid"], ns, planned)
            try:
                await self.api.create(path(GROUP, VERSION, PLURAL, namespace=ns), body)
                log.info("sweep %s/%s: created trial %s", ns, name, body["metadata"]["name"])
            except ApiError as err:
                if err.status != 409:  # AlreadyExists: made before a restart; read on the next sync
                    raise
        await self._write(sweep, decision.observation, sweep_status(decision, trials, total))

    async def _write(self, sweep: dict[str, Any], obs: Observation, fields: dict[str, Any]) -> None:
        """Write the status when it changed: the fields, conditions, observedGeneration and timestamps."""
        meta = sweep["metadata"]
        status = sweep.get("status") or {}
        generation = int(meta.get("generation") or 1)
        conditions = merge_conditions(status.get("conditions") or [], desired_conditions(obs, generation), now())
        patch: dict[str, Any] = {**fields, "observedGeneration": generation}
        if fields.get("trials") and not status.get("startTime"):
            patch["startTime"] = now()
        if obs.phase in TERMINAL_PHASES and not status.get("completionTime"):
            patch["completionTime"] = now()
        # A None deletes its field in a merge patch; an absent field reads None, so it compares alike.
        unchanged = all(status.get(k) == v for k, v in patch.items())
        if unchanged and same_conditions(status.get("conditions") or [], conditions):
            return
        patch["conditions"] = conditions
        await self.api.merge_patch(sweep_path(meta["namespace"], meta["name"], "status"), {"status": patch})
