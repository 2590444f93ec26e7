"""Pure parts of the CompressionSweep controller: a trial's CompressionJob, what a child says of its
trial, and what the sweep does next and reports. No I/O: tested without a cluster.

Everything is derived from the sweep and the children it owns, never from memory, so a restarted
operator decides the same (level-triggered, like the job controller).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kompression.api import failures
from kompression.api.constants import (
    ANNOTATION_SWEEP_PARAMETERS,
    ANNOTATION_SWEEP_TRIAL_INDEX,
    API_VERSION,
    COND_FAILED,
    KIND,
    LABEL_PART_OF,
    LABEL_SWEEP_NAME,
    LABEL_SWEEP_TRIAL,
    SWEEP_KIND,
)
from kompression.api.sweep_plan import (
    PlannedTrial,
    best_trial,
    metrics_from_result,
    pareto_front,
    tally,
    trial_output,
)
from kompression.api.v1alpha1 import (
    BestTrial,
    CompressionJobStatus,
    CompressionSweepSpec,
    StepCache,
    TrialCounts,
    TrialStatus,
)
from kompression.controller.conditions import Observation
from kompression.controller.labels import controller_ref
from kompression.controller.naming import label_value, trial_name

# Where a sweep's trials share their step prefixes, under the template's output (beside the trials' folders).
STEP_CACHE_FOLDER = "step-cache"


def sweep_selector(sweep_name: str) -> str:
    """The label selector of a sweep's trials."""
    return f"{LABEL_SWEEP_NAME}={label_value(sweep_name)}"


def build_trial(sweep_name: str, sweep_uid: str, namespace: str, trial: PlannedTrial) -> dict[str, Any]:
    """A trial's CompressionJob: owned by the sweep (deleted with it), labelled with the sweep and the
    trial, its number and values annotated so that the sweep's state can be read back from it alone.
    Unless the template names a step cache, the trials share one under the sweep's output."""
    spec = trial.spec
    if spec.stepCache is None:
        base = spec.output.uri.rstrip("/").rsplit("/", 1)[0]  # the template's output: the trial's parent
        spec = spec.model_copy(update={"stepCache": StepCache(uri=trial_output(base, STEP_CACHE_FOLDER))})
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": trial_name(sweep_name, trial.suffix),
            "namespace": namespace,
            "labels": {
                LABEL_SWEEP_NAME: label_value(sweep_name),
                LABEL_SWEEP_TRIAL: trial.suffix,
                LABEL_PART_OF: "kompression",
            },
            "annotations": {
                ANNOTATION_SWEEP_TRIAL_INDEX: str(trial.index),
                ANNOTATION_SWEEP_PARAMETERS: json.dumps(trial.values, sort_keys=True),
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": SWEEP_KIND,
                    "name": sweep_name,
                    "uid": sweep_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec.to_wire(),
    }


def owned_by(child: Mapping[str, Any], sweep_uid: str) -> bool:
    """Whether a CompressionJob is a trial of the sweep with this uid (and not of a deleted namesake)."""
    ref = controller_ref(child, SWEEP_KIND)
    return ref is not None and ref.uid == sweep_uid


def sweep_of(child: Mapping[str, Any]) -> str | None:
    """The name of the sweep a CompressionJob is a trial of, if it is one."""
    ref = controller_ref(child, SWEEP_KIND)
    return ref.name if ref is not None else None


def _failed_reason(status: CompressionJobStatus) -> str | None:
    for c in status.conditions:
        if c.type == COND_FAILED and c.status == "True":
            return c.reason
    return None


def trial_of(child: Mapping[str, Any]) -> TrialStatus:
    """What a trial's CompressionJob says of it. A trial that its queue preempted or suspended reads
    Pending (it runs again), never Failed; one that missed a gate is Rejected, with its measurements."""
    meta = child["metadata"]
    annotations = meta.get("annotations") or {}
    status = CompressionJobStatus.model_validate(child.get("status") or {})
    metrics = metrics_from_result(status.result)
    phase: Any = "Pending"
    message = None
    if status.phase == "Running":
        phase = "Running"
    elif status.phase == "Succeeded":
        phase = "Succeeded"
    elif status.phase == "Failed":
        reason = _failed_reason(status)
        phase = "Rejected" if reason == failures.GATE_FAILED.reason else "Failed"
        message = next((c.message for c in status.conditions if c.type == COND_FAILED), None) or reason
    return TrialStatus(
        name=meta["name"],
        index=int(annotations[ANNOTATION_SWEEP_TRIAL_INDEX]),
        parameters=json.loads(annotations[ANNOTATION_SWEEP_PARAMETERS]),
        phase=phase,
        metrics=metrics,
        message=message[:1024] if message else None,
    )


UNFINISHED = ("Pending", "Running")


def sweep_finished(sweep: Mapping[str, Any]) -> bool:
    """Whether a sweep already ended (Succeeded or Failed): it makes no trial again, not even one
    deleted by hand since (deleting a finished sweep's trials is how one frees their storage)."""
    return (sweep.get("status") or {}).get("phase") in ("Succeeded", "Failed")


@dataclass(frozen=True)
class SweepDecision:
    """What the sweep does now: how many trials to create, and the phase its status reports."""

    create: int
    observation: Observation
    counts: TrialCounts
    done: int
    front: list[str] = field(default_factory=list)
    best: BestTrial | None = None


def decide_sweep(spec: CompressionSweepSpec, trials: Sequence[TrialStatus], total: int) -> SweepDecision:
    """The next step of a sweep from its spec and its trials (those made so far), `total` the trials
    it makes in all. Never more than `parallelism` unfinished; none new while suspended or once ended."""
    counts = tally(trials, total)
    unfinished = sum(t.phase in UNFINISHED for t in trials)
    done = counts.succeeded + counts.rejected + counts.failed
    front = [t.name for t in pareto_front(trials, spec.objectives)]
    chosen = best_trial(trials, spec.objectives)
    summary = f"{done} of {total} trials finished: {counts.succeeded} passed, {counts.rejected} rejected, {counts.failed} failed"

    def decision(create: int, obs: Observation) -> SweepDecision:
        return SweepDecision(create, obs, counts, done, front, chosen)

    if spec.maxFailedTrials is not None and counts.failed > spec.maxFailedTrials:
        return decision(
            0,
            Observation(
                "Failed",
                "TooManyFailedTrials",
                f"{counts.failed} trials failed, more than maxFailedTrials ({spec.maxFailedTrials}); {summary}",
                stalled=True,
            ),
        )
    if done == total:
        if front:
            return decision(0, Observation("Succeeded", "Completed", f"{summary}; Pareto front: {', '.join(front)}"))
        return decision(0, Observation("Failed", "NoTrialPassed", f"{summary}; none passed its gates", stalled=True))
    if spec.suspend:
        return decision(0, Observation("Suspended", "Suspended", f"suspended: no new trials; {summary}"))
    create = max(0, min(spec.parallelism - unfinished, total - len(trials)))
    return decision(create, Observation("Running", "TrialsRunning", f"{summary}; {unfinished + create} unfinished"))


def sweep_status(decision: SweepDecision, trials: Sequence[TrialStatus], total: int) -> dict[str, Any]:
    """The status fields the controller owns (conditions and timestamps come from the status writer)."""
    return {
        "phase": decision.observation.phase,
        "trialsTotal": total,
        "trialsDone": decision.done,
        "counts": decision.counts.to_wire(),
        "trials": [t.to_wire() for t in sorted(trials, key=lambda t: t.index)],
        "paretoFront": decision.front,
        "best": decision.best.to_wire() if decision.best is not None else None,
    }
