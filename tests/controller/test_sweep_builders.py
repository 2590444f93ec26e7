"""The sweep controller's pure parts: a trial's CompressionJob, a trial read back from its CompressionJob,
and decide_sweep (parallelism, suspend, maxFailedTrials, preempted trials, the end), without a cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kompression.api.constants import (
    ANNOTATION_SWEEP_PARAMETERS,
    LABEL_SWEEP_NAME,
    LABEL_SWEEP_TRIAL,
)
from kompression.api.sweep_plan import next_trials, parse_sweep, plan
from kompression.api.v1alpha1 import CompressionJob, CompressionSweepSpec, TrialMetrics, TrialStatus
from kompression.api.validation import parse_job
from kompression.controller.sweep_builders import (
    build_trial,
    decide_sweep,
    owned_by,
    sweep_finished,
    sweep_of,
    sweep_status,
    trial_of,
)
from sweep_cases import SWEEP, sweep

UID = "0b5e6f2a-1111-2222-3333-444455556666"


def _spec(**fields: Any) -> CompressionSweepSpec:
    return parse_sweep(sweep(**fields)).spec


def test_a_trial_is_a_valid_compressionjob_owned_by_its_sweep_and_labelled() -> None:
    trial = plan(parse_sweep(SWEEP).spec)[9]
    body = build_trial("digits", UID, "team-a", trial)
    job = parse_job(body)  # what the API server and the operator accept
    assert isinstance(job, CompressionJob)
    assert job.metadata.name == "digits-t09"
    assert body["metadata"]["labels"][LABEL_SWEEP_NAME] == "digits"
    assert body["metadata"]["labels"][LABEL_SWEEP_TRIAL] == "t09"
    (ref,) = body["metadata"]["ownerReferences"]
    assert ref["kind"] == "CompressionSweep" and ref["uid"] == UID and ref["controller"] and ref["blockOwnerDeletion"]
    assert owned_by(body, UID) and not owned_by(body, "another-uid") and sweep_of(body) == "digits"
    assert json.loads(body["metadata"]["annotations"][ANNOTATION_SWEEP_PARAMETERS]) == trial.values
    assert job.spec.output.uri == "file://.kompression/sweep/out/t09/"
    # Trials share the step prefixes they have in common, under the sweep's output.
    assert job.spec.stepCache is not None and job.spec.stepCache.uri == "file://.kompression/sweep/out/step-cache/"


def test_a_step_cache_the_template_names_is_kept() -> None:
    manifest = sweep()
    manifest["spec"]["template"]["stepCache"] = {"uri": "s3://cache/digits/"}
    body = build_trial("digits", UID, "ns", plan(parse_sweep(manifest).spec)[0])
    assert body["spec"]["stepCache"] == {"uri": "s3://cache/digits/"}


def test_a_long_sweep_name_still_makes_valid_names_and_labels() -> None:
    name = "s" * 250
    body = build_trial(name, UID, "ns", plan(parse_sweep(SWEEP).spec)[0])
    assert len(body["metadata"]["name"]) <= 253
    assert len(body["metadata"]["labels"][LABEL_SWEEP_NAME]) <= 63
    parse_job(body)


def _child(phase: str | None, reason: str | None = None, result: dict[str, Any] | None = None) -> dict[str, Any]:
    body = build_trial("digits", UID, "ns", plan(parse_sweep(SWEEP).spec)[4])
    status: dict[str, Any] = {}
    if phase is not None:
        status["phase"] = phase
    if reason is not None:
        status["conditions"] = [{"type": "Failed", "status": "True", "reason": reason, "message": f"{reason}: why"}]
    if result is not None:
        status["result"] = result
    body["status"] = status
    return body


@pytest.mark.parametrize(
    ("phase", "reason", "expected"),
    [
        (None, None, "Pending"),
        ("Queued", None, "Pending"),
        ("Suspended", None, "Pending"),  # preempted by its queue: it runs again, it did not fail
        ("Running", None, "Running"),
        ("Succeeded", None, "Succeeded"),
        ("Failed", "GateFailed", "Rejected"),
        ("Failed", "BackoffLimitExceeded", "Failed"),
    ],
)
def test_a_trial_reads_its_phase_from_its_compressionjob(phase: str | None, reason: str | None, expected: str) -> None:
    trial = trial_of(_child(phase, reason))
    assert trial.phase == expected
    assert (trial.name, trial.index) == ("digits-t04", 4)
    assert trial.parameters == {"sparsity": 0.5, "method": "DynamicInt8", "distill": True}


def test_a_trial_carries_the_result_under_the_objective_names() -> None:
    result = {"compressionRatio": 7.5, "accuracyDelta": -0.02, "final": {"accuracy": 0.95, "latencyMs": 0.4}}
    trial = trial_of(_child("Failed", "GateFailed", result))
    assert trial.metrics == TrialMetrics(compressionRatio=7.5, accuracyDelta=-0.02, accuracy=0.95, latencyMs=0.4)
    assert trial.message == "GateFailed: why"


def _made(spec: CompressionSweepSpec, phases: list[str]) -> list[TrialStatus]:
    out = []
    for planned, phase in zip(next_trials(spec, [], len(phases)), phases, strict=False):
        metrics = TrialMetrics(compressionRatio=2.0 + planned.index, accuracyDelta=-0.01 * planned.index)
        out.append(
            TrialStatus(
                name=f"digits-{planned.suffix}",
                index=planned.index,
                parameters=planned.values,
                phase=phase,  # type: ignore[arg-type]
                metrics=metrics if phase in ("Succeeded", "Rejected") else None,
            )
        )
    return out


def test_never_more_than_parallelism_unfinished() -> None:
    spec = _spec(parallelism=2)
    assert decide_sweep(spec, [], 12).create == 2
    assert decide_sweep(spec, _made(spec, ["Running", "Pending"]), 12).create == 0
    assert decide_sweep(spec, _made(spec, ["Succeeded", "Running"]), 12).create == 1
    decision = decide_sweep(spec, _made(spec, ["Succeeded", "Rejected", "Failed", "Running"]), 12)
    assert decision.create == 1 and decision.observation.phase == "Running"
    assert decision.counts.model_dump() == {"pending": 8, "running": 1, "succeeded": 1, "rejected": 1, "failed": 1}
    assert decision.done == 3


def test_the_last_trials_are_not_made_twice() -> None:
    spec = _spec(parallelism=8, search={"algorithm": "Random", "maxTrials": 3})
    assert decide_sweep(spec, _made(spec, ["Succeeded", "Succeeded"]), 3).create == 1


def test_suspend_stops_new_trials_and_resuming_goes_on() -> None:
    spec = _spec(parallelism=2, suspend=True)
    decision = decide_sweep(spec, _made(spec, ["Succeeded"]), 12)
    assert decision.create == 0 and decision.observation.phase == "Suspended"
    assert decide_sweep(_spec(parallelism=2), _made(spec, ["Succeeded"]), 12).create == 2


def test_more_failures_than_max_failed_trials_end_the_sweep_failed() -> None:
    spec = _spec(parallelism=4, maxFailedTrials=1)
    assert decide_sweep(spec, _made(spec, ["Failed", "Running"]), 12).create == 3
    decision = decide_sweep(spec, _made(spec, ["Failed", "Failed", "Running"]), 12)
    assert decision.create == 0
    assert decision.observation.phase == "Failed" and decision.observation.reason == "TooManyFailedTrials"
    # Rejected trials (a missed gate) and preempted ones (Pending again) are not failures.
    assert decide_sweep(spec, _made(spec, ["Rejected", "Rejected", "Pending"]), 12).observation.phase == "Running"


def test_the_end_has_the_front_and_the_best_or_says_none_passed() -> None:
    spec = _spec(search={"algorithm": "Random", "maxTrials": 3})
    trials = _made(spec, ["Succeeded", "Succeeded", "Rejected"])
    decision = decide_sweep(spec, trials, 3)
    assert decision.observation.phase == "Succeeded" and decision.observation.reason == "Completed"
    # t1 compresses more (the first objective), t0 loses less accuracy: both on the front; t2 missed a gate.
    assert decision.front == ["digits-t0", "digits-t1"]
    assert decision.best is not None and decision.best.name == "digits-t1"
    status = sweep_status(decision, trials, 3)
    assert status["trialsDone"] == 3 and status["trialsTotal"] == 3
    assert [t["name"] for t in status["trials"]] == ["digits-t0", "digits-t1", "digits-t2"]
    assert status["best"]["metrics"]["compressionRatio"] == 3.0
    failed = decide_sweep(spec, _made(spec, ["Rejected", "Failed", "Rejected"]), 3)
    assert failed.observation.phase == "Failed" and failed.observation.reason == "NoTrialPassed"
    assert sweep_status(failed, [], 3)["best"] is None


def test_a_trial_deleted_by_hand_is_planned_again() -> None:
    spec = _spec(parallelism=4)
    made = [t for t in _made(spec, ["Running"] * 4) if t.index != 1]
    (again,) = next_trials(spec, made, 1)
    assert again.index == 1 and again.suffix == "t01"


def test_an_ended_sweep_is_left_as_it_ended() -> None:
    assert sweep_finished({"status": {"phase": "Succeeded"}}) and sweep_finished({"status": {"phase": "Failed"}})
    assert not sweep_finished({"status": {"phase": "Suspended"}}) and not sweep_finished({})
