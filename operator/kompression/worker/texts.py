"""Text data files, read the same way for every model that tokenizes: a ``.txt`` file holds one
sample per line (blank lines skipped); a ``.jsonl`` file holds one JSON object per line with either
a ``text`` string or a ``messages`` conversation (``[{"role": ..., "content": ...}, ...]``) that the
model's own chat template renders, and, for labelled data, an integer ``label`` on every line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kompression.worker.errors import DataError

TEXT_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class TextSamples:
    """The samples of one file, in file order; labels only when every line has one."""

    texts: list[str]
    labels: np.ndarray | None


def read_texts(path: Path, field: str, tokenizer: Any) -> TextSamples:
    """Every sample of a .txt or .jsonl file; `messages` lines are rendered with the tokenizer's chat template."""
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{field}: {path.name} is not text data; use .txt (one sample per line) or .jsonl")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{field}: cannot read {path.name} as UTF-8 text ({exc})") from None
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise DataError(f"{field}: {path.name} holds no text sample")
    if suffix == ".txt":
        return TextSamples([line for _, line in numbered], None)
    texts: list[str] = []
    labels: list[int] = []
    for n, line in numbered:
        where = f"{field}: {path.name} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f'{where} must be a JSON object, e.g. {{"text": "..."}}')
        texts.append(_sample(row, where, tokenizer))
        label = row.get("label")
        if label is not None:
            if not isinstance(label, int) or isinstance(label, bool):
                raise DataError(f"{where}: `label` must be an integer class index, got {label!r}")
            labels.append(label)
    if labels and len(labels) != len(texts):
        raise DataError(f"{field}: {path.name}: {len(labels)} of {len(texts)} lines have a `label`; label all or none")
    return TextSamples(texts, np.asarray(labels, dtype=np.int64) if labels else None)


def _sample(row: dict[str, Any], where: str, tokenizer: Any) -> str:
    text, messages = row.get("text"), row.get("messages")
    if (text is None) == (messages is None):
        raise DataError(
            f'{where} needs exactly one of a `text` string ({{"text": "..."}}) or a `messages` conversation '
            '({"messages": [{"role": "user", "content": "..."}]})'
        )
    if text is not None:
        if not isinstance(text, str):
            raise DataError(f"{where}: `text` must be a string, got {type(text).__name__}")
        return text
    return _render_chat(messages, where, tokenizer)


def _render_chat(messages: Any, where: str, tokenizer: Any) -> str:
    if not (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise DataError(f'{where}: `messages` must be a non-empty list of {{"role": str, "content": str}} objects')
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{where}: `messages` are rendered with the model's chat template, and its tokenizer has none "
            "(tokenizer_config.json or chat_template.jinja); give the sample as `text` instead"
        )
    rendered = str(tokenizer.apply_chat_template(messages, tokenize=False))
    # Templates usually write the BOS token themselves; a tokenizer that adds its own would then
    # start the sample with two, so the template's is dropped for such tokenizers only.
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if bos and rendered.startswith(bos) and list(tokenizer("x")["input_ids"][:1]) == [bos_id]:
        rendered = rendered[len(bos) :]
    return rendered
