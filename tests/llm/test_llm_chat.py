"""Chat-formatted text through `kompression run`: `messages` lines are rendered by the model's own
chat template, and a model without one refuses them naming the line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from llm_jobs import FIXTURE, Texts, job_yaml, kompression_runs, write_job

from kompression.api.constants import ExitCode

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

TEMPLATE = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"


def test_messages_are_scored_through_the_chat_template_and_refused_without_one(texts: Texts, tmp_path: Path) -> None:
    chat_model = tmp_path / "chat-llama"
    shutil.copytree(FIXTURE, chat_model)
    config = json.loads((chat_model / "tokenizer_config.json").read_text())
    (chat_model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    paragraphs = texts.evaluation.read_text().splitlines()[:12]
    conversations = tmp_path / "eval.jsonl"
    conversations.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": "Quote the licence."}, {"role": "assistant", "content": p}]}
            )
            + "\n"
            for p in paragraphs
        )
    )
    jobs = []
    for name, model in (("with-template", chat_model), ("without", FIXTURE)):
        manifest = job_yaml(texts, "{scheme: W4A16, algorithm: RTN}", evaluation=conversations)
        jobs.append(write_job(tmp_path / name, manifest, model=model))
    with_template, without = kompression_runs(*jobs)

    assert with_template.returncode == 0, with_template.stderr[-2000:]
    manifest = json.loads((tmp_path / "with-template" / "out" / "manifest.json").read_text())
    report = json.loads((tmp_path / "with-template" / "out" / "runs" / manifest["runId"] / "report.json").read_text())
    baseline = report["result"]["baseline"]["perplexity"]
    assert math.isfinite(baseline) and baseline > 1

    assert without.returncode == ExitCode.DATA_ERROR
    assert "spec.data.evaluation: eval.jsonl line 1: `messages` are rendered with the model's chat template" in (
        without.stderr
    )
    assert "Traceback" not in without.stderr
    assert not (tmp_path / "without" / "out").exists()
