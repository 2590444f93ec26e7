"""data.tasks files as an attacker writes them: each limit refused with a DataError naming the file,
the line and the limit (random input: test_llm_task_files_random.py); and `kompression run` on a
hostile task file exits 4 with no traceback, before any model work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llm_jobs import kompression_run, write_job

from kompression.api.constants import ExitCode

pytest.importorskip("lm_eval", reason="data.tasks needs lm-eval, part of the llm extra")

from kompression.worker.errors import DataError
from kompression.worker.llm import tasks

WHERE = "spec.data.tasks[0] (t)"
GOOD = {"question": "q", "choices": ["a", "b"], "answer": 1}


def _file(tmp_path: Path, *rows: object, raw: str = "") -> Path:
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + raw, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (
            {"question": "q", "choices": [f"c{i}" for i in range(tasks.MAX_CHOICES + 1)], "answer": 0},
            f"{tasks.MAX_CHOICES + 1} choices, more than the {tasks.MAX_CHOICES} a question may have",
        ),
        (
            {"question": "q" * (tasks.MAX_QUESTION_CHARS + 1), "choices": ["a", "b"], "answer": 0},
            f"`question` is {tasks.MAX_QUESTION_CHARS + 1} characters long, more than the "
            f"{tasks.MAX_QUESTION_CHARS} allowed",
        ),
        (
            {"question": "q", "choices": ["a", "b" * (tasks.MAX_CHOICE_CHARS + 1)], "answer": 0},
            f"a choice is {tasks.MAX_CHOICE_CHARS + 1} characters long, more than the {tasks.MAX_CHOICE_CHARS} allowed",
        ),
        ({"question": "q\ud800", "choices": ["a", "b"], "answer": 0}, "a lone UTF-16 surrogate"),
        ({"question": "q", "choices": ["a", "\udc00"], "answer": 0}, "a lone UTF-16 surrogate"),
    ],
)
def test_a_question_past_a_limit_is_refused_naming_line_and_limit(tmp_path: Path, row: object, problem: str) -> None:
    path = _file(tmp_path, GOOD, row)
    with pytest.raises(DataError) as info:
        tasks.read_questions(path, WHERE, None)
    assert info.value.message.startswith(f"{WHERE}: task.jsonl:2: {problem}"), info.value.message


def test_a_line_past_the_limit_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = _file(tmp_path, GOOD, raw='{"question": "' + "q" * tasks.MAX_LINE_CHARS + '"}\n')
    with pytest.raises(DataError, match=rf"task\.jsonl:2: the line is longer than {tasks.MAX_LINE_CHARS} characters"):
        tasks.read_questions(path, WHERE, None)


def test_deeply_nested_json_and_huge_integers_are_data_errors(tmp_path: Path) -> None:
    for raw in (
        "[" * 100_000 + "]" * 100_000,
        '{"question": "q", "choices": ["a", "b"], "answer": ' + "1" * 5000 + "}",
    ):
        path = _file(tmp_path, GOOD, raw=raw + "\n")
        with pytest.raises(DataError, match=r"task\.jsonl:2: (its JSON is nested too deeply|not JSON)"):
            tasks.read_questions(path, WHERE, None)


def test_more_questions_than_a_task_scores_are_refused_unless_samples_keeps_fewer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A smaller bound, so the file stays small; the reader is the same.
    monkeypatch.setattr(tasks, "MAX_QUESTIONS", 5)
    path = _file(tmp_path, *[GOOD] * 6)
    with pytest.raises(DataError, match=r"task\.jsonl:6: the file holds more than 5 questions.*set `samples` to 5"):
        tasks.read_questions(path, WHERE, None)
    with pytest.raises(DataError, match=r"more than 5 questions"):
        tasks.read_questions(path, WHERE, 100)
    assert len(tasks.read_questions(path, WHERE, 5)) == 5
    assert len(tasks.read_questions(_file(tmp_path, *[GOOD] * 5, raw="\n\n"), WHERE, None)) == 5


def test_questions_at_every_limit_are_accepted(tmp_path: Path) -> None:
    row = {
        "question": "q" * tasks.MAX_QUESTION_CHARS,
        "choices": ["c" * tasks.MAX_CHOICE_CHARS] * tasks.MAX_CHOICES,
        "answer": tasks.MAX_CHOICES - 1,
    }
    assert tasks.read_questions(_file(tmp_path, row, GOOD), WHERE, None) == [row, GOOD]


def test_a_surrogate_pair_and_a_line_separator_inside_a_string_are_text(tmp_path: Path) -> None:
    row = {"question": "smile \U0001f600 and\u2028a separator", "choices": ["a", "b"], "answer": 0}
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    assert tasks.read_questions(path, WHERE, None) == [row, row]


# --- `kompression run` -----------------------------------------------------------------------------


def test_kompression_run_on_a_hostile_task_file_exits_4_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "task.jsonl").write_text(json.dumps(GOOD) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    job = {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "hostile-task"},
        "spec": {
            "model": {"format": "HuggingFace", "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}]},
            "data": {"tasks": [{"name": "hostile", "uri": f"file://{tmp_path}/task.jsonl"}]},
            "steps": [{"name": "w4a16", "llmQuantize": {"scheme": "W4A16", "algorithm": "RTN"}}],
            "resources": {"gpus": 0},
        },
    }
    proc = kompression_run(write_job(tmp_path, job))
    assert proc.returncode == ExitCode.DATA_ERROR, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "spec.data.tasks[0] (hostile): task.jsonl:2: its JSON is nested too deeply" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
