"""data.tasks: multiple-choice accuracy through lm-eval-harness on local task files, for the original
and the quantized tiny Llama, gated by maxAccuracyDrop, with no network access at all.

The task asks which of four orders of the same five words continues a passage of the license texts
the fixture model was trained on; only the true order reads as those texts do, so a model that
learnt them answers well above chance (1 in 4) while the choices give no length or word-frequency
hint."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from llm_jobs import FIXTURE, Texts, kompression_run, write_job

from hostile import AUDIT, GUARD
from kompression.api.constants import ExitCode
from kompression.api.validation import parse_job

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")
pytest.importorskip("lm_eval", reason="data.tasks needs lm-eval, part of the llm extra")

import torch
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

from kompression.api.v1alpha1 import TaskData
from kompression.worker.errors import DataError
from kompression.worker.llm import tasks
from kompression.worker.llm.tiny_llama import paragraphs

STEPS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "steps.md"
CHANCE = 0.25
QUESTIONS = 32
THIN = 12


def word_order_task(texts: list[str], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Eight words of a passage, then the next five in their order or in three shuffled orders."""
    rng = random.Random(seed)
    passages = [t.split() for t in texts if len(t.split()) >= 13]
    questions = []
    for words in rng.sample(passages, count):
        span = words[8:13]
        answer = " ".join(span)
        choices = [answer]
        while len(choices) < 4:
            shuffled = " ".join(rng.sample(span, len(span)))
            if shuffled not in choices:
                choices.append(shuffled)
        rng.shuffle(choices)
        questions.append({"question": " ".join(words[:8]), "choices": choices, "answer": choices.index(answer)})
    return questions


def _docs_job() -> str:
    """The steps page's data.tasks job, as written."""
    blocks = re.findall(r"```yaml\n(.*?)```", STEPS_PAGE.read_text(), re.S)
    return next(b for b in blocks if "tasks:" in b and "kind: CompressionJob" in b)


@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess[str]
    output: Path
    network: Path

    def folder(self, under: str = "") -> Path:
        root = self.output / under
        return root / "runs" / json.loads((root / "manifest.json").read_text())["runId"]

    def report(self, under: str = "") -> dict[str, Any]:
        return json.loads((self.folder(under) / "report.json").read_text())


def _guarded_runs(*jobs: tuple[Path, dict[str, str]]) -> list[Run]:
    """`kompression run` as the worker-llm pod runs it, under GUARD, two side by side."""

    def one(job: Path, env: dict[str, str]) -> Run:
        network = job.parent / "network.log"
        network.write_text("")
        proc = kompression_run(job, env={**env, "NETWORK_LOG": str(network)}, guard=GUARD)
        return Run(proc, job.parent / "out", network)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda j: one(*j), jobs))


def thinnest_margins(questions: list[dict[str, Any]], count: int, work: Path) -> list[dict[str, Any]]:
    """The `count` questions the original model answers right by the smallest log-likelihood margin
    over the next choice, as lm-eval scores them. The original gets all of them right, and any
    perturbation of its weights flips some: a task that quantization cannot leave unharmed."""
    (work / "pool.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    suite = tasks.prepare([TaskData(name="pool", uri=f"file://{work}/pool.jsonl")], work)
    model = AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32, local_files_only=True).eval()
    out = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(FIXTURE), batch_size=8),
        tasks=["pool"],
        task_manager=TaskManager(include_path=str(suite.folder), include_defaults=False),
        bootstrap_iters=0,
    )
    assert out is not None
    margins = {}
    for sample in out["samples"]["pool"]:
        scores = [ll for ll, _ in sample["filtered_resps"]]
        right = scores.pop(sample["target"])
        if right > max(scores):
            margins[sample["doc_id"]] = right - max(scores)
    return [questions[i] for i in sorted(margins, key=margins.__getitem__)[:count]]


