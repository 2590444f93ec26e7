"""From Job and pods to phase, reason and conditions, without a cluster."""

from __future__ import annotations

from typing import Any

from kompression.api.report import WorkerReport
from kompression.controller.conditions import Observation, desired_conditions, merge_conditions
from kompression.controller.observe import observe
from kompression.controller.views import JobView, PodView


def _job(*conds: tuple[str, str], suspend: bool = False) -> dict[str, Any]:
    return {
        "spec": {"suspend": suspend},
        "status": {"conditions": [{"type": t, "status": "True", "reason": r} for t, r in conds]},
    }


def _pod(
    phase: str = "Pending",
    *,
    created: str = "2025-01-01T00:00:00Z",
    scheduled: dict | None = None,
    waiting: str | None = None,
    terminated: dict | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if waiting:
        state["waiting"] = {"reason": waiting, "message": "back-off pulling"}
    if terminated:
        state["terminated"] = terminated
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [{"name": "worker", "state": state}]}
    if scheduled:
        status["conditions"] = [{"type": "PodScheduled", **scheduled}]
    return {"metadata": {"creationTimestamp": created}, "status": status}


def _obs(job: dict | None, pods: list[dict], **kw: bool) -> Observation:
    views = [PodView.of(p) for p in pods]
    view = JobView.of(job) if job is not None else None
    return observe(view, views, user_suspended=kw.get("user", False), kueue_managed=kw.get("kueue", False))


def test_running_and_succeeded() -> None:
    assert _obs(_job(), [_pod("Running")]).phase == "Running"
    assert _obs(_job(("Complete", "CompletionsReached")), []).phase == "Succeeded"


def test_unschedulable_is_a_pending_reason() -> None:
    pod = _pod(scheduled={"status": "False", "reason": "Unschedulable", "message": "0/4 nodes: node selector"})
    obs = _obs(_job(), [pod])
    assert (obs.phase, obs.reason) == ("Pending", "Unschedulable")
    assert "0/4 nodes" in obs.message


def test_image_pull_failures() -> None:
    for reason in ("ImagePullBackOff", "ErrImagePull"):
        assert _obs(_job(), [_pod(waiting=reason)]).reason == "ImagePullBackOff"


def test_failure_reasons() -> None:
    oom = _pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    assert _obs(_job(("Failed", "BackoffLimitExceeded")), [oom]).reason == "OOMKilled"
    plain = _pod("Failed", terminated={"exitCode": 1, "reason": "Error"})
    assert _obs(_job(("Failed", "BackoffLimitExceeded")), [plain]).reason == "BackoffLimitExceeded"
    assert _obs(_job(("Failed", "DeadlineExceeded")), []).reason == "DeadlineExceeded"
    gate = _pod("Failed", terminated={"exitCode": 6, "reason": "Error"})
    obs = _obs(_job(("Failed", "PodFailurePolicy")), [gate])
    assert (obs.phase, obs.reason, obs.stalled) == ("Failed", "GateFailed", True)


def test_termination_message_report_names_the_failure() -> None:
    report = WorkerReport(phase="Failed", reason="DataError", message="labels out of range", sequence=9)
    pod = _pod("Failed", terminated={"exitCode": 4, "message": report.model_dump_json()})
    obs = _obs(_job(("Failed", "PodFailurePolicy")), [pod])
    assert (obs.reason, obs.message) == ("DataError", "labels out of range")


def test_log_tail_in_termination_message_is_not_a_report() -> None:
    pod = _pod("Failed", terminated={"exitCode": 3, "message": "Traceback ...\nValueError"})
    assert _obs(_job(("Failed", "PodFailurePolicy")), [pod]).reason == "ModelError"


def test_only_the_newest_pod_speaks() -> None:
    old = _pod("Running", created="2025-01-01T00:00:00Z")
    new = _pod(created="2025-01-01T00:05:00Z", waiting="ErrImagePull")
    assert _obs(_job(), [old, new]).reason == "ImagePullBackOff"


def test_suspended_and_kueue() -> None:
    assert _obs(_job(suspend=True), [], user=True).phase == "Suspended"
    assert _obs(_job(suspend=True), [], kueue=True).phase == "Queued"


def test_conditions_follow_kstatus() -> None:
    running = {c.type: c for c in desired_conditions(Observation("Running", "Running", "x"), 3)}
    assert running["Ready"].status == "False"
    assert running["Reconciling"].status == "True"
    assert running["Stalled"].status == "False"
    assert "Succeeded" not in running and "Failed" not in running
    assert all(c.observedGeneration == 3 for c in running.values())
    done = {c.type: c for c in desired_conditions(Observation("Succeeded", "Succeeded", "ok"), 3)}
    assert (done["Ready"].status, done["Succeeded"].status, done["Failed"].status) == ("True", "True", "False")
    assert done["Reconciling"].status == "False"
    failed = {c.type: c for c in desired_conditions(Observation("Failed", "GateFailed", "no", stalled=True), 3)}
    assert (failed["Failed"].status, failed["Failed"].reason, failed["Stalled"].status) == (
        "True",
        "GateFailed",
        "True",
    )


def test_last_transition_time_moves_only_on_status_change() -> None:
    first = merge_conditions([], desired_conditions(Observation("Pending", "Starting", ""), 1), "T1")
    second = merge_conditions(first, desired_conditions(Observation("Running", "Running", ""), 1), "T2")
    by_type = {c["type"]: c for c in second}
    assert by_type["Ready"]["lastTransitionTime"] == "T1"  # False -> False
    done = merge_conditions(second, desired_conditions(Observation("Succeeded", "Succeeded", ""), 1), "T3")
    assert {c["type"]: c for c in done}["Ready"]["lastTransitionTime"] == "T3"


def test_failure_target_alone_already_names_the_reason() -> None:
    # Kubernetes >= 1.31 sets FailureTarget while the Job's pods are still terminating.
    assert _obs(_job(("FailureTarget", "DeadlineExceeded")), []).reason == "DeadlineExceeded"


def test_an_oom_kill_names_the_workers_memory_plan_and_the_knob() -> None:
    oom = _pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    plan = {"hostBytes": 20 * 2**30, "gpuBytes": 0, "scratchBytes": 2**30, "knob": "fewer calibration samples"}
    job = JobView.of(_job(("Failed", "BackoffLimitExceeded")))
    obs = observe(job, [PodView.of(oom)], user_suspended=False, kueue_managed=False, memory="16Gi", memory_plan=plan)
    assert obs.reason == "OOMKilled"
    assert "its limit 16Gi" in obs.message
    assert "20.00 GiB" in obs.message and "fewer calibration samples" in obs.message
    # Without a plan (not an LLM job, or killed before planning) it still names the knob it has.
    bare = observe(job, [PodView.of(oom)], user_suspended=False, kueue_managed=False, memory="16Gi")
    assert bare.message == "the worker ran out of memory (its limit 16Gi); raise spec.resources.memory"
