"""Admission: whether a CompressionJob may create its GPU Job now, from what the store shows.

The policy is queueing.py's; this module gathers its input (who waits, with which priority and
how many GPUs, and which Jobs hold a GPU) and reserves an admitted job's slot at once, so that
two concurrent reconciles cannot both take the last one. A job with a Kueue queue name is
Kueue's to admit (kueue.py): it neither waits here nor counts against these limits.
"""

from __future__ import annotations

import asyncio

from kompression.api.v1alpha1 import CompressionJob
from kompression.controller import outputs
from kompression.controller.builders import build_job
from kompression.controller.conditions import TERMINAL_PHASES
from kompression.controller.kubeapi import Api, path
from kompression.controller.kueue import kueue_admits
from kompression.controller.metrics import Metrics
from kompression.controller.queueing import Candidate, Key, Limits, decide
from kompression.controller.settings import Settings
from kompression.controller.store import Store
from kompression.controller.views import CompressionJobView, JobView


class Admission:
    def __init__(self, api: Api, settings: Settings, store: Store, metrics: Metrics) -> None:
        self.api, self.settings, self.store, self.metrics = api, settings, store, metrics
        self.limits = Limits(settings.max_gpu_jobs, settings.max_gpu_jobs_per_namespace)
        self._lock = asyncio.Lock()
        self._priorities: dict[str, int] = {}
        # Counted when scraped, from what the watches show.
        metrics.gpu_in_flight.set_function(lambda: float(sum(self.in_flight().values())))

    @property
    def limited(self) -> bool:
        return self.limits.total > 0 or self.limits.per_namespace > 0

    async def _priority(self, class_name: str | None) -> int:
        if not class_name:
            return 0
        if class_name not in self._priorities:
            obj = await self.api.get(path("scheduling.k8s.io", "v1", "priorityclasses", name=class_name))
            self._priorities[class_name] = int((obj or {}).get("value") or 0)
        return self._priorities[class_name]

    def waiting(self) -> list[tuple[Key, str, CompressionJob]]:
        """The CompressionJobs that wait for a GPU slot: key, creation time, spec."""
        out = []
        for key, cr in self.store.crs.items():
            view, job = CompressionJobView.of(cr), self.store.valid_job(key)
            if (
                job is not None
                and key not in self.store.jobs
                and view.phase not in TERMINAL_PHASES
                and view.ready_reason != outputs.REASON  # not waiting for a GPU, but for its prefix
                and not view.deleting  # never admitted: it is going
                and job.spec.resources.gpus > 0
                and not kueue_admits(job)
            ):
                out.append((key, view.created, job))
        return out

    def in_flight(self) -> dict[str, int]:
        """Unfinished Jobs that hold a GPU, by namespace. Not those Kueue admits: its quota counts
        them, and counting them here too would hold the operator's own jobs back twice."""
        counts: dict[str, int] = {}
        for (ns, _), body in self.store.jobs.items():
            job = JobView.of(body)
            if self.settings.gpu_resource in job.limited_on and not job.finished and job.kueue_queue is None:
                counts[ns] = counts.get(ns, 0) + 1
        return counts

    async def admit(self, key: Key, spec: CompressionJob) -> tuple[bool, int | None]:
        """Whether `key` may create its Job now (its slot is then reserved), else its queue position."""
        if spec.spec.resources.gpus == 0 or kueue_admits(spec) or not self.limited:
            return True, None
        async with self._lock:
            waiting = [
                Candidate(
                    k[0],
                    k[1],
                    created,
                    await self._priority(job.spec.runPolicy.priorityClassName),
                    job.spec.resources.gpus,
                )
                for k, created, job in self.waiting()
            ]
            decision = decide(waiting, self.in_flight(), self.limits)
            self.metrics.queue_depth.set(len(decision.positions))
            if key in decision.admitted:
                # Reserve the slot before letting go of the lock; the create follows at once.
                self.store.jobs[key] = build_job(spec, self.settings)
                return True, None
        return False, decision.positions.get(key)
