"""acceptance.strategy Auto: accuracy-driven search in the style of Intel Neural Compressor.

Trials are tried from the most compressed to the least: first the steps as written, then, for
each prune sparsity factor (1, 0.75, 0.5, 0.25 of the written sparsity), int8 quantization with
0, 1 or 2 sensitive layers kept in float. Since each trial is at most as compressed as the one
before, the first trial that passes every gate is the most compressed passing model and the
search stops there. The budget is acceptance.maxTrials and acceptance.timeoutSeconds. When no
trial passes, the best one (most gates passed, then highest accuracy) is returned for rejected/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import torch

from kompression.api.v1alpha1 import Step
from kompression.worker.model import TorchModel
from kompression.worker.pipeline import Loaded, Trial, run_steps, score_trial
from kompression.worker.progress import Reporter
from kompression.worker.steps.base import Technique

SPARSITY_FACTORS = (1.0, 0.75, 0.5, 0.25)
INT8_METHODS = ("StaticInt8", "DynamicInt8")


def sensitive_layers(loaded: Loaded) -> list[str]:
    """The first and the last weighted layer: the usual accuracy-critical ones under int8."""
    if not isinstance(loaded.model, TorchModel):
        return []
    names = [n for n, m in loaded.model.module.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if not names:
        return []
    return [names[0]] if len(names) == 1 else [names[0], names[-1]]


def candidates(steps: list[Step], sensitive: list[str]) -> Iterator[list[Step]]:
    """Step lists from the most to the least compressed; the first is the spec's own."""
    has_prune = any(s.prune is not None for s in steps)
    has_int8 = any(s.quantize is not None and s.quantize.method in INT8_METHODS for s in steps)
    fallbacks = [sensitive[:k] for k in range(len(sensitive) + 1)] if has_int8 else [[]]
    seen: set[str] = set()
    for factor in SPARSITY_FACTORS if has_prune else (1.0,):
        for fallback in fallbacks:
            variant = [_vary(s, factor, fallback) for s in steps]
            key = repr([s.to_wire() for s in variant])
            if key not in seen:
                seen.add(key)
                yield variant


def _vary(step: Step, factor: float, fallback: list[str]) -> Step:
    if step.prune is not None and factor != 1.0 and step.prune.method != "SemiStructured24":
        sparsity = round(step.prune.sparsity * factor, 4)
        return step.model_copy(update={"prune": step.prune.model_copy(update={"sparsity": sparsity})})
    if step.quantize is not None and step.quantize.method in INT8_METHODS and fallback:
        exclude = sorted(set(step.quantize.excludeLayers) | set(fallback))
        return step.model_copy(update={"quantize": step.quantize.model_copy(update={"excludeLayers": exclude})})
    return step


def _rank(trial: Trial) -> tuple[int, float, float]:
    result = trial.result
    accuracy = result.final.accuracy if result.final and result.final.accuracy is not None else float("-inf")
    return sum(g.passed for g in result.gates), accuracy, result.compressionRatio or 0.0


def search(loaded: Loaded, techniques: Mapping[str, Technique], reporter: Reporter, seed: int) -> Trial:
    acceptance = loaded.job.spec.acceptance
    assert acceptance is not None
    deadline = time.monotonic() + acceptance.timeoutSeconds if acceptance.timeoutSeconds else None
    best: Trial | None = None
    for index, steps in enumerate(candidates(loaded.job.spec.steps, sensitive_layers(loaded))):
        if index >= acceptance.maxTrials or (
            deadline is not None and time.monotonic() >= deadline and best is not None
        ):
            break
        if index:
            reporter.reset_steps()
        trial = score_trial(loaded, steps, run_steps(loaded, steps, techniques, reporter, seed))
        if trial.passed:
            return trial
        if best is None or _rank(trial) > _rank(best):
            best = trial
    assert best is not None
    return best
