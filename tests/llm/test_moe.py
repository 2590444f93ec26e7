"""A Qwen3-MoE-class model (transformers' own classes, random weights) through `kompression run`:
every expert is calibrated and quantized, even those the calibration text never routes a token to,
the routers stay in their original precision, and the published folder loads in transformers and
generates.

The model's routers are zeroed (tiny_moe.build's `starve`), so every token goes to the same two of
the four experts; static FP8 activation scales exist only for experts that llm-compressor ran on
calibration tokens, so the other two carrying them shows that every expert was calibrated, not only
the routed ones."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from llm_jobs import FIXTURE, Run, Texts, job_yaml, kompression_runs, write_job
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

from kompression.worker.llm import tiny_moe

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm-moe.yaml"
LAYERS, EXPERTS, TOP_K = 2, 4, 2
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qwen3-moe") / "model"
    tiny_moe.build(folder, "qwen3_moe", FIXTURE, starve=True)
    return folder


def _example(texts: Texts) -> dict[str, Any]:
    """examples/llm-moe.yaml as written (W4A16 GPTQ and its gate), on the fixture's text and the CPU."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    spec["data"] = {
        "calibration": {"uri": f"file://{texts.calibration}", "samples": 32, "maxLength": 128},
        "evaluation": {"uri": f"file://{texts.evaluation}", "samples": 8, "maxLength": 128},
    }
    spec["resources"] = {"gpus": 0}
    del spec["worker"]
    return doc


@pytest.fixture(scope="module")
def runs(model: Path, texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The example's job and static FP8 (whose activation scales show which experts saw tokens)."""
    manifests = {"w4a16": _example(texts), "fp8": job_yaml(texts, "{scheme: FP8}", eval_samples=8)}
    folders = {name: tmp_path_factory.mktemp(name) for name in manifests}
    procs = kompression_runs(*(write_job(folders[n], m, model=model) for n, m in manifests.items()))
    return {name: Run(proc, folders[name] / "out") for name, proc in zip(manifests, procs, strict=True)}


def _ok(run: Run) -> Run:
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    return run


def _tensors(run: Run) -> dict[str, Any]:
    with safe_open(str(run.folder / "model" / "model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no mapping)


def test_the_calibration_text_routes_tokens_to_two_of_the_four_experts_only(model: Path, texts: Texts) -> None:
    """The premise of the FP8 check below: with the original model, no calibration token reaches
    two of the four experts."""
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    original = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, local_files_only=True).eval()
    chosen: set[int] = set()

    def record(_module: object, _inputs: object, output: tuple[torch.Tensor, ...]) -> None:
        chosen.update(int(i) for i in output[-1].flatten())  # the router's (logits, weights, indices)

    for layer in original.model.layers:
        layer.mlp.gate.register_forward_hook(record)
    with torch.no_grad():
        for line in texts.calibration.read_text().splitlines()[:32]:
            original(**tokenizer(line, return_tensors="pt", truncation=True, max_length=128))
    assert len(chosen) == TOP_K < EXPERTS


def test_every_expert_gets_static_activation_scales_even_where_no_token_was_routed(runs: dict[str, Run]) -> None:
    """Every expert saw every calibration token: the experts' gate and up projections read the same
    hidden states, so their observed scales are equal. (An expert without statistics keeps the
    uninitialised memory its scale was allocated with: llm-compressor only warns.)"""
    tensors = _tensors(_ok(runs["fp8"]))
    for layer in range(LAYERS):
        inputs = set()
        for expert in range(EXPERTS):
            for proj in PROJECTIONS:
                prefix = f"model.layers.{layer}.mlp.experts.{expert}.{proj}"
                assert tensors[f"{prefix}.weight"].dtype == torch.float8_e4m3fn, prefix
                assert tensors[f"{prefix}.weight_scale"].numel() == 1, prefix
                scale = tensors[f"{prefix}.input_scale"].float()
                # absmax / 448 (FP8 E4M3's largest value) of a random model's activations
                assert ((scale > 1e-6) & (scale < 10)).all(), (prefix, scale)
            inputs.add(float(tensors[f"model.layers.{layer}.mlp.experts.{expert}.gate_proj.input_scale"]))
            inputs.add(float(tensors[f"model.layers.{layer}.mlp.experts.{expert}.up_proj.input_scale"]))
        assert len(inputs) == 1, (layer, inputs)


def test_every_expert_is_int4_and_the_routers_keep_their_precision(runs: dict[str, Run], model: Path) -> None:
    run = _ok(runs["w4a16"])
    tensors = _tensors(run)
    with safe_open(str(model / "model.safetensors"), framework="pt") as handle:
        original_gate = handle.get_tensor("model.layers.0.mlp.gate.weight")
    for layer in range(LAYERS):
        for expert in range(EXPERTS):
            for proj in PROJECTIONS:
                prefix = f"model.layers.{layer}.mlp.experts.{expert}.{proj}"
                assert tensors[f"{prefix}.weight_packed"].dtype == torch.int32, prefix
                assert f"{prefix}.weight_scale" in tensors, prefix
        gate = f"model.layers.{layer}.mlp.gate"
        assert tensors[f"{gate}.weight"].dtype == torch.bfloat16
        assert not [k for k in tensors if k.startswith(f"{gate}.") and k != f"{gate}.weight"]
    assert torch.equal(tensors["model.layers.0.mlp.gate.weight"], original_gate)
    quantization = json.loads((run.folder / "model" / "config.json").read_text())["quantization_config"]
    assert {"model.layers.0.mlp.gate", "model.layers.1.mlp.gate"} <= set(quantization["ignore"])


def test_the_published_moe_folder_loads_in_transformers_and_generates(runs: dict[str, Run]) -> None:
    run = _ok(runs["w4a16"])
    report = run.report["result"]
    assert math.isfinite(report["baseline"]["perplexity"]) and math.isfinite(report["final"]["perplexity"])
    assert report["gates"][0]["passed"]  # the example's maxPerplexityIncrease
    folder = run.folder / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    prompt = tokenizer("This License", return_tensors="pt")
    generated = loaded.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8
