"""Prometheus metrics of the operator, in a registry of its own (no process-global state)."""

from __future__ import annotations

from collections import Counter as Tally
from contextlib import suppress
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kompression.api.v1alpha1 import Result, StepStatus
from kompression.controller.queueing import Key

PHASES = ("Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended")
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    try:
        return (datetime.strptime(end[:19] + "Z", fmt) - datetime.strptime(start[:19] + "Z", fmt)).total_seconds()
    except ValueError:
        return None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("kompression_jobs", "CompressionJobs by phase.", ["phase"], registry=r)
        self.job_duration = Histogram(
            "kompression_job_duration_seconds",
            "Creation to completion of finished jobs.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "kompression_step_duration_seconds",
            "Duration of finished steps.",
            ["step"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ratio = Gauge(
            "kompression_job_compression_ratio",
            "Original / final size of a finished job.",
            ["namespace", "name"],
            registry=r,
        )
        self.accuracy_delta = Gauge(
            "kompression_job_accuracy_delta",
            "Final minus original metric of a finished job.",
            ["namespace", "name"],
            registry=r,
        )
        self.speedup = Gauge(
            "kompression_job_speedup", "Original / final latency of a finished job.", ["namespace", "name"], registry=r
        )
        self.reconcile_errors = Counter("kompression_reconcile_errors", "Reconciles that raised.", registry=r)
        self.queue_depth = Gauge(
            "kompression_queue_depth", "CompressionJobs waiting in the operator's queue.", registry=r
        )
        self.gpu_in_flight = Gauge("kompression_gpu_jobs_in_flight", "GPU Jobs created and not finished.", registry=r)
        self.status_conflicts = Counter(
            "kompression_status_conflicts", "Status writes refused with 409 (a concurrent writer); retried.", registry=r
        )
        self.api_writes = Counter(
            "kompression_api_writes",
            "The operator's API writes, by verb and resource.",
            ["verb", "resource"],
            registry=r,
        )
        self.progress_requests = Counter(
            "kompression_progress_requests",
            "Progress reports POSTed to the operator, by HTTP status of the answer.",
            ["code"],
            registry=r,
        )
        self._phase: dict[Key, str] = {}
        self._with_results: set[Key] = set()
        for phase in PHASES:
            self.jobs.labels(phase).set(0)

    def set_phase(self, key: Key, phase: str | None) -> None:
        if phase is None:
            self._phase.pop(key, None)
        else:
            self._phase[key] = phase
        counts = Tally(self._phase.values())
        for p in PHASES:
            self.jobs.labels(p).set(counts.get(p, 0))

    def finished(
        self,
        key: Key,
        outcome: str,
        *,
        created: str | None,
        completed: str | None,
        steps: list[StepStatus],
        result: Result | None,
    ) -> None:
        """Called once, on the transition to Succeeded or Failed."""
        total = _seconds(created, completed)
        if total is not None:
            self.job_duration.labels(outcome).observe(total)
        for step in steps:
            took = _seconds(step.startTime, step.completionTime)
            if took is not None:
                self.step_duration.labels(step.name).observe(took)
        if result is not None:
            self.results(key, result)

    def has_results(self, key: Key) -> bool:
        return key in self._with_results

    def results(self, key: Key, result: Result) -> None:
        self._with_results.add(key)
        for gauge, value in (
            (self.ratio, result.compressionRatio),
            (self.accuracy_delta, result.accuracyDelta),
            (self.speedup, result.speedup),
        ):
            if value is not None:
                gauge.labels(*key).set(value)

    def forget(self, key: Key) -> None:
        self.set_phase(key, None)
        self._with_results.discard(key)
        for gauge in (self.ratio, self.accuracy_delta, self.speedup):
            with suppress(KeyError):  # never set: the job did not finish with results
                gauge.remove(*key)
