"""Decode speed of a causal LM as transformers runs it: greedy generation at batch 1, in generated
tokens per second, the figure a serving engine's users feel once the prompt is read."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

# Enough steps that per-call overheads average out, few enough that timing a model stays a second
# or two beside its perplexity even where transformers simulates a format the CPU lacks (FP8).
NEW_TOKENS = 16
PROMPT_TOKENS = 16
WARMUP_RUNS = 1
# A warm-up generates this many tokens: the prompt's prefill and one decode step on the cache are
# every code path a timed run takes; more would repeat the timed runs' work untimed.
WARMUP_TOKENS = 2
RUNS = 3


class _Clock(StoppingCriteria):
    """Stamps the moment each generated token is ready; never stops generation."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def prompt(model: Any, sequences: Sequence[Sequence[int]] | None) -> list[int]:
    """The start of the first evaluation sample, or the model's BOS token alone without one."""
    if sequences:
        return list(sequences[0][:PROMPT_TOKENS])
    bos = model.generation_config.bos_token_id
    return [0 if bos is None else int(bos)]


def _pad_token(model: Any) -> int | None:
    config = model.generation_config
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    eos = config.eos_token_id
    return int(eos[0]) if isinstance(eos, list) else eos


def tokens_per_second(model: Any, ids: Sequence[int], device: str, new_tokens: int = NEW_TOKENS) -> float:
    """Median decode rate over RUNS greedy generations after WARMUP_RUNS. The first new token pays for
    reading the prompt (prefill), so the rate counts the tokens after it over the time after it."""

    x = torch.tensor([list(ids)], dtype=torch.long, device=device)
    rates = []
    with torch.inference_mode():
        for run in range(WARMUP_RUNS + RUNS):
            clock = _Clock(device)
            length = new_tokens if run >= WARMUP_RUNS else min(new_tokens, WARMUP_TOKENS)
            model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=length,
                min_new_tokens=length,  # EOS must not end a run early
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([clock]),
                pad_token_id=_pad_token(model),
            )
            if run >= WARMUP_RUNS:
                rates.append((len(clock.stamps) - 1) / (clock.stamps[-1] - clock.stamps[0]))
    return statistics.median(rates)
