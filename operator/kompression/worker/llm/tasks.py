"""Task accuracy: data.tasks' multiple-choice questions scored by lm-eval-harness on local files.

Each task file is read and checked here (a bad line is a DataError naming it), rewritten as the
questions to score, and described to lm-eval by a task YAML in the work folder: the `json` builder
of datasets reads the local copy (packaged with datasets, nothing is downloaded) and a TaskManager
that indexes only that folder loads it. lm-eval's HFLM wraps the model object already loaded, with
its own tokenizer, so no hub name is ever resolved.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from kompression.api.v1alpha1 import TaskData
from kompression.worker.errors import DataError
from kompression.worker.storage import objects

SHAPE = '{"question": str, "choices": [str, ...] (two or more), "answer": int (index of the correct choice)}'
BATCH_SIZE = 8
# What a task may hold. lm-eval scores one forward pass per choice of every question, so these
# bound a task's work and memory to what a job can spend. Real benchmarks sit far below them:
# MMLU has 14,042 test questions, MMLU-Pro 10 choices, and reading-comprehension passages run to
# a few thousand characters.
MAX_QUESTIONS = 100_000
MAX_CHOICES = 32
MAX_QUESTION_CHARS = 65_536
MAX_CHOICE_CHARS = 8_192
# A line holds a question and its choices, JSON-escaped (\uXXXX spells one character in six).
MAX_LINE_CHARS = 1 << 21


@dataclass(frozen=True)
class Task:
    """One task as lm-eval reads it: the checked questions in the work folder."""

    name: str
    uri: str
    sha256: str
    questions: int
    few_shot: int


@dataclass(frozen=True)
class Suite:
    """The job's tasks and the folder of their YAML files (TaskManager's include_path)."""

    tasks: list[Task]
    folder: Path

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "uri": t.uri, "sha256": t.sha256, "questions": t.questions, "fewShot": t.few_shot}
            for t in self.tasks
        ]


@dataclass(frozen=True)
class Scores:
    """lm-eval's figures: per task `acc` (and `acc_norm`, length-normalized), and their mean."""

    per_task: dict[str, dict[str, float]]

    @property
    def mean(self) -> float:
        return round(statistics.fmean(t["acc"] for t in self.per_task.values()), 6)


def prepare(specs: list[TaskData], work: Path) -> Suite:
    """Fetch, check and describe every task; a malformed file fails here, before any model work."""
    folder = work / "lm-eval-tasks"
    folder.mkdir()
    tasks = []
    for index, spec in enumerate(specs):
        where = f"spec.data.tasks[{index}] ({spec.name})"
        path = objects.source(spec.uri, work / "downloads", DataError, where)
        questions = read_questions(path, where, spec.samples)
        digest = objects.sha256_file(path)
        if spec.fewShot >= len(questions):
            raise DataError(
                f"{where}: fewShot {spec.fewShot} needs at least {spec.fewShot + 1} questions (the examples are "
                f"other questions of the same file), and {path.name} gives {len(questions)}"
            )
        data = folder / f"{spec.name}.jsonl"
        data.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
        (folder / f"{spec.name}.yaml").write_text(yaml.safe_dump(_task_config(spec, data, work)))
        tasks.append(Task(spec.name, spec.uri, digest, len(questions), spec.fewShot))
    return Suite(tasks, folder)


def _task_config(spec: TaskData, data: Path, work: Path) -> dict[str, Any]:
    """lm-eval's multiple-choice task over one local file: the context is the question, each choice
    a continuation scored by log-likelihood, and few-shot examples come from the same questions."""
    return {
        "task": spec.name,
        "dataset_path": "json",
        # the datasets cache in the work folder: the pod's home may not be writable, and runs stay apart
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(work / "datasets-cache")},
        "test_split": "test",
        "fewshot_split": "test",
        "num_fewshot": spec.fewShot,
        "output_type": "multiple_choice",
        "doc_to_text": "question",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }


