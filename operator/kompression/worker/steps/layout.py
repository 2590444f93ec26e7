"""Memory layout of a convolutional model's weights: channels-last or contiguous, whichever runs faster.

Structured pruning leaves odd, small channel counts, and in the default (NCHW) layout PyTorch's CPU
backend sends such convolutions at batch 1 to its slow reference kernel and its max-pooling to a
scalar loop; channels-last keeps them on oneDNN's and the vectorized paths. Which layout wins still
depends on the model, the batch, the device and the threads, so it is timed, not assumed. The
input stays as the user feeds it: a channels-last weight makes the convolution's output
channels-last, and the layout then carries through the network.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kompression.worker import distributed
from kompression.worker.measure.graphs import threads_for
from kompression.worker.techniques import StepContext

CONTIGUOUS = "contiguous"
CHANNELS_LAST = "channels_last"
FORMATS = {CONTIGUOUS: torch.contiguous_format, CHANNELS_LAST: torch.channels_last}
# A switch must win by this much: a closer race is noise, and the layout the user gave is kept.
MARGIN = 0.95
ROUNDS = 5
CALLS = 3
# Timing must stay a small part of the step: a model whose calls are slow gets fewer rounds.
BUDGET_S = 10.0


def rounds_for(call_s: float) -> int:
    """Rounds that fit the budget at this many seconds per call (each round makes 2 x (CALLS + 1))."""
    per_round = 2 * (CALLS + 1) * max(call_s, 1e-9)
    return max(1, min(ROUNDS, int(BUDGET_S / per_round)))


def choose_layout(timings_ms: Mapping[str, float], current: str = CONTIGUOUS) -> str:
    """The layout to keep: the fastest, if it beats the current one by more than the margin."""
    best = min(timings_ms, key=lambda name: timings_ms[name])
    return best if timings_ms[best] < MARGIN * timings_ms[current] else current


def time_layouts(module: nn.Module, example: Sequence[torch.Tensor], device: str, threads: int) -> dict[str, float]:
    """Median ms per call in each layout, timed in alternating rounds (as many as BUDGET_S allows)
    so that a busy spell on a shared machine falls on both. The module ends in the layout it came in."""
    current = current_layout(module)
    sync: Callable[[], None] = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    samples: dict[str, list[float]] = {name: [] for name in FORMATS}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # no_grad, not inference_mode: the layout changes below re-create the parameters, and made in
        # inference mode they would become inference tensors that a later fine-tune cannot train.
        with torch.no_grad():
            start = time.perf_counter()
            module(*example)  # untimed warm-up, and the call time that sizes the rounds
            sync()
            for round_ in range(rounds_for(time.perf_counter() - start)):
                order = list(FORMATS) if round_ % 2 == 0 else list(reversed(FORMATS))
                for name in order:
                    module.to(memory_format=FORMATS[name])
                    module(*example)  # untimed: the first call after a layout change repacks weights
                    sync()
                    for _ in range(CALLS):
                        start = time.perf_counter()
                        module(*example)
                        sync()
                        samples[name].append((time.perf_counter() - start) * 1000)
    finally:
        module.to(memory_format=FORMATS[current])
        torch.set_num_threads(previous_threads)
    return {name: statistics.median(values) for name, values in samples.items()}


def _conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d)]


def current_layout(module: nn.Module) -> str:
    weights = _conv_weights(module)
    channels_last = bool(weights) and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    # A 1x1 kernel with one input channel is contiguous in both layouts; the non-trivial ones decide.
    contiguous = all(w.is_contiguous() for w in weights)
    return CHANNELS_LAST if channels_last and not contiguous else CONTIGUOUS


def apply_faster_layout(
    module: nn.Module, example: Sequence[torch.Tensor], ctx: StepContext[Any]
) -> dict[str, str | float]:
    """Time both layouts on the example input, leave the module in the faster one, and say which."""
    if not _conv_weights(module):
        return {}
    threads = threads_for(ctx.measurement)
    current = current_layout(module)
    timings = time_layouts(module.eval(), example, ctx.device, threads)
    # Under torchrun each rank times for itself and could choose differently; rank 0's choice holds.
    chosen = distributed.agree(choose_layout(timings, current), ctx.device)
    module.to(memory_format=FORMATS[chosen])
    return {
        "memoryFormat": chosen,
        "layoutMsContiguous": round(timings[CONTIGUOUS], 3),
        "layoutMsChannelsLast": round(timings[CHANNELS_LAST], 3),
    }
