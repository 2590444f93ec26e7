"""Worker reports into status. Pure.

A WorkerReport is a full snapshot, so merging is replacing the report-owned status fields. The
operator keeps the highest sequence it accepted per job in memory: a stale or repeated POST never
moves status backwards. The final report (from the pod's termination message) wins over any POST.
"""

from __future__ import annotations

from typing import Any

from kompression.api.report import WorkerReport

REPORT_FIELDS = ("currentStep", "progress", "steps", "result", "artifacts", "environment")


def report_status(report: WorkerReport) -> dict[str, Any]:
    """The status fields a report sets. Fields the report leaves empty are cleared (null)."""
    wire = report.to_wire()
    patch: dict[str, Any] = {f: wire.get(f) for f in REPORT_FIELDS}
    if report.phase != "Running":
        patch["currentStep"] = None
    return patch


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

    def forget(self, uid: str) -> None:
        self._last.pop(uid, None)
