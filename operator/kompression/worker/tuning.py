"""acceptance.strategy Auto: accuracy-driven search in the style of Intel Neural Compressor.

Trials are tried from the most compressed to the least: first the steps as written, then, for
each factor (1, 0.75, 0.5, 0.25) applied to what the compressing steps remove (a prune's sparsity;
a lowRank step's discarded energy 1 - energy, or its discarded rank 1 - rankRatio), int8
quantization with 0, 1 or 2 layers kept in float, chosen by their measured int8 sensitivity. Since each trial is at most as compressed as the one
before, the first trial that passes every gate is the most compressed passing model and the
search stops there. The budget is acceptance.maxTrials and acceptance.timeoutSeconds. When no
trial passes, the best one (most gates passed, then highest accuracy) is returned for rejected/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from kompression.api.v1alpha1 import INT8_METHODS, Step
from kompression.worker.model import TorchModel
from kompression.worker.progress import Reporter
from kompression.worker.steps.base import Techniques
from kompression.worker.trial import Loaded, Trial, run_steps, score_trial

REMOVAL_FACTORS = (1.0, 0.75, 0.5, 0.25)
FALLBACK_LAYERS = 2  # the most int8-sensitive layers that trials may keep in float
SENSITIVITY_SAMPLES = 64


def sensitive_layers(loaded: Loaded) -> list[str]:
    """The weighted layers whose int8 quantization hurts the output most, most sensitive first.

    Each layer is quantized alone (weights per channel, inputs per tensor, the ranges int8 PTQ
    would use) and scored by the relative error it causes in the model's output on real data:
    measured, as Neural Compressor does, not guessed from the layer's position.
    """
    if not isinstance(loaded.model, TorchModel):
        return []
    data = loaded.data.calibration or loaded.data.evaluation or loaded.data.training
    if data is None:
        return []
    module = loaded.model.module.eval()
    device = next(module.parameters()).device
    inputs = [torch.from_numpy(a).to(device) for a in data.rows(slice(0, SENSITIVITY_SAMPLES))]
    layers: dict[str, torch.nn.Conv2d | torch.nn.Linear] = {
        n: m for n, m in module.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    }
    with torch.inference_mode():
        ranges = _input_ranges(module, layers, inputs)
        reference = module(*inputs)
        scale = reference.pow(2).mean().clamp_min(1e-12)
        errors = {}
        for name, layer in layers.items():
            with _int8_layer(layer, ranges[name]):
                errors[name] = float((module(*inputs) - reference).pow(2).mean() / scale)
    return sorted(errors, key=errors.__getitem__, reverse=True)[:FALLBACK_LAYERS]


def _input_ranges(
    module: torch.nn.Module, layers: Mapping[str, torch.nn.Conv2d | torch.nn.Linear], inputs: Sequence[torch.Tensor]
) -> dict[str, tuple[float, float]]:
    ranges: dict[str, tuple[float, float]] = {}

    def recorder(name: str) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        def record(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            ranges[name] = (float(args[0].min()), float(args[0].max()))

        return record

    handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in layers.items()]
    try:
        module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def _fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, low: int, high: int) -> torch.Tensor:
    return (torch.clamp(torch.round(x / scale) + zero, low, high) - zero) * scale


@contextmanager
def _int8_layer(layer: torch.nn.Conv2d | torch.nn.Linear, input_range: tuple[float, float]) -> Iterator[None]:
    """Temporarily run one layer as int8 PTQ would: s8 per-channel weights, u8 per-tensor inputs."""
    weight = layer.weight
    original = weight.detach().clone()
    per_channel = original.abs().flatten(1).amax(dim=1).clamp_min(1e-12) / 127
    shape = (-1,) + (1,) * (original.dim() - 1)
    weight.copy_(_fake_quant(original, per_channel.view(shape), torch.zeros(()), -127, 127))
    low, high = min(input_range[0], 0.0), max(input_range[1], 0.0)
    scale = torch.tensor(max(high - low, 1e-12) / 255)
    zero = torch.round(-low / scale)
    handle = layer.register_forward_pre_hook(lambda _, args: (_fake_quant(args[0], scale, zero, 0, 255),))
    try:
        yield
    finally:
        handle.remove()
        weight.copy_(original)


def candidates(steps: list[Step], sensitive: list[str]) -> Iterator[list[Step]]:
    """Step lists from the most to the least compressed; the first is the spec's own."""
    searched = any(s.prune is not None or s.lowRank is not None for s in steps)
    has_int8 = any(s.quantize is not None and s.quantize.method in INT8_METHODS for s in steps)
    fallbacks = [sensitive[:k] for k in range(len(sensitive) + 1)] if has_int8 else [[]]
    seen: set[str] = set()
    for factor in REMOVAL_FACTORS if searched else (1.0,):
        for fallback in fallbacks:
            variant = [_vary(s, factor, fallback) for s in steps]
            key = repr([s.to_wire() for s in variant])
            if key not in seen:
                seen.add(key)
                yield variant


def _vary(step: Step, factor: float, fallback: list[str]) -> Step:
    if step.prune is not None and factor != 1.0 and step.prune.method != "SemiStructured24":
        sparsity = round(step.prune.sparsity * factor, 4)
        return step.model_copy(update={step.kind: step.prune.model_copy(update={"sparsity": sparsity})})
    if step.lowRank is not None and factor != 1.0:
        field = "energy" if step.lowRank.energy is not None else "rankRatio"
        kept = round(1 - (1 - getattr(step.lowRank, field)) * factor, 4)
        return step.model_copy(update={step.kind: step.lowRank.model_copy(update={field: kept})})
    if step.quantize is not None and step.quantize.method in INT8_METHODS and fallback:
        exclude = sorted(set(step.quantize.excludeLayers) | set(fallback))
        return step.model_copy(update={step.kind: step.quantize.model_copy(update={"excludeLayers": exclude})})
    return step


def _rank(trial: Trial) -> tuple[int, float, float]:
    result = trial.result
    accuracy = result.final.accuracy if result.final and result.final.accuracy is not None else float("-inf")
    return sum(g.passed for g in result.gates), accuracy, result.compressionRatio or 0.0


def search(loaded: Loaded, techniques: Techniques, reporter: Reporter, seed: int) -> Trial:
    acceptance = loaded.job.spec.acceptance
    assert acceptance is not None
    deadline = time.monotonic() + acceptance.timeoutSeconds if acceptance.timeoutSeconds else None
    best: Trial | None = None
    for index, steps in enumerate(candidates(loaded.job.spec.steps, sensitive_layers(loaded))):
        if index >= acceptance.max_trials_or_default or (
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
