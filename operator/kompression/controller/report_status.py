"""Worker reports into status. Pure.

A WorkerReport is a full snapshot, so merging is replacing the report-owned status fields. The
operator keeps the highest sequence it accepted per job (and pod) in memory and in status: a stale
or repeated POST never moves status backwards, also after a restart. The final report (from the
pod's termination message) wins over any POST.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import ReportCursor

REPORT_FIELDS = ("currentStep", "progress", "steps", "result", "artifacts", "environment", "memoryPlan")
SEQUENCE_SKEW_MS = 60_000


def report_status(report: WorkerReport, *, partial: bool = False) -> dict[str, Any]:
    """The status fields a report sets. Fields the report leaves empty are cleared (null), unless
    `partial` (the compact termination-message report, which omits detail on purpose)."""
    wire = report.to_wire()
    patch: dict[str, Any] = {f: wire.get(f) for f in REPORT_FIELDS if not partial or wire.get(f)}
    if report.phase != "Running":
        patch["currentStep"] = None
    return patch


def differs(status: dict[str, Any], patch: dict[str, Any]) -> bool:
    return any(status.get(k) != v and not (v is None and k not in status) for k, v in patch.items())


def sequence_bound(worker_started: str, now: datetime) -> int:
    """The highest sequence a worker that started at `worker_started` (RFC 3339) can have reached by `now`.

    The worker's sequence counts milliseconds since it started (worker/report/live.py), so it never
    runs ahead of its container's age; SEQUENCE_SKEW_MS allows for the node's clock. A report beyond
    it is refused: else one POST of a huge sequence would make every later report look stale.
    """
    started = datetime.fromisoformat(worker_started.replace("Z", "+00:00"))
    return max(0, int((now - started).total_seconds() * 1000)) + SEQUENCE_SKEW_MS


class SequenceGate:
    """Drops reports older than one already accepted for the same job (by CompressionJob uid).

    Sequences are per pod: a job's reports come from one pod at a time, and a retry's pod starts
    from zero. A report from another pod takes over only once the pod status follows is gone or
    finished. Status keeps the newest accepted (pod, sequence) as `lastReport`, which seeds the
    gate after an operator restart.
    """

    def __init__(self) -> None:
        self._last: dict[str, ReportCursor] = {}

    def accept(
        self,
        job_uid: str,
        offered: ReportCursor,
        persisted: ReportCursor | None,
        pod_live: Callable[[str], bool],
    ) -> bool:
        last = self._last.get(job_uid)
        if last is None or (
            persisted is not None and persisted.podUID == last.podUID and persisted.sequence > last.sequence
        ):
            last = persisted  # a peer that led in between moved status on
        if last is not None:
            if last.podUID == offered.podUID:
                if offered.sequence <= last.sequence:
                    return False
            elif pod_live(last.podUID):
                return False
        self._last[job_uid] = offered
        return True

    def forget(self, job_uid: str) -> None:
        self._last.pop(job_uid, None)
