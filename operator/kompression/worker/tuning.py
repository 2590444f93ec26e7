"""acceptance.strategy Auto: accuracy-driven search in the style of Intel Neural Compressor.

Trials are tried from the most compressed to the least. Each technique says how it relaxes: a step
config with `relaxed(factor)` (a prune scales its sparsity, a lowRank step what it discards, 1 -
energy or 1 - rankRatio) is tried at factors 1, 0.75, 0.5 and 0.25; a config with `float_fallbacks`
(int8 quantization) is tried at each factor keeping 0, 1, ... up to that many more layers in float
than its own choice. Those layers are the next most int8-sensitive ones the quantize step measured
itself, on the graph it quantizes, with onnxruntime's rounding (steps/sensitivity.py); they are
added to the layers the step keeps float (its excludeLayers, or its own measured outliers), never
instead of them. Since each trial is at most as compressed as the one before, the first trial that
passes every gate is the most compressed passing model and the search stops there. The budget is
acceptance.maxTrials and acceptance.timeoutSeconds. When no trial passes, the best one (most gates
passed, then highest accuracy) is returned for rejected/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

from kompression.api.v1alpha1 import Step
from kompression.worker.report.live import Reporter
from kompression.worker.techniques import Techniques
from kompression.worker.trial import Loaded, Trial, run_steps, score_trial

REMOVAL_FACTORS = (1.0, 0.75, 0.5, 0.25)


@runtime_checkable
class Relaxable(Protocol):
    """A step config that can remove less: relaxed(1) is the config as written, smaller factors remove less."""

    def relaxed(self, factor: float) -> Self: ...


@runtime_checkable
class KeepsLayersFloat(Protocol):
    """A step config whose technique measures which layers to keep float, and may keep this many more."""

    @property
    def float_fallbacks(self) -> int: ...


@dataclass(frozen=True)
class Candidate:
    steps: list[Step]
    extra_float_layers: int  # kept float by each KeepsLayersFloat step, beyond its own choice


def candidates(steps: list[Step]) -> Iterator[Candidate]:
    """Trials from the most to the least compressed; the first is the spec's own."""
    fallbacks = max((s.config.float_fallbacks for s in steps if isinstance(s.config, KeepsLayersFloat)), default=0)
    seen: set[str] = set()
    for factor in REMOVAL_FACTORS:
        variant = [_relaxed(s, factor) for s in steps]
        key = repr([s.to_wire() for s in variant])
        if key in seen:
            continue  # nothing in these steps relaxes (further)
        seen.add(key)
        for extra in range(fallbacks + 1):
            yield Candidate(variant, extra)


def _relaxed(step: Step, factor: float) -> Step:
    config = step.config
    if not isinstance(config, Relaxable):
        return step
    return step.model_copy(update={step.kind: config.relaxed(factor)})


def _rank(trial: Trial) -> tuple[int, float, float]:
    result = trial.result
    accuracy = result.final.accuracy if result.final and result.final.accuracy is not None else float("-inf")
    return sum(g.passed for g in result.gates), accuracy, result.compressionRatio or 0.0


def search(loaded: Loaded, techniques: Techniques, reporter: Reporter, seed: int) -> Trial:
    acceptance = loaded.job.spec.acceptance
    assert acceptance is not None
    deadline = time.monotonic() + acceptance.timeoutSeconds if acceptance.timeoutSeconds else None
    best: Trial | None = None
    for index, candidate in enumerate(candidates(loaded.job.spec.steps)):
        if index >= acceptance.max_trials_or_default or (
            deadline is not None and time.monotonic() >= deadline and best is not None
        ):
            break
        if index:
            reporter.reset_steps()
        steps = candidate.steps
        records = run_steps(loaded, steps, techniques, reporter, seed, extra_float_layers=candidate.extra_float_layers)
        trial = score_trial(loaded, steps, records)
        if trial.passed:
            return trial
        if best is None or _rank(trial) > _rank(best):
            best = trial
    assert best is not None
    return best
