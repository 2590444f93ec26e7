"""Perplexity of a causal LM on token sequences: exp of the mean next-token negative log-likelihood."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Perplexity:
    mean_nll: float  # per predicted token
    tokens: int  # how many tokens were predicted

    @property
    def value(self) -> float:
        return math.exp(self.mean_nll)


def perplexity(model: Any, sequences: Sequence[Sequence[int]], device: str = "cpu") -> Perplexity:
    """Each sequence scored on its own (no padding, so no mask can leak), token-weighted over all."""

    total, count = 0.0, 0
    with torch.inference_mode():
        for ids in sequences:
            if len(ids) < 2:
                continue
            x = torch.tensor([list(ids)], dtype=torch.long, device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
            total += float(nll)
            count += len(ids) - 1
    if count == 0:
        raise ValueError("no sequence has two tokens or more: nothing to score")
    return Perplexity(total / count, count)
