"""The compression techniques, one module each, keyed by the spec's step kind."""

from __future__ import annotations

from kompression.worker.steps.base import Technique
from kompression.worker.steps.prune import prune

TECHNIQUES: dict[str, Technique] = {
    "prune": prune,
}

__all__ = ["TECHNIQUES"]
