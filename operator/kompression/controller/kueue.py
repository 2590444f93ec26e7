"""Kueue's side of a queued CompressionJob: what its worker Job's Workload says, in the
CompressionJob's words. Pure.

A CompressionJob with `runPolicy.queueName` is admitted by Kueue, not by the operator's own GPU
queue (queueing.py): the operator creates its Job suspended and labelled, Kueue makes a Workload
for it (owned by the Job), reserves quota in a ClusterQueue and unsuspends the Job, or suspends it
again to preempt it. While the Job is suspended, the Workload's conditions say why: no quota yet,
an inadmissible queue, or an eviction (preemption). Those become the CompressionJob's phase
Queued with a reason and Kueue's own message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kompression.api.v1alpha1 import CompressionJob
from kompression.controller.conditions import Observation
from kompression.controller.labels import controller_ref

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"  # the Workload's storage version since Kueue 0.15
WORKLOADS = "workloads"

WAITING = "WaitingForKueue"  # no Workload yet (Kueue not running, or not caught up)
QUEUED = "QueuedByKueue"  # the Workload waits for quota
INADMISSIBLE = "InadmissibleByKueue"  # its LocalQueue or ClusterQueue is missing or stopped
PREEMPTED = "PreemptedByKueue"  # evicted to make room for a higher-priority Workload
EVICTED = "EvictedByKueue"  # evicted for another reason (stopped queue, deactivated, ...)
# The Event each reason gets when a CompressionJob's Ready reason becomes it.
EVENT_TYPES = {QUEUED: "Normal", INADMISSIBLE: "Warning", PREEMPTED: "Warning", EVICTED: "Warning"}


def kueue_admits(job: CompressionJob) -> bool:
    """Whether Kueue, not the operator's queue, decides when this job's Job may run."""
    return job.spec.runPolicy.queueName is not None


@dataclass(frozen=True)
class WorkloadCondition:
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class WorkloadView:
    """What the operator reads of a Kueue Workload."""

    name: str
    uid: str | None
    job_uid: str | None  # of the batch Job that controls it
    queue_name: str | None
    priority: int | None
    priority_class: str | None
    cluster_queue: str | None  # where its quota is (or was last) reserved
    conditions: Mapping[str, WorkloadCondition]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> WorkloadView:
        meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
        owner = controller_ref(body, "Job")
        conditions = {
            str(c.get("type")): WorkloadCondition(
                str(c.get("status")), str(c.get("reason") or ""), str(c.get("message") or "")
            )
            for c in status.get("conditions") or ()
        }
        return cls(
            name=str(meta.get("name")),
            uid=meta.get("uid"),
            job_uid=owner.uid if owner is not None else None,
            queue_name=spec.get("queueName"),
            priority=spec.get("priority"),
            priority_class=(spec.get("priorityClassRef") or {}).get("name"),
            cluster_queue=(status.get("admission") or {}).get("clusterQueue"),
            conditions=conditions,
        )

    def true(self, type_: str) -> WorkloadCondition | None:
        cond = self.conditions.get(type_)
        return cond if cond is not None and cond.status == "True" else None


def job_key(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, Job name) of the batch Job a Workload belongs to, if a Job controls it."""
    owner = controller_ref(body, "Job")
    namespace = (body.get("metadata") or {}).get("namespace")
    if owner is None or not owner.name or not namespace or owner.api_version != "batch/v1":
        return None
    return (namespace, owner.name)


def slim_workload(body: Mapping[str, Any]) -> dict[str, Any]:
    """What `WorkloadView` reads, and nothing else: a Workload carries its Job's whole pod spec."""
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    keep_meta = ("name", "namespace", "uid", "resourceVersion", "ownerReferences")
    return {
        "metadata": {k: meta[k] for k in keep_meta if k in meta},
        "spec": {k: spec[k] for k in ("queueName", "priority", "priorityClassRef") if k in spec},
        "status": {
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message")} for c in status.get("conditions") or ()
            ],
            **(
                {"admission": {"clusterQueue": status["admission"].get("clusterQueue")}}
                if status.get("admission")
                else {}
            ),
        },
    }


def _where(workload: WorkloadView) -> str:
    parts = [f"LocalQueue {workload.queue_name}"] if workload.queue_name else []
    if workload.priority_class:
        parts.append(f"WorkloadPriorityClass {workload.priority_class}, priority {workload.priority or 0}")
    elif workload.priority:
        parts.append(f"priority {workload.priority}")
    return f" ({'; '.join(parts)})" if parts else ""


def queued(workload: WorkloadView | None) -> Observation:
    """Why Kueue holds a suspended Job back, from its Workload (None: Kueue has made none yet)."""
    if workload is None:
        return Observation("Queued", WAITING, "the Job waits for Kueue to admit it (Kueue has made no Workload yet)")
    name, where = workload.name, _where(workload)
    # Kueue sets Evicted back to False when it reserves quota again.
    evicted = workload.true("Evicted")
    if evicted is not None:
        reason = PREEMPTED if evicted.reason == "Preempted" else EVICTED
        return Observation(
            "Queued",
            reason,
            f"Kueue evicted Workload {name} ({evicted.reason}: {evicted.message}); the Job waits to be admitted "
            f"again{where}",
        )
    reserved = workload.true("QuotaReserved")
    if reserved is not None:
        cq = workload.cluster_queue or "its ClusterQueue"
        state = "admitted it" if workload.true("Admitted") else "reserved quota; waiting for its admission checks"
        return Observation("Queued", QUEUED, f"Kueue {state} in {cq}; the Job is about to start{where}")
    pending = workload.conditions.get("QuotaReserved")
    if pending is not None and pending.reason == "Inadmissible":
        return Observation("Queued", INADMISSIBLE, f"Kueue cannot admit Workload {name}: {pending.message}{where}")
    why = pending.message if pending is not None and pending.message else "waiting for quota"
    return Observation("Queued", QUEUED, f"Kueue has not admitted Workload {name}: {why}{where}")
