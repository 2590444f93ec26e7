"""data.tasks files from random bytes and random JSON: read (in the documented shape) or refused with
a DataError, never another exception (which would be exit 1, retried)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lm_eval", reason="data.tasks needs lm-eval, part of the llm extra")
pytest.importorskip("hypothesis", reason="the property tests need hypothesis (make setup-llm installs it)")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kompression.worker.errors import DataError
from kompression.worker.llm import tasks

WHERE = "spec.data.tasks[0] (t)"


SETTINGS = settings(
    max_examples=80,
    deadline=5_000,  # ms, on a shared 2-core machine
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=10)  # lone surrogates included
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["question", "choices", "answer"]) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
ROWS = JSON | st.fixed_dictionaries({"question": JSON, "choices": st.lists(JSON, max_size=4), "answer": JSON})


def _read(path: Path, limit: int | None) -> None:
    try:
        questions = tasks.read_questions(path, WHERE, limit)
    except DataError as exc:
        assert exc.message.startswith(f"{WHERE}: "), exc.message
        return
    for q in questions:  # what is accepted has the documented shape
        assert isinstance(q["question"], str) and 2 <= len(q["choices"]) <= tasks.MAX_CHOICES
        assert 0 <= q["answer"] < len(q["choices"]) and type(q["answer"]) is int


@SETTINGS
@given(rows=st.lists(ROWS, min_size=1, max_size=4), ascii_only=st.booleans(), limit=st.none() | st.integers(1, 3))
def test_random_json_task_lines_are_read_or_refused(
    tmp_path: Path, rows: list[Any], ascii_only: bool, limit: int | None
) -> None:
    path = tmp_path / "task.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _read(path, limit)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_as_a_task_file_are_read_or_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "task.jsonl"
    path.write_bytes(data)
    _read(path, None)
