"""A CompressionSweep against the real test bed (apiserver, controller-manager, scheduler, kwok) and the
operator process: trials made as CompressionJobs owned by the sweep, never more than `parallelism`
unfinished, a restart losing nothing, the sweep Succeeded with its Pareto front, and deletion taking
the trials with it through the garbage collector."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubectl import SMALL, finish, pods, running_pod
from operator_process import OperatorProcess, get_json

from kompression.api.constants import LABEL_SWEEP_NAME
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import Result
from sweep_cases import int8_sweep

pytestmark = pytest.mark.timeout(300)

# Each trial's outcome, by its values: the front is t0 (least accuracy lost) and t3 (most compressed);
# t1 and t2 are beaten by t3 on both objectives.
OUTCOMES = {
    ("DynamicInt8", "[]"): (4.0, -0.001),
    ("DynamicInt8", '["fc"]'): (3.5, -0.01),
    ("StaticInt8", "[]"): (1.9, -0.004),
    ("StaticInt8", '["fc"]'): (4.5, -0.003),
}


def _sweep(name: str, **spec: Any) -> dict[str, Any]:
    return int8_sweep(name, SMALL, [[], ["fc"]], **spec)


def _trials(kube: Any, ns: str, sweep: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(kube, "-n", ns, "compressionjobs", "-l", f"{LABEL_SWEEP_NAME}={sweep}")[
        "items"
    ]
    return sorted(items, key=lambda t: t["metadata"]["name"])


def _unfinished(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in trials if (t.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def _sweep_status(kube: Any, ns: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get_json(kube, "-n", ns, "compressionsweep", name).get("status") or {}
    return status


def _finish_trial(kube: Any, ns: str, trial: dict[str, Any]) -> None:
    """The worker's summary, as a finished pod leaves it: this trial's outcome."""
    params = json.loads(trial["metadata"]["annotations"]["kompression.dev/sweep-parameters"])
    ratio, delta = OUTCOMES[(params["method"], json.dumps(params["exclude"]))]
    report = WorkerReport(
        phase="Succeeded", result=Result(compressionRatio=ratio, accuracyDelta=delta, gatesPassed=True)
    )
    name = trial["metadata"]["name"]
    finish(kube, running_pod(kube, ns, name), 0, report.model_dump_json(by_alias=True, exclude_none=True))


def test_a_sweep_runs_its_trials_two_at_a_time_to_its_pareto_front(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(_sweep("grid"), namespace=namespace)
    finished = 0
    most_unfinished = 0
    while finished < 4:
        trials = kube.wait(
            lambda: (
                [
                    t
                    for t in _unfinished(_trials(kube, namespace, "grid"))
                    if pods(kube, namespace, t["metadata"]["name"])
                ]
                or None
            ),
            "a trial with a pod",
        )
        all_trials = _trials(kube, namespace, "grid")
        most_unfinished = max(most_unfinished, len(_unfinished(all_trials)))
        assert len(_unfinished(all_trials)) <= 2, [t["metadata"]["name"] for t in all_trials]
        for trial in all_trials:
            ref = trial["metadata"]["ownerReferences"][0]
            assert (ref["kind"], ref["name"], ref["controller"]) == ("CompressionSweep", "grid", True)
        _finish_trial(kube, namespace, trials[0])
        name = trials[0]["metadata"]["name"]
        kube.kubectl("-n", namespace, "wait", "--for=condition=Succeeded", f"compressionjob/{name}", "--timeout=60s")
        finished += 1
        if finished == 2:
            # A restart in the middle: the sweep's state is read back from its trials.
            operator.kill()
            operator.start()
    assert most_unfinished == 2
    kube.kubectl("-n", namespace, "wait", "--for=condition=Succeeded", "compressionsweep/grid", "--timeout=60s")
    status = _sweep_status(kube, namespace, "grid")
    assert len(_trials(kube, namespace, "grid")) == 4
    assert status["phase"] == "Succeeded"
    assert (status["trialsDone"], status["trialsTotal"]) == (4, 4)
    assert status["counts"] == {"pending": 0, "running": 0, "succeeded": 4, "rejected": 0, "failed": 0}
    assert status["paretoFront"] == ["grid-t0", "grid-t3"]
    assert status["best"]["name"] == "grid-t0"  # by the first objective, accuracyDelta
    assert {t["name"]: t["metrics"]["compressionRatio"] for t in status["trials"]}["grid-t3"] == 4.5
    row = kube.kubectl("-n", namespace, "get", "ksweep", "grid", "--no-headers").stdout.split()
    assert row[1:5] == ["Succeeded", "4", "4", "4"]  # phase, done, total, the best trial's ratio
    # Deleting the sweep deletes its trials (and their Jobs), by the garbage collector.
    kube.kubectl("-n", namespace, "delete", "compressionsweep", "grid", "--wait=true", "--timeout=60s")
    kube.wait(lambda: not _trials(kube, namespace, "grid"), "the trials to be garbage-collected", timeout=60)


def test_suspend_stops_new_trials_and_failures_past_the_limit_end_the_sweep(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    kube.apply(_sweep("limits", parallelism=1, maxFailedTrials=0), namespace=namespace)
    (first,) = kube.wait(lambda: _trials(kube, namespace, "limits") or None, "the first trial")
    kube.kubectl("-n", namespace, "patch", "ksweep", "limits", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    kube.wait(lambda: _sweep_status(kube, namespace, "limits").get("phase") == "Suspended", "the sweep suspended")
    # A permanent exit code fails the trial; no second trial while suspended, and the sweep fails.
    finish(kube, running_pod(kube, namespace, first["metadata"]["name"]), 2)
    kube.kubectl("-n", namespace, "wait", "--for=condition=Failed", "compressionsweep/limits", "--timeout=60s")
    status = _sweep_status(kube, namespace, "limits")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Failed"]["reason"] == "TooManyFailedTrials"
    assert status["counts"]["failed"] == 1
    assert len(_trials(kube, namespace, "limits")) == 1