def _data(folder: Path, questions: list[dict[str, Any]], texts: Texts) -> str:
    """The docs' job as written, but for where its data is: the questions and the evaluation text, put in folder."""
    (folder / "word-order.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (folder / "eval.txt").write_text(texts.evaluation.read_text())
    return _docs_job().replace("s3://data/", f"file://{folder}/")


@pytest.fixture(scope="module")
def runs(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """The docs' job, and the same job with int4 weights in groups of 256 (one scale per row: coarser),
    on the questions with the thinnest margins and a gate no accuracy loss can pass."""
    everything = paragraphs()
    train = [t for i, t in enumerate(everything) if i % 10]
    folders = tmp_path_factory.mktemp("docs"), tmp_path_factory.mktemp("coarse")
    docs = write_job(folders[0], _data(folders[0], word_order_task(train, QUESTIONS), texts))
    thin = thinnest_margins(word_order_task(train, 200, seed=1), THIN, tmp_path_factory.mktemp("margins"))
    lines = _data(folders[1], thin, texts).splitlines(keepends=True)
    coarse = write_job(
        folders[1],
        "".join(line for line in lines if "word-order-2-shot" not in line)  # few shots could gain accuracy
        .replace("{scheme: W4A16, algorithm: RTN}", "{scheme: W4A16, algorithm: RTN, groupSize: 256}")
        .replace("maxAccuracyDrop: 0.1", "maxAccuracyDrop: 0"),
    )
    # The docs' job runs with the offline switches unset: the worker sets them itself. The coarse
    # one has them as the worker-llm image does.
    online = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    offline = {**online, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first, second = _guarded_runs((docs, online), (coarse, offline))
    return first, second


def test_the_docs_job_is_valid_and_its_task_lines_have_the_documented_shape(tmp_path: Path) -> None:
    job = parse_job(yaml.safe_load(_docs_job()))
    assert job.spec.data is not None and job.spec.data.tasks
    lines = re.search(r"```jsonl\n(.*?)```", STEPS_PAGE.read_text(), re.S)
    assert lines
    (tmp_path / "doc.jsonl").write_text(lines.group(1))
    questions = tasks.read_questions(tmp_path / "doc.jsonl", "docs", None)
    assert len(questions) == 2
    # The documented answers are the licenses' own words, in order.
    gpl = " ".join((Path("/usr/share/common-licenses/GPL-3")).read_text().split())
    for q in questions:
        assert f"{q['question']} {q['choices'][q['answer']]}" in gpl


def test_the_original_scores_above_chance_and_the_quantized_model_is_scored(runs: tuple[Run, Run]) -> None:
    docs = runs[0]
    assert docs.proc.returncode == 0, docs.proc.stderr[-3000:]
    report = docs.report()
    result = report["result"]
    models = {m["name"]: m for m in report["details"]["models"]}
    before, after = models["original"]["notes"]["taskScores"], models["w4a16"]["notes"]["taskScores"]
    assert set(before) == set(after) == {"word-order", "word-order-2-shot"}
    for name, figures in before.items():
        assert figures["acc"] > CHANCE + 0.25, (name, figures)  # with 32 questions, chance rarely gets 0.5
        assert 0 <= figures["acc_norm"] <= 1
        assert 0 <= after[name]["acc"] <= 1
    # Metrics.accuracy is the mean acc over the tasks, for the original and for the published model.
    assert result["baseline"]["accuracy"] == pytest.approx(sum(f["acc"] for f in before.values()) / 2, abs=1e-6)
    assert result["final"]["accuracy"] == pytest.approx(sum(f["acc"] for f in after.values()) / 2, abs=1e-6)
    assert result["accuracyDelta"] == pytest.approx(result["final"]["accuracy"] - result["baseline"]["accuracy"])
    gate = next(g for g in result["gates"] if g["name"] == "maxAccuracyDrop")
    assert gate["passed"] and gate["limit"] == 0.1
    assert gate["measured"] == pytest.approx(-result["accuracyDelta"], abs=1e-6)
    # report.md's table shows both scores of each model.
    table = (docs.folder() / "report.md").read_text().split("## Per step")[1]
    assert re.search(r"^model .* perplexity +accuracy +p50 ms", table, re.M), table
    assert re.search(rf"^original .* {result['baseline']['accuracy']:.4f} ", table, re.M), table
    described = {t["name"]: t for t in models["w4a16"]["notes"]["tasks"]}
    assert described["word-order"]["questions"] == QUESTIONS
    assert (described["word-order"]["fewShot"], described["word-order-2-shot"]["fewShot"]) == (0, 2)
    assert len(described["word-order"]["sha256"]) == 64


def test_the_accuracy_gate_keeps_a_model_that_lost_accuracy_under_rejected(runs: tuple[Run, Run]) -> None:
    run = runs[1]
    assert run.proc.returncode == ExitCode.GATE_FAILED, run.proc.stderr[-3000:]
    assert "gate maxAccuracyDrop failed: accuracy dropped by" in run.proc.stderr
    assert not (run.output / "manifest.json").exists()
    result = run.report("rejected")["result"]
    gate = next(g for g in result["gates"] if g["name"] == "maxAccuracyDrop")
    # Not vacuous: the original answers every question (thinnest_margins), the coarse model fewer.
    assert result["baseline"]["accuracy"] == 1.0
    assert gate["measured"] > 0
    assert gate["measured"] == pytest.approx(result["baseline"]["accuracy"] - result["final"]["accuracy"], abs=1e-6)
    assert not gate["passed"]


def test_no_run_touched_the_network(runs: tuple[Run, Run], tmp_path: Path) -> None:
    for run in runs:
        assert run.proc.returncode in (0, ExitCode.GATE_FAILED), run.proc.stderr[-3000:]
        assert run.network.read_text() == "", run.network.read_text()
    # The guard does see a lookup when one is made.
    log = tmp_path / "network.log"
    probe = "import socket\ntry:\n    socket.getaddrinfo('hub.invalid', 443)\nexcept OSError:\n    pass\n"
    subprocess.run(
        [sys.executable, "-c", AUDIT + probe],
        env={**os.environ, "NETWORK_LOG": str(log)},
        check=True,
        timeout=60,
    )
    assert "hub.invalid" in log.read_text()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "not JSON"),
        ('["a list"]', "a JSON list, not an object"),
        ('{"choices": ["a", "b"], "answer": 0}', "`question` is missing or not a string"),
        ('{"question": "q", "choices": ["only one"], "answer": 0}', "`choices` must be a list of two or more"),
        ('{"question": "q", "choices": ["a", ""], "answer": 0}', "`choices` must be a list of two or more"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "`answer` must be an integer from 0 to 1"),
        ('{"question": "q", "choices": ["a", "b"], "answer": true}', "`answer` must be an integer from 0 to 1"),
    ],
)
def test_a_malformed_task_line_is_a_data_error_naming_file_line_and_shape(
    line: str, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "choices": ["a", "b"], "answer": 1}\n\n' + line + "\n")
    with pytest.raises(DataError) as info:
        tasks.read_questions(path, "spec.data.tasks[0] (bad)", None)
    message = info.value.message
    assert message.startswith(f"spec.data.tasks[0] (bad): bad.jsonl:3: {problem}")
    assert message.endswith(f"expected {tasks.SHAPE}")


def test_prepare_fails_on_the_first_bad_task_before_any_model_work(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text('{"question": "q", "choices": ["a", "b"], "answer": 1}\n')
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 1}\n{"q": 1}\n')
    specs = [TaskData(name="good", uri=f"file://{good}"), TaskData(name="bad", uri=f"file://{bad}")]
    with pytest.raises(DataError, match=r"^spec.data.tasks\[1\] \(bad\): bad.jsonl:2: `question` is missing"):
        tasks.prepare(specs, tmp_path)
    # Few-shot examples are other questions of the file: one question cannot hold a 1-shot example.
    (tmp_path / "again").mkdir()
    with pytest.raises(DataError, match=r"fewShot 1 needs at least 2 questions .* good.jsonl gives 1"):
        tasks.prepare([TaskData(name="good", uri=f"file://{good}", fewShot=1)], tmp_path / "again")
