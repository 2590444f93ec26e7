"""Typed, slim views of the Kubernetes objects the operator reads: a CompressionJob's identity and
status, its worker Job and the Job's pods.

The store keeps the objects as the watches delivered them (slimmed), and each CompressionJob's
spec parsed; these views are what the reconciler, the queue and the progress channel read of the
rest, each field with one default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kompression.api.constants import ANNOTATION_RECREATION, KUEUE_QUEUE_LABEL
from kompression.controller.conditions import TERMINAL_PHASES, ready_reason
from kompression.controller.failure_policy import WORKER_CONTAINER
from kompression.controller.labels import controller_ref, controller_uid


@dataclass(frozen=True)
class TrueCondition:
    """A condition whose status is True."""

    type: str
    reason: str | None
    message: str | None


def _true_conditions(status: Mapping[str, Any]) -> tuple[TrueCondition, ...]:
    return tuple(
        TrueCondition(str(c.get("type")), c.get("reason"), c.get("message"))
        for c in status.get("conditions") or ()
        if c.get("status") == "True"
    )


@dataclass(frozen=True)
class CompressionJobView:
    """A CompressionJob's identity and what its status says (the spec is the store's, parsed)."""

    namespace: str
    name: str
    uid: str | None
    generation: int
    created: str
    deleting: bool
    phase: str | None
    observed_generation: int | None
    job_name: str | None  # of the last Job made for it
    job_recreations: int
    ready_reason: str | None

    @classmethod
    def of(cls, cr: Mapping[str, Any]) -> CompressionJobView:
        meta, status = cr.get("metadata") or {}, cr.get("status") or {}
        return cls(
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            uid=meta.get("uid"),
            generation=int(meta.get("generation") or 1),
            created=str(meta.get("creationTimestamp") or ""),
            deleting=bool(meta.get("deletionTimestamp")),
            phase=status.get("phase"),
            observed_generation=status.get("observedGeneration"),
            job_name=status.get("jobName"),
            job_recreations=int(status.get("jobRecreations") or 0),
            ready_reason=ready_reason(status),
        )

    @property
    def finished(self) -> bool:
        """Finished with its current spec (a changed spec may run again)."""
        return self.phase in TERMINAL_PHASES and self.observed_generation == self.generation


def _worker(containers: Any) -> Mapping[str, Any]:
    return next((c for c in containers or () if c.get("name") == WORKER_CONTAINER), {})


@dataclass(frozen=True)
class JobView:
    """What the operator reads of a worker Job."""

    name: str
    uid: str | None  # None for a queue reservation, which the API server has not seen
    owner_uid: str | None  # of the CompressionJob that controls it
    recreation: int  # how many Jobs of its CompressionJob were deleted unfinished before this one
    suspend: bool
    kueue_queue: str | None  # the LocalQueue it is labelled with: Kueue admits it
    ttl_seconds_after_finished: int | None
    limited_on: frozenset[str]  # the resources the worker container has limits on (nvidia.com/gpu)
    memory_limit: str | None  # the worker container's, as the operator set it (perhaps from the memory plan)
    conditions: tuple[TrueCondition, ...]
    start_time: str | None
    completion_time: str | None

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> JobView:
        meta, spec, status = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
        recreation = str((meta.get("annotations") or {}).get(ANNOTATION_RECREATION, "0"))
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers")
        limits = (_worker(containers).get("resources") or {}).get("limits") or {}
        return cls(
            name=str(meta.get("name")),
            uid=meta.get("uid"),
            owner_uid=controller_uid(job),
            recreation=int(recreation) if recreation.isdigit() else 0,
            suspend=bool(spec.get("suspend")),
            kueue_queue=(meta.get("labels") or {}).get(KUEUE_QUEUE_LABEL),
            ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
            limited_on=frozenset(limits),
            memory_limit=limits.get("memory"),
            conditions=_true_conditions(status),
            start_time=status.get("startTime"),
            completion_time=status.get("completionTime"),
        )

    def condition(self, *types: str) -> TrueCondition | None:
        """The first of `types` that is True."""
        by_type = {c.type: c for c in self.conditions}
        return next((by_type[t] for t in types if t in by_type), None)

    @property
    def finished(self) -> bool:
        return self.condition("Complete", "Failed") is not None


@dataclass(frozen=True)
class Terminated:
    exit_code: int | None
    reason: str | None
    message: str | None  # the termination message: the worker's final report, or a log tail


@dataclass(frozen=True)
class PodView:
    """What the operator reads of a worker pod."""

    name: str
    uid: str | None
    job_uid: str | None  # of the Job that controls it
    created: str
    deleting: bool
    phase: str | None
    unschedulable: str | None  # the scheduler's message while it finds no node
    waiting: tuple[str, str | None] | None  # the worker container's waiting reason and message
    terminated: Terminated | None  # the worker's (last) termination
    started: str  # the worker container's start, else the pod's, else its creation

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodView:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        worker = _worker(status.get("containerStatuses"))
        state, last = worker.get("state") or {}, worker.get("lastState") or {}
        term = state.get("terminated") or last.get("terminated")
        waiting = state.get("waiting")
        scheduled: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or () if c.get("type") == "PodScheduled"), {}
        )
        unschedulable = scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        job = controller_ref(pod, "Job")
        created = str(meta.get("creationTimestamp") or "")
        return cls(
            name=str(meta.get("name")),
            uid=meta.get("uid"),
            job_uid=job.uid if job is not None else None,
            created=created,
            deleting=bool(meta.get("deletionTimestamp")),
            phase=status.get("phase"),
            unschedulable=(scheduled.get("message") or "no node fits the pod") if unschedulable else None,
            waiting=(str(waiting.get("reason")), waiting.get("message")) if waiting else None,
            terminated=Terminated(term.get("exitCode"), term.get("reason"), term.get("message")) if term else None,
            started=str(
                (state.get("running") or state.get("terminated") or {}).get("startedAt")
                or status.get("startTime")
                or created
            ),
        )
