"""Worker reports into status: snapshots, stale sequences, pod ownership."""

from __future__ import annotations

from kompression.api.report import WorkerReport
from kompression.controller.progress import pod_belongs
from kompression.controller.reports import SequenceGate, differs, report_status


def test_report_replaces_report_fields() -> None:
    report = WorkerReport.model_validate(
        {
            "phase": "Running",
            "currentStep": "int8",
            "progress": {"percentage": 40},
            "steps": [{"name": "int8", "phase": "Running"}],
            "sequence": 3,
        }
    )
    patch = report_status(report)
    assert patch["currentStep"] == "int8"
    assert patch["progress"] == {"percentage": 40}
    assert patch["result"] is None  # a snapshot: what it leaves out is cleared
    assert differs({}, patch)
    assert not differs(
        {
            "currentStep": "int8",
            "progress": {"percentage": 40},
            "steps": [{"name": "int8", "phase": "Running"}],
            "artifacts": [],
        },
        patch,
    )


def test_stale_sequences_are_dropped_per_job() -> None:
    gate = SequenceGate()
    assert gate.accept("a", 1)
    assert gate.accept("a", 5)
    assert not gate.accept("a", 4)
    assert not gate.accept("a", 5)
    assert gate.accept("b", 0)


def test_pod_must_be_controlled_by_the_job() -> None:
    job = {"metadata": {"uid": "job-1"}}
    pod = {"metadata": {"uid": "pod-1", "ownerReferences": [{"kind": "Job", "uid": "job-1", "controller": True}]}}
    assert pod_belongs(pod, job, "pod-1")
    assert not pod_belongs(pod, job, "pod-2")  # a recreated pod of the same name
    assert not pod_belongs(pod, {"metadata": {"uid": "job-2"}}, None)