def read_questions(path: Path, where: str, limit: int | None) -> list[dict[str, Any]]:
    """The file's questions in order (blank lines skipped), at most `limit`, each checked against
    SHAPE and the size limits. The file is read a line at a time, so a huge one is refused at the
    first line or question past a limit, without reading the rest."""
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{where}: {path.name} is not a .jsonl file; each line must be {SHAPE}")
    questions: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as lines:
            number = 0
            while limit is None or len(questions) < limit:
                line = lines.readline(MAX_LINE_CHARS + 1)
                if not line:
                    break
                number += 1
                at = f"{where}: {path.name}:{number}"
                if len(line.rstrip("\r\n")) > MAX_LINE_CHARS:
                    raise DataError(
                        f"{at}: the line is longer than {MAX_LINE_CHARS} characters, the most a task line may be"
                    )
                if not line.strip():
                    continue
                if len(questions) == MAX_QUESTIONS:
                    raise DataError(
                        f"{at}: the file holds more than {MAX_QUESTIONS} questions, the most a task scores; set "
                        f"`samples` to {MAX_QUESTIONS} or fewer, or split the file into several tasks"
                    )
                questions.append(_question(line, at))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read {path.name} as UTF-8 text ({exc})") from None
    if not questions:
        raise DataError(f"{where}: {path.name} holds no question; each line must be {SHAPE}")
    return questions


def _question(line: str, at: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except RecursionError:
        raise DataError(f"{at}: its JSON is nested too deeply to read; expected {SHAPE}") from None
    except ValueError:  # malformed JSON, or an integer of more digits than Python converts
        raise DataError(f"{at}: not JSON; expected {SHAPE}") from None
    if not isinstance(record, dict):
        raise DataError(f"{at}: a JSON {type(record).__name__}, not an object; expected {SHAPE}")
    question, choices, answer = record.get("question"), record.get("choices"), record.get("answer")
    problem = None
    if not isinstance(question, str):
        problem = "`question` is missing or not a string"
    elif not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        problem = "`choices` must be a list of two or more non-empty strings"
    elif not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        problem = f"`answer` must be an integer from 0 to {len(choices) - 1} (an index into `choices`)"
    elif len(choices) > MAX_CHOICES:
        problem = f"{len(choices)} choices, more than the {MAX_CHOICES} a question may have"
    elif len(question) > MAX_QUESTION_CHARS:
        problem = f"`question` is {len(question)} characters long, more than the {MAX_QUESTION_CHARS} allowed"
    elif any(len(c) > MAX_CHOICE_CHARS for c in choices):
        longest = max(len(c) for c in choices)
        problem = f"a choice is {longest} characters long, more than the {MAX_CHOICE_CHARS} allowed"
    elif not all(_is_text(s) for s in (question, *choices)):
        problem = "a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape) is not text"
    if problem:
        raise DataError(f"{at}: {problem}; expected {SHAPE}")
    return {"question": question, "choices": choices, "answer": answer}


def _is_text(value: str) -> bool:
    """Whether a tokenizer can read it: JSON escapes can spell lone surrogates, which are no characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def score(model: Any, tokenizer: Any, suite: Suite) -> Scores:
    """Every task's accuracy for the loaded model, through lm-eval's simple_evaluate."""
    manager = TaskManager(include_path=str(suite.folder), include_defaults=False)
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH_SIZE)
    out = simple_evaluate(
        model=wrapped,
        tasks=[t.name for t in suite.tasks],
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=0,  # no standard errors: only the means are reported
    )
    assert out is not None  # None only on ranks other than 0 of a distributed lm-eval run
    results = out["results"]
    per_task = {}
    for task in suite.tasks:
        figures = results[task.name]
        per_task[task.name] = {
            metric: round(float(figures[f"{metric},none"]), 6)
            for metric in ("acc", "acc_norm")
            if f"{metric},none" in figures
        }
    return Scores(per_task)
