"""algorithm AutoRound (llm-compressor's AutoRoundModifier, auto-round's signed gradient descent) on
the tiny trained Llama through `kompression run`, beside GPTQ on the same int4 grid: the folder is
compressed-tensors, records its method and options, loads in transformers and generates, and its
perplexity is finite and near GPTQ's. The AutoRound job is docs/steps.md's, on the fixture's text and
the CPU, with 20 tuning steps per block instead of its 200 and a learning rate of 0.05 (20 steps at
auto-round's 1 / iterations would stop short), to keep the test short; benchmark (i2) runs the
default."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from llm_jobs import Run, Texts, job_yaml, kompression_runs, write_job
from transformers import AutoModelForCausalLM, AutoTokenizer

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

STEPS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "steps.md"


def _docs_job(texts: Texts) -> dict[str, Any]:
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", STEPS_PAGE.read_text(), re.S)]
    doc: dict[str, Any] = next(b for b in blocks if isinstance(b, dict) and b["metadata"]["name"] == "llama-autoround")
    spec = doc["spec"]
    spec["data"] = {
        "calibration": {"uri": f"file://{texts.calibration}", "samples": 32, "maxLength": 128},
        "evaluation": {"uri": f"file://{texts.evaluation}", "samples": 40, "maxLength": 128},
    }
    spec["steps"][0]["name"] = "quantize"
    spec["steps"][0]["llmQuantize"].update(iterations=20, learningRate=0.05)
    spec["resources"] = {"gpus": 0}
    return doc


@pytest.fixture(scope="module")
def runs(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    manifests = {
        "autoround": _docs_job(texts),
        "gptq": job_yaml(texts, "{scheme: W4A16, algorithm: GPTQ}", eval_samples=40),
    }
    folders = {name: tmp_path_factory.mktemp(name) for name in manifests}
    procs = kompression_runs(*(write_job(folders[n], m) for n, m in manifests.items()))
    return {name: Run(proc, folders[name] / "out") for name, proc in zip(manifests, procs, strict=True)}


def _ok(run: Run) -> Run:
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    return run


def test_autoround_publishes_int4_compressed_tensors_and_records_its_options(runs: dict[str, Run]) -> None:
    run = _ok(runs["autoround"])
    notes = run.notes()
    assert (notes["scheme"], notes["algorithm"], notes["weights"]) == ("W4A16", "AutoRound", "int4 group")
    assert (notes["iterations"], notes["learningRate"], notes["groupSize"], notes["symmetric"]) == (20, 0.05, 128, True)
    config = run.quantization_config
    assert config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["type"], weights["group_size"]) == (4, "int", 128)
    assert "iterations" not in _ok(runs["gptq"]).notes()


def test_autoround_loads_in_transformers_generates_and_scores_near_gptq(runs: dict[str, Run]) -> None:
    autoround, gptq = _ok(runs["autoround"]), _ok(runs["gptq"])
    folder = autoround.folder / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    prompt = tokenizer("This License", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 12
    ours, theirs = autoround.report["result"], gptq.report["result"]
    assert ours["baseline"]["perplexity"] == theirs["baseline"]["perplexity"]
    assert math.isfinite(ours["final"]["perplexity"])
    # Both round the same trained weights to int4 groups of 128: within 2% of each other.
    assert ours["final"]["perplexity"] == pytest.approx(theirs["final"]["perplexity"], rel=0.02)
    assert ours["final"]["perplexity"] / ours["baseline"]["perplexity"] - 1 < 0.02
    assert ours["gates"][0]["passed"]  # the docs job's maxPerplexityIncrease
