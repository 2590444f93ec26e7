"""Calibration and evaluation text for an LLM, read by kompression.worker.data.texts, as token ids."""

from __future__ import annotations

from typing import Any

from kompression.api.v1alpha1 import DataSource
from kompression.worker.data.texts import model_max_length
from kompression.worker.errors import DataError

# Without spec.data.*.maxLength, samples stop here even when the model allows longer ones: a
# calibration pass holds one layer's activations for every token of a batch.
DEFAULT_MAX_LENGTH = 2048


def tokenize(tokenizer: Any, samples: list[str], source: DataSource, where: str) -> list[list[int]]:
    """Token ids per sample, truncated to maxLength; the model's tokenizer adds its own BOS."""
    limit = source.maxLength or min(model_max_length(tokenizer) or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
    ids = [list(tokenizer(s, truncation=True, max_length=limit)["input_ids"]) for s in samples]
    if not any(len(x) >= 2 for x in ids):
        raise DataError(f"{where}: every sample tokenizes to fewer than two tokens; nothing to learn or score")
    return ids
