"""Worker reports into status. Pure.

A WorkerReport is a full snapshot, so merging is replacing the report-owned status fields. The
operator keeps the highest sequence it accepted per job in memory: a stale or repeated POST never
moves status backwards. After a restart that memory is seeded from status (`older_than_status`). The final report (from the pod's termination message) wins over any POST.
"""

from __future__ import annotations

from typing import Any

from kompression.api.report import WorkerReport

REPORT_FIELDS = ("currentStep", "progress", "steps", "result", "artifacts", "environment")


def report_status(report: WorkerReport, *, partial: bool = False) -> dict[str, Any]:
    """The status fields a report sets. Fields the report leaves empty are cleared (null), unless
    `partial` (the compact termination-message report, which omits detail on purpose)."""
    wire = report.to_wire()
    patch: dict[str, Any] = {f: wire.get(f) for f in REPORT_FIELDS if not partial or wire.get(f)}
    if report.phase != "Running":
        patch["currentStep"] = None
    return patch


def older_than_status(report: WorkerReport, status: dict[str, Any]) -> bool:
    """Whether `report` predates what status already shows (by the worker's own clock).

    Seeds the sequence check after an operator restart, when the in-memory sequence is gone:
    a retried POST from before the restart must not move status back.
    """
    shown = ((status.get("progress") or {}).get("lastUpdateTime")) or ""
    sent = report.progress.lastUpdateTime if report.progress is not None else None
    return bool(shown and sent and str(sent) < str(shown))


def differs(status: dict[str, Any], patch: dict[str, Any]) -> bool:
    return any(status.get(k) != v and not (v is None and k not in status) for k, v in patch.items())


class SequenceGate:
    """Drops reports older than one already accepted for the same job (by CompressionJob uid)."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def accept(self, uid: str, sequence: int) -> bool:
        if sequence <= self._last.get(uid, -1):
            return False
        self._last[uid] = sequence
        return True

    def knows(self, uid: str) -> bool:
        return uid in self._last

    def forget(self, uid: str) -> None:
        self._last.pop(uid, None)
