"""llmSparsify end to end through `kompression run`, on the tiny Llama fixture: SparseGPT and Wanda
prune every decoder Linear layer to 2:4 (checked on the published folder as transformers loads it),
perplexity rises measurably but finitely, and SparseGPT followed by W4A16 round-to-nearest publishes
a compressed-tensors folder that loads, generates and is still 2:4."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from llm_jobs import FIXTURE, Texts, kompression_runs

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

SPARSEGPT = "- {name: sparse24, llmSparsify: {method: SparseGPT}}"
SPARSE_RTN = SPARSEGPT + "\n  - {name: w4a16, llmQuantize: {scheme: W4A16, algorithm: RTN}}"
WANDA = "- {name: wanda24, llmSparsify: {method: Wanda, pattern: '2:4', excludeLayers: ['re:.*down_proj']}}"


def _job(folder: Path, texts: Texts, steps: str) -> Path:
    """A small job: 16 calibration samples, 16 evaluation samples, 96 tokens each."""
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.yaml"
    job.write_text(f"""\
apiVersion: kompression.dev/v1alpha1
kind: CompressionJob
metadata: {{name: tiny-llama-sparse}}
spec:
  model:
    uri: file://{FIXTURE}
    format: HuggingFace
    inputs: [{{name: input_ids, shape: [-1, -1], dtype: int64}}]
  data:
    calibration: {{uri: 'file://{texts.calibration}', samples: 16, maxLength: 96}}
    evaluation: {{uri: 'file://{texts.evaluation}', samples: 16, maxLength: 96}}
  steps:
  {steps}
  acceptance: {{maxPerplexityIncrease: 5}}
  output: {{uri: 'file://{folder}/out/'}}
  resources: {{gpus: 0}}
""")
    return job


@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess[str]
    output: Path

    @property
    def folder(self) -> Path:
        manifest = json.loads((self.output / "manifest.json").read_text())
        return self.output / "runs" / manifest["runId"]

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.folder / "report.json").read_text())

    def notes(self, step: str) -> dict[str, Any]:
        return next(m for m in self.report["details"]["models"] if m["name"] == step)["notes"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def runs(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    cases = {"sparsegpt": SPARSEGPT, "sparse-rtn": SPARSE_RTN, "wanda": WANDA}
    folders = {name: tmp_path_factory.mktemp(name) for name in cases}
    procs = kompression_runs(*(_job(folders[n], texts, steps) for n, steps in cases.items()))
    return {n: Run(p, folders[n] / "out") for n, p in zip(cases, procs, strict=True)}


def _linears(folder: Path, dequantize: bool) -> dict[str, Any]:
    """The published model's Linear weights, loaded by transformers on a CPU (quantized ones dequantized)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    extra = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True, **extra)
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _is_24(weight: Any) -> bool:
    """Every group of 4 consecutive weights along the input dimension holds at least 2 zeros."""
    return bool(((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


def test_each_run_publishes_and_reports_every_step(runs: dict[str, Run]) -> None:
    for name, run in runs.items():
        assert run.proc.returncode == 0, f"{name}: {run.proc.stderr[-3000:]}"
        assert "Traceback" not in run.proc.stderr
    report = runs["sparse-rtn"].report
    assert [m["name"] for m in report["details"]["models"]] == ["original", "sparse24", "w4a16"]
    markdown = (runs["sparse-rtn"].folder / "report.md").read_text()
    assert "sparse24" in markdown and "w4a16" in markdown


def test_sparsegpt_prunes_every_decoder_linear_to_2_of_4(runs: dict[str, Run]) -> None:
    weights = _linears(runs["sparsegpt"].folder / "model", dequantize=False)
    decoder = {n: w for n, w in weights.items() if n != "lm_head"}
    assert len(decoder) == 3 * 7  # three layers of q, k, v, o, gate, up and down projections
    assert all(_is_24(w) for w in decoder.values()), [n for n, w in decoder.items() if not _is_24(w)]
    assert not _is_24(weights["lm_head"])  # kept dense (it is tied to the embeddings)
    notes = runs["sparsegpt"].notes("sparse24")
    assert (notes["method"], notes["pattern"], notes["sparsity"]) == ("SparseGPT", "2:4", 0.5)
    assert notes["calibration"]["samples"] == 16
    measured = notes["measuredSparsity"]
    assert measured["storedAs"] == "dense"  # compressed-tensors 0.19 writes no sparse format
    assert (measured["layers"], measured["layersConforming"], measured["conformingGroupFraction"]) == (21, 21, 1.0)
    assert measured["zeroFraction"] >= 0.5


def test_pruning_costs_measurable_but_finite_perplexity(runs: dict[str, Run]) -> None:
    for name in ("sparsegpt", "wanda"):
        result = runs[name].report["result"]
        before, after = result["baseline"]["perplexity"], result["final"]["perplexity"]
        assert math.isfinite(after) and after < 5 * before, (name, before, after)
        assert after > 1.01 * before, (name, before, after)
        assert result["gates"][0]["name"] == "maxPerplexityIncrease" and result["gates"][0]["passed"]


def test_wanda_prunes_all_but_the_excluded_layers(runs: dict[str, Run]) -> None:
    weights = _linears(runs["wanda"].folder / "model", dequantize=False)
    down = {n: w for n, w in weights.items() if n.endswith("down_proj")}
    rest = {n: w for n, w in weights.items() if n != "lm_head" and n not in down}
    assert len(down) == 3 and len(rest) == 18
    assert all(_is_24(w) for w in rest.values())
    assert not any(_is_24(w) for w in down.values())
    measured = runs["wanda"].notes("wanda24")["measuredSparsity"]
    assert (measured["layers"], measured["layersConforming"]) == (18, 18)


def test_sparse_then_rtn_w4a16_loads_generates_and_is_still_2_of_4(runs: dict[str, Run]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = runs["sparse-rtn"]
    folder = run.folder / "model"
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"]) == ("compressed-tensors", "pack-quantized")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    prompt = tokenizer("This License", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8
    weights = _linears(folder, dequantize=True)
    assert all(_is_24(w) for n, w in weights.items() if n != "lm_head")
    notes = run.notes("w4a16")
    assert (notes["scheme"], notes["algorithm"]) == ("W4A16", "RTN")
    assert notes["measuredSparsity"]["storedAs"] == "pack-quantized"
    assert notes["measuredSparsity"]["conformingGroupFraction"] == 1.0
    # Each step is scored on its own folder: pruning, then rounding, each cost some perplexity.
    steps = {s["name"]: s for s in run.report["steps"]}
    baseline = run.report["result"]["baseline"]
    assert baseline["perplexity"] < steps["sparse24"]["metrics"]["perplexity"] < steps["w4a16"]["metrics"]["perplexity"]
    assert steps["w4a16"]["metrics"]["sizeBytes"] < 0.4 * steps["sparse24"]["metrics"]["sizeBytes"]
