"""From what the cluster shows (the Job, its pods, the queue) to an Observation. Pure.

Pending and failure reasons are read where Kubernetes records them: the pod's PodScheduled
condition (Unschedulable), the container's waiting state (image pulls), its last termination
(OOMKilled, exit codes) and the Job's Failed condition (DeadlineExceeded, BackoffLimitExceeded,
PodFailurePolicy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kompression.api import failures
from kompression.api.report import WorkerReport
from kompression.controller.conditions import PLANNING, Observation
from kompression.controller.kueue import WorkloadView, queued
from kompression.controller.views import JobView, PodView

IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName")


def final_report(pod: PodView) -> WorkerReport | None:
    """The WorkerReport the worker left in its termination message, if it left one.

    With FallbackToLogsOnError the message may be a log tail instead; that is not a report.
    """
    message = pod.terminated.message if pod.terminated is not None else None
    if not message:
        return None
    try:
        return WorkerReport.model_validate_json(message.strip())
    except ValidationError:
        return None


def _newest(pods: list[PodView]) -> list[PodView]:
    return sorted(pods, key=lambda p: p.created, reverse=True)


def _failure(job: JobView, pods: list[PodView], memory: str, memory_plan: Mapping[str, Any] | None) -> Observation:
    # Since Kubernetes 1.31 FailureTarget comes first and Failed only once the pods are gone; both
    # carry the reason (DeadlineExceeded, BackoffLimitExceeded, PodFailurePolicy).
    cond = job.condition("Failed", "FailureTarget")
    job_reason = (cond.reason if cond else None) or "Failed"
    for pod in _newest(pods):
        term = pod.terminated
        if term is None:
            continue
        report = final_report(pod)
        if report is not None and report.phase == "Failed" and report.reason:
            return Observation(
                "Failed", report.reason, report.message or failures.BY_REASON[report.reason].message, True
            )
        if term.reason == failures.OOM_KILLED:
            return Observation("Failed", failures.OOM_KILLED, failures.oom_message(memory, memory_plan), True)
        by_code = failures.by_exit_code(term.exit_code)
        if by_code and job_reason in ("PodFailurePolicy", "BackoffLimitExceeded", "Failed"):
            message = f"{by_code.message} (exit code {by_code.exit_code})"
            return Observation("Failed", by_code.reason, message, True)
        break
    messages = {
        "DeadlineExceeded": "the job ran longer than runPolicy.activeDeadlineSeconds",
        "BackoffLimitExceeded": "the worker failed more often than runPolicy.backoffLimit allows",
    }
    said = (cond.message if cond else None) or "the worker Job failed"
    return Observation("Failed", job_reason, messages.get(job_reason, said), True)


def _pending(pods: list[PodView]) -> Observation:
    # Only the newest pod speaks for the Job: older ones are finished retries.
    for pod in _newest(pods)[:1]:
        if pod.unschedulable is not None:
            return Observation("Pending", "Unschedulable", pod.unschedulable)
        if pod.waiting is not None and pod.waiting[0] in IMAGE_PULL_REASONS:
            return Observation("Pending", "ImagePullBackOff", pod.waiting[1] or "the worker image cannot be pulled")
        # Succeeded before the Job says Complete: the Job controller is catching up. Still
        # Running, so that the status does not step back to Pending for a moment.
        if pod.phase in ("Running", "Succeeded"):
            return Observation("Running", "Running", "the worker is running")
    return Observation("Pending", "Starting", "waiting for the worker pod to start")


def observe(
    job: JobView | None,
    pods: list[PodView],
    *,
    user_suspended: bool,
    kueue_managed: bool,
    workload: WorkloadView | None = None,
    memory: str = "",
    memory_plan: Mapping[str, Any] | None = None,
) -> Observation:
    """The phase of a CompressionJob whose Job exists (or is about to: job=None). `workload`: the
    Job's Kueue Workload, when Kueue admits it; `memory` is the pod's limit and `memory_plan` what
    its worker planned (status.memoryPlan), for an OOM kill's message."""
    if job is None:
        return Observation("Pending", "Creating", "creating the worker Job")
    if job.condition("Complete", "SuccessCriteriaMet"):
        return Observation("Succeeded", "Succeeded", "the worker finished and every gate passed")
    if job.condition("Failed", "FailureTarget"):
        return _failure(job, pods, memory, memory_plan)
    if job.suspend:
        if user_suspended:
            return Observation("Suspended", "Suspended", "runPolicy.suspend is true")
        if kueue_managed:
            return queued(workload)
    # One message for "no pod yet" and "pod not running yet": a status write per pod step buys nothing.
    return _pending(pods) if pods else Observation("Pending", "Starting", "waiting for the worker pod to start")


@dataclass(frozen=True)
class Planned:
    """A planning Job's outcome: the plan (status.memoryPlan's form), or None where none could be
    made (the worker's loading then names what is wrong with the model folder)."""

    plan: Mapping[str, Any] | None


def planning(job: JobView, pods: list[PodView]) -> Observation | Planned:
    """What a memory-planning Job shows: still planning, a plan (or none), or a failure of the
    job's own making (a model folder the worker refuses to read) that fails the CompressionJob."""
    reports = [r for r in map(final_report, _newest(pods)) if r is not None]
    if job.condition("Complete", "SuccessCriteriaMet"):
        plan = next((r.memoryPlan for r in reports if r.phase == "Succeeded"), None)
        return Planned(plan.to_wire() if plan is not None else None)
    if job.condition("Failed", "FailureTarget"):
        report = reports[0] if reports else None
        if report is not None and report.phase == "Failed" and report.reason:
            message = report.message or failures.BY_REASON[report.reason].message
            return Observation("Failed", report.reason, message, True)
        return Planned(None)  # a crash, a deadline, an eviction: the worker checks again as it loads
    return Observation(
        "Pending",
        PLANNING,
        f"planning the memory of the job's LLM steps from the model folder's config.json and safetensors "
        f"headers (Job {job.name}), before the worker Job is made",
    )
