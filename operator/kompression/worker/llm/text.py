"""Calibration and evaluation text: .txt (one sample per line) or .jsonl (a `text` field per line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kompression.api.v1alpha1 import DataSource
from kompression.worker.errors import DataError

# Without spec.data.*.maxLength, samples stop here even when the model allows longer ones: a
# calibration pass holds one layer's activations for every token of a batch.
DEFAULT_MAX_LENGTH = 2048


def read_samples(path: Path, where: str, limit: int | None) -> list[str]:
    """The non-empty samples of a text file, at most `limit` of them, in file order."""
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise DataError(
            f"{where}: {path.name} is not text data; llmQuantize reads .txt (one sample per line) or "
            ".jsonl (a `text` field per line)"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read {path.name} as UTF-8 text ({exc})") from None
    samples: list[str] = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            samples.append(_jsonl_text(line, number, path, where) if suffix == ".jsonl" else line)
        if limit is not None and len(samples) == limit:
            break
    if not samples:
        raise DataError(f"{where}: {path.name} holds no text sample")
    return samples


def _jsonl_text(line: str, number: int, path: Path, where: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        raise DataError(f"{where}: line {number} of {path.name} is not JSON") from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{where}: line {number} of {path.name} has no string field `text`")
    return text


def tokenize(tokenizer: Any, samples: list[str], source: DataSource, where: str) -> list[list[int]]:
    """Token ids per sample, truncated to maxLength; the model's tokenizer adds its own BOS."""
    model_max = getattr(tokenizer, "model_max_length", None) or DEFAULT_MAX_LENGTH
    limit = source.maxLength or min(int(model_max), DEFAULT_MAX_LENGTH)
    ids = [list(tokenizer(s, truncation=True, max_length=limit)["input_ids"]) for s in samples]
    if not any(len(x) >= 2 for x in ids):
        raise DataError(f"{where}: every sample tokenizes to fewer than two tokens; nothing to learn or score")
    return ids
