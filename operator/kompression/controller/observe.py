"""From what the cluster shows (the Job, its pods, the queue) to an Observation. Pure.

Pending and failure reasons are read where Kubernetes records them: the pod's PodScheduled
condition (Unschedulable), the container's waiting state (image pulls), its last termination
(OOMKilled, exit codes) and the Job's Failed condition (DeadlineExceeded, BackoffLimitExceeded,
PodFailurePolicy).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kompression.api import failures
from kompression.api.report import WorkerReport
from kompression.controller.conditions import Observation
from kompression.controller.failure import WORKER_CONTAINER

IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName")


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in job.get("status", {}).get("conditions") or ():
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


def worker_status(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in pod.get("status", {}).get("containerStatuses") or ():
        if cs.get("name") == WORKER_CONTAINER:
            return dict(cs)
    return {}


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    cs = worker_status(pod)
    state = cs.get("state", {}).get("terminated") or cs.get("lastState", {}).get("terminated")
    return dict(state) if state else {}


def final_report(pod: dict[str, Any]) -> WorkerReport | None:
    """The WorkerReport the worker left in its termination message, if it left one.

    With FallbackToLogsOnError the message may be a log tail instead; that is not a report.
    """
    message = _terminated(pod).get("message")
    if not message:
        return None
    try:
        return WorkerReport.model_validate_json(message.strip())
    except ValidationError:
        return None


def _newest(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True)


def _failure(job: dict[str, Any], pods: list[dict[str, Any]]) -> Observation:
    # Since Kubernetes 1.31 FailureTarget comes first and Failed only once the pods are gone; both
    # carry the reason (DeadlineExceeded, BackoffLimitExceeded, PodFailurePolicy).
    cond = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget") or {}
    job_reason = cond.get("reason") or "Failed"
    for pod in _newest(pods):
        term = _terminated(pod)
        if not term:
            continue
        report = final_report(pod)
        if report is not None and report.phase == "Failed" and report.reason:
            return Observation(
                "Failed", report.reason, report.message or failures.BY_REASON[report.reason].message, True
            )
        if term.get("reason") == "OOMKilled":
            return Observation("Failed", "OOMKilled", "the worker ran out of memory; raise spec.resources.memory", True)
        by_code = failures.by_exit_code(term.get("exitCode"))
        if by_code and job_reason in ("PodFailurePolicy", "BackoffLimitExceeded", "Failed"):
            message = f"{by_code.message} (exit code {by_code.exit_code})"
            return Observation("Failed", by_code.reason, message, True)
        break
    messages = {
        "DeadlineExceeded": "the job ran longer than runPolicy.activeDeadlineSeconds",
        "BackoffLimitExceeded": "the worker failed more often than runPolicy.backoffLimit allows",
    }
    return Observation(
        "Failed", job_reason, messages.get(job_reason, cond.get("message") or "the worker Job failed"), True
    )


def _pending(pods: list[dict[str, Any]]) -> Observation:
    # Only the newest pod speaks for the Job: older ones are finished retries.
    for pod in _newest(pods)[:1]:
        status = pod.get("status", {})
        for c in status.get("conditions") or ():
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                return Observation("Pending", "Unschedulable", c.get("message") or "no node fits the pod")
        waiting = worker_status(pod).get("state", {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            msg = waiting.get("message") or "the worker image cannot be pulled"
            return Observation("Pending", "ImagePullBackOff", msg)
        # Succeeded before the Job says Complete: the Job controller is catching up. Still
        # Running, so that the status does not step back to Pending for a moment.
        if status.get("phase") in ("Running", "Succeeded"):
            return Observation("Running", "Running", "the worker is running")
    return Observation("Pending", "Starting", "waiting for the worker pod to start")


def observe(
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    *,
    user_suspended: bool,
    kueue_managed: bool,
) -> Observation:
    """The phase of a CompressionJob whose Job exists (or is about to: job=None)."""
    if job is None:
        return Observation("Pending", "Creating", "creating the worker Job")
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        return Observation("Succeeded", "Succeeded", "the worker finished and every gate passed")
    if _job_condition(job, "Failed") or _job_condition(job, "FailureTarget"):
        return _failure(job, pods)
    if job.get("spec", {}).get("suspend"):
        if user_suspended:
            return Observation("Suspended", "Suspended", "runPolicy.suspend is true")
        if kueue_managed:
            return Observation("Queued", "WaitingForKueue", "the Job waits for Kueue to admit it")
    # One message for "no pod yet" and "pod not running yet": a status write per pod step buys nothing.
    return _pending(pods) if pods else Observation("Pending", "Starting", "waiting for the worker pod to start")
