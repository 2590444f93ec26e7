"""A CompressionSweep whose trials Kueue queues (tests/testbed/kueue.py): Kueue's GPU quota, not the
sweep's parallelism, bounds how many trials run, and a preempted trial goes back to Kueue's queue and
finishes instead of counting as a failed trial."""

from __future__ import annotations

from typing import Any

import pytest
from kubectl import apply_cr, conditions, finish, running_pod, wait_phase
from kueue_queues import GPU, MakeQueue, holds_quota
from operator_process import OperatorProcess, get_json

from kompression.api.constants import LABEL_SWEEP_NAME
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import Result
from kompression.controller import kueue as reasons
from sweep_cases import int8_sweep

pytestmark = pytest.mark.timeout(300)
FINISHED = ("Succeeded", "Failed")


def _sweep(name: str, run_policy: dict[str, Any], excludes: list[list[str]], parallelism: int) -> dict[str, Any]:
    return int8_sweep(name, GPU, excludes, runPolicy=run_policy, parallelism=parallelism)


def _trials(kube: Any, ns: str, sweep: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(kube, "-n", ns, "compressionjobs", "-l", f"{LABEL_SWEEP_NAME}={sweep}")[
        "items"
    ]
    return items


def _phase(trial: dict[str, Any]) -> str | None:
    phase: str | None = (trial.get("status") or {}).get("phase")
    return phase


def _sweep_status(kube: Any, ns: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get_json(kube, "-n", ns, "compressionsweep", name).get("status") or {}
    return status


def _admitted_unfinished(kube: Any, ns: str) -> int:
    """Workloads that hold quota now: admitted by Kueue and not finished."""
    return sum(holds_quota(wl) for wl in get_json(kube, "-n", ns, "workloads.kueue.x-k8s.io")["items"])


def _finish_trial(kube: Any, ns: str, trial: dict[str, Any]) -> None:
    """The worker's summary, as a finished pod leaves it; each trial's numbers differ by its number."""
    name = trial["metadata"]["name"]
    number = int(name.rsplit("-t", 1)[1])
    result = Result(compressionRatio=2.0 + number / 4, accuracyDelta=-0.001 * (number + 1), gatesPassed=True)
    report = WorkerReport(phase="Succeeded", result=result)
    finish(kube, running_pod(kube, ns, name), 0, report.model_dump_json(by_alias=True, exclude_none=True))


def test_a_sweep_of_eight_trials_under_a_two_gpu_quota_runs_two_at_a_time(
    kube: Any, namespace: str, operator: OperatorProcess, make_queue: MakeQueue
) -> None:
    make_queue(gpus=2)
    # parallelism 8: every trial is made at once, and only Kueue's quota holds them back.
    sweep = _sweep("k8", {"queueName": "gpu"}, [[], ["fc"], ["conv"], ["conv", "fc"]], parallelism=8)
    kube.apply(sweep, namespace=namespace)
    kube.wait(lambda: len(_trials(kube, namespace, "k8")) == 8 or None, "the sweep's 8 trials", timeout=60)
    samples: list[int] = []

    def running() -> list[dict[str, Any]] | None:
        samples.append(_admitted_unfinished(kube, namespace))
        trials = _trials(kube, namespace, "k8")
        live = [t for t in trials if _phase(t) == "Running"]
        samples.append(sum(_phase(t) == "Running" for t in trials))
        return live or None

    finished = 0
    while finished < 8:
        trial = kube.wait(running, "a running trial", timeout=90)[0]
        waiting = [t for t in _trials(kube, namespace, "k8") if _phase(t) == "Queued"]
        if finished < 6:  # two run, the rest wait for Kueue, saying so
            reason = conditions(waiting[0]["status"])["Ready"]["reason"]
            assert reason in (reasons.QUEUED, reasons.WAITING), reason
        _finish_trial(kube, namespace, trial)
        wait_phase(kube, namespace, trial["metadata"]["name"], "Succeeded")
        finished += 1
    assert max(samples) == 2, samples  # never more than the quota at once, and the quota used
    kube.kubectl("-n", namespace, "wait", "--for=condition=Succeeded", "compressionsweep/k8", "--timeout=60s")
    status = _sweep_status(kube, namespace, "k8")
    assert (status["trialsDone"], status["trialsTotal"]) == (8, 8)
    assert status["counts"]["succeeded"] == 8 and status["counts"]["failed"] == 0


def test_a_preempted_trial_goes_back_to_the_queue_and_is_not_a_failed_trial(
    kube: Any,
    namespace: str,
    operator: OperatorProcess,
    make_queue: MakeQueue,
    priority_classes: dict[str, str],
) -> None:
    make_queue(gpus=1, preempt=True)
    low, high = priority_classes["low"], priority_classes["high"]
    sweep = _sweep("pre", {"queueName": "gpu", "workloadPriorityClassName": low}, [[]], parallelism=1)
    kube.apply(sweep, namespace=namespace)
    (trial,) = kube.wait(
        lambda: [t for t in _trials(kube, namespace, "pre") if _phase(t) == "Running"] or None, "a running trial"
    )
    name = trial["metadata"]["name"]
    apply_cr(
        kube, namespace, "urgent", resources=GPU, runPolicy={"queueName": "gpu", "workloadPriorityClassName": high}
    )
    kube.wait(
        lambda: (
            conditions(get_json(kube, "-n", namespace, "compressionjob", name).get("status") or {})
            .get("Ready", {})
            .get("reason")
            == reasons.PREEMPTED
        ),
        f"trial {name} preempted",
        timeout=90,
    )
    wait_phase(kube, namespace, "urgent", "Running", timeout=90)
    status = _sweep_status(kube, namespace, "pre")
    assert status["counts"]["failed"] == 0, status["counts"]
    assert status.get("phase") not in FINISHED
    finish(kube, running_pod(kube, namespace, "urgent"))
    # Kueue admits the trial again: the same CompressionJob, not a new trial, runs on and finishes.
    wait_phase(kube, namespace, name, "Running", timeout=90)
    _finish_trial(kube, namespace, get_json(kube, "-n", namespace, "compressionjob", name))
    wait_phase(kube, namespace, name, "Succeeded")
    assert get_json(kube, "-n", namespace, "compressionjob", name)["metadata"]["uid"] == trial["metadata"]["uid"]
    (second,) = kube.wait(
        lambda: [t for t in _trials(kube, namespace, "pre") if _phase(t) == "Running"] or None, "the second trial"
    )
    _finish_trial(kube, namespace, second)
    kube.kubectl("-n", namespace, "wait", "--for=condition=Succeeded", "compressionsweep/pre", "--timeout=60s")
    status = _sweep_status(kube, namespace, "pre")
    assert status["counts"]["succeeded"] == 2 and status["counts"]["failed"] == 0, status["counts"]
