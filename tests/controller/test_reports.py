"""Worker reports into status: snapshots, stale sequences, pod ownership."""

from __future__ import annotations

from datetime import UTC, datetime

from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import CompressionJobStatus, ReportCursor
from kompression.controller.report_channel import pod_belongs
from kompression.controller.report_status import SEQUENCE_SKEW_MS, SequenceGate, differs, report_status, sequence_bound
from kompression.controller.views import JobView, PodView


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


def test_stale_sequences_are_dropped_per_job_and_pod() -> None:
    gate = SequenceGate()
    live = {"pod-a"}

    def offer(job: str, pod: str, seq: int, persisted: ReportCursor | None = None) -> bool:
        return gate.accept(job, ReportCursor(podUID=pod, sequence=seq), persisted, live.__contains__)

    assert offer("a", "pod-a", 1)
    assert offer("a", "pod-a", 5)
    assert not offer("a", "pod-a", 4)
    assert not offer("a", "pod-a", 5)
    assert offer("b", "pod-x", 0)
    assert not offer("a", "pod-b", 9)  # pod-a, whose reports status shows, still runs
    live.discard("pod-a")
    live.add("pod-b")
    assert offer("a", "pod-b", 1)  # its retry starts from zero once pod-a is gone
    assert not offer("a", "pod-a", 6)  # and the old pod cannot take over again


def test_the_persisted_cursor_seeds_the_gate_after_a_restart() -> None:
    persisted = ReportCursor(podUID="pod-a", sequence=50)

    def offer(seq: int) -> bool:
        return SequenceGate().accept("a", ReportCursor(podUID="pod-a", sequence=seq), persisted, lambda _: True)

    assert not offer(40) and not offer(50) and offer(51)
    # A replica that led before remembers less than status shows now: status wins.
    gate = SequenceGate()
    assert gate.accept("a", ReportCursor(podUID="pod-a", sequence=10), None, lambda _: True)
    assert not gate.accept("a", ReportCursor(podUID="pod-a", sequence=20), persisted, lambda _: True)


def test_a_sequence_cannot_run_ahead_of_the_pods_age() -> None:
    now = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    assert sequence_bound("2026-01-01T00:00:00Z", now) == 600_000 + SEQUENCE_SKEW_MS
    assert sequence_bound("2026-01-01T00:20:00Z", now) == SEQUENCE_SKEW_MS  # a node clock ahead of ours
    assert sequence_bound("2000-01-01T00:00:00Z", now) < 2**62


def test_pod_must_be_controlled_by_the_job() -> None:
    job = {"metadata": {"uid": "job-1"}}
    pod = {"metadata": {"uid": "pod-1", "ownerReferences": [{"kind": "Job", "uid": "job-1", "controller": True}]}}
    assert pod_belongs(PodView.of(pod), JobView.of(job), "pod-1")
    assert not pod_belongs(PodView.of(pod), JobView.of(job), "pod-2")  # a recreated pod of the same name
    assert not pod_belongs(PodView.of(pod), JobView.of({"metadata": {"uid": "job-2"}}), "pod-1")


def test_the_bound_counts_from_the_worker_containers_start() -> None:
    pod: dict = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}}
    assert PodView.of(pod).started == "2026-01-01T00:00:00Z"
    pod["status"] = {"startTime": "2026-01-01T00:00:01Z"}
    assert PodView.of(pod).started == "2026-01-01T00:00:01Z"
    # An image pull took minutes after the pod started; the worker's milliseconds count from here.
    pod["status"]["containerStatuses"] = [
        {"name": "worker", "state": {"running": {"startedAt": "2026-01-01T00:05:00Z"}}}
    ]
    assert PodView.of(pod).started == "2026-01-01T00:05:00Z"


def test_the_workers_memory_plan_reaches_status_and_stays_in_the_compact_final_report() -> None:
    plan = {"hostBytes": 3 * 2**30, "gpuBytes": 2**30, "scratchBytes": 5 * 2**30, "knob": "fewer samples"}
    live = WorkerReport.model_validate({"phase": "Running", "memoryPlan": plan, "sequence": 1})
    assert report_status(live)["memoryPlan"] == plan
    assert CompressionJobStatus.model_validate({"memoryPlan": plan}).memoryPlan is not None
    # The termination message is compact: a plan it carries is kept, one it lacks clears nothing.
    final = WorkerReport.model_validate({"phase": "Failed", "sequence": 2})
    assert "memoryPlan" not in report_status(final, partial=True)
