"""llmSparsify end to end through `kompression run`, on the tiny Llama fixture: SparseGPT and Wanda
prune every decoder Linear layer to 2:4 (checked on the published folder as transformers loads it),
perplexity rises measurably but finitely, and SparseGPT followed by W4A16 round-to-nearest publishes
a compressed-tensors folder that loads, generates and is still 2:4."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from llm_jobs import Run, Texts, kompression_runs, write_job

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm-sparse24.yaml"
WANDA = [{"name": "wanda24", "llmSparsify": {"method": "Wanda", "excludeLayers": ["re:.*down_proj"]}}]


def _example(texts: Texts, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """examples/llm-sparse24.yaml as written (SparseGPT, then FP8Dynamic, and its gates), on the fixture's
    text, 16 samples of 96 tokens each, on the CPU; or the same job with other steps."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    spec["data"] = {
        "calibration": {"uri": f"file://{texts.calibration}", "samples": 16, "maxLength": 96},
        "evaluation": {"uri": f"file://{texts.evaluation}", "samples": 16, "maxLength": 96},
    }
    spec["resources"] = {"gpus": 0}
    del spec["worker"]
    if steps is not None:
        spec["steps"] = steps
        spec["acceptance"] = {"maxPerplexityIncrease": 5}
    return doc


@pytest.fixture(scope="module")
def runs(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    cases = {"example": None, "wanda": WANDA}
    folders = {name: tmp_path_factory.mktemp(name) for name in cases}
    procs = kompression_runs(*(write_job(folders[n], _example(texts, steps)) for n, steps in cases.items()))
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


def _perplexities(run: Run) -> dict[str, float]:
    """Perplexity of the original and of each step's folder, as report.json records them."""
    report = run.report
    return {"original": report["result"]["baseline"]["perplexity"]} | {
        s["name"]: s["metrics"]["perplexity"] for s in report["steps"]
    }


def test_each_run_publishes_and_reports_every_step(runs: dict[str, Run]) -> None:
    for name, run in runs.items():
        assert run.proc.returncode == 0, f"{name}: {run.proc.stderr[-3000:]}"
        assert "Traceback" not in run.proc.stderr
    example = runs["example"]
    assert [m["name"] for m in example.report["details"]["models"]] == ["original", "sparse24", "fp8"]
    assert list(_perplexities(example)) == ["original", "sparse24", "fp8"]
    markdown = (example.folder / "report.md").read_text()
    assert "sparse24" in markdown and "fp8" in markdown
    # The example's gates, as written: pruning and FP8 together within 20% perplexity, half the bytes.
    assert [g["name"] for g in example.report["result"]["gates"]] == ["maxPerplexityIncrease", "minCompressionRatio"]
    assert example.report["result"]["gatesPassed"]


def test_pruning_costs_measurable_but_finite_perplexity(runs: dict[str, Run]) -> None:
    for name, step in (("example", "sparse24"), ("wanda", "wanda24")):
        figures = _perplexities(runs[name])
        before, after = figures["original"], figures[step]
        assert math.isfinite(after) and after < 2 * before, (name, figures)
        assert after > 1.005 * before, (name, figures)


def test_sparsegpt_then_fp8_loads_generates_and_every_decoder_linear_is_2_of_4(runs: dict[str, Run]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = runs["example"]
    folder = run.folder / "model"
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"]) == ("compressed-tensors", "float-quantized")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    prompt = tokenizer("This License", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8
    weights = _linears(folder, dequantize=True)
    decoder = {n: w for n, w in weights.items() if n != "lm_head"}
    assert len(decoder) == 3 * 7  # three layers of q, k, v, o, gate, up and down projections
    assert all(_is_24(w) for w in decoder.values()), [n for n, w in decoder.items() if not _is_24(w)]
    assert not _is_24(weights["lm_head"])  # kept dense (it is tied to the embeddings)
    pruned, quantized = run.notes("sparse24"), run.notes("fp8")
    assert (pruned["method"], pruned["pattern"], pruned["sparsity"]) == ("SparseGPT", "2:4", 0.5)
    assert pruned["calibration"]["samples"] == 16
    # compressed-tensors 0.19 writes no sparse format: the pruned folder is dense, its zeros stored.
    assert pruned["measuredSparsity"]["storedAs"] == "dense"
    assert quantized["measuredSparsity"]["storedAs"] == "float-quantized"
    for measured in (pruned["measuredSparsity"], quantized["measuredSparsity"]):
        assert (measured["layers"], measured["layersConforming"], measured["conformingGroupFraction"]) == (21, 21, 1.0)
        assert measured["zeroFraction"] >= 0.5
    sizes = {s["name"]: s["metrics"]["sizeBytes"] for s in run.report["steps"]}
    assert sizes["sparse24"] == run.report["result"]["baseline"]["sizeBytes"]  # zeros take room until quantized
    assert sizes["fp8"] < 0.6 * sizes["sparse24"]


def test_wanda_publishes_a_2_of_4_model_but_for_the_excluded_layers(runs: dict[str, Run]) -> None:
    run = runs["wanda"]
    assert "quantization_config" not in json.loads((run.folder / "model" / "config.json").read_text())
    weights = _linears(run.folder / "model", dequantize=False)
    down = {n: w for n, w in weights.items() if n.endswith("down_proj")}
    rest = {n: w for n, w in weights.items() if n != "lm_head" and n not in down}
    assert len(down) == 3 and len(rest) == 18
    assert all(_is_24(w) for w in rest.values())
    assert not any(_is_24(w) for w in down.values())
    notes = run.notes("wanda24")
    assert notes["method"] == "Wanda"
    assert notes["ignored"] == ["re:.*lm_head", "re:.*down_proj"]
    assert (notes["measuredSparsity"]["layers"], notes["measuredSparsity"]["layersConforming"]) == (18, 18)


def test_quantizing_with_gptq_after_pruning_is_refused_naming_what_works(texts: Texts, tmp_path: Path) -> None:
    from kompression.api.validation import SpecInvalid, parse_job

    steps = [
        {"name": "sparse24", "llmSparsify": {"method": "SparseGPT"}},
        {"name": "w4a16", "llmQuantize": {"scheme": "W4A16"}},
    ]
    doc = yaml.safe_load(write_job(tmp_path, _example(texts, steps)).read_text())
    with pytest.raises(SpecInvalid) as info:
        parse_job(doc)
    (error,) = info.value.errors
    assert error.path == "spec.steps"
    assert "cannot use algorithm GPTQ" in error.message and "set algorithm RTN" in error.message
