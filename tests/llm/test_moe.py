"""Qwen3-MoE- and Mixtral-class models (transformers' own classes, random weights) through
`kompression run`: every expert is calibrated and quantized, even those the calibration text never
routes a token to, the routers stay in their original precision, and the published folder loads in
transformers and generates. Each model's experts are published under its own checkpoint names (a
Mixtral's `block_sparse_moe.experts.N.w1/w3/w2`), which transformers fuses back as it loads.

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
# Per model_type, the MoE block's name in the checkpoint and its experts' gate, up and down
# projections, as the model's original checkpoints name them.
LAYOUTS = {
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def model(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp(kind) / "model"
    tiny_moe.build(folder, kind, FIXTURE, starve=True)
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


def _expert(kind: str, layer: int, expert: int, projection: int) -> str:
    """The checkpoint name of one expert projection (0: gate, 1: up, 2: down)."""
    block, names = LAYOUTS[kind]
    return f"model.layers.{layer}.{block}.experts.{expert}.{names[projection]}"


def test_every_expert_gets_static_activation_scales_even_where_no_token_was_routed(
    kind: str, runs: dict[str, Run]
) -> None:
    """Every expert saw every calibration token: the experts' gate and up projections read the same
    hidden states, so their observed scales are equal. (An expert without statistics keeps the
    uninitialised memory its scale was allocated with: llm-compressor only warns.)"""
    tensors = _tensors(_ok(runs["fp8"]))
    for layer in range(LAYERS):
        inputs = set()
        for expert in range(EXPERTS):
            for projection in range(3):
                prefix = _expert(kind, layer, expert, projection)
                assert tensors[f"{prefix}.weight"].dtype == torch.float8_e4m3fn, prefix
                assert tensors[f"{prefix}.weight_scale"].numel() == 1, prefix
                scale = tensors[f"{prefix}.input_scale"].float()
                # absmax / 448 (FP8 E4M3's largest value) of a random model's activations
                assert ((scale > 1e-6) & (scale < 10)).all(), (prefix, scale)
            inputs.add(float(tensors[f"{_expert(kind, layer, expert, 0)}.input_scale"]))
            inputs.add(float(tensors[f"{_expert(kind, layer, expert, 1)}.input_scale"]))
        assert len(inputs) == 1, (layer, inputs)


def test_every_expert_is_int4_and_the_routers_keep_their_precision(
    kind: str, runs: dict[str, Run], model: Path
) -> None:
    """Every published tensor is under the model's own checkpoint names: the folder holds nothing
    but the experts' int4 weights, the routers as they were, and the rest of the model."""
    run = _ok(runs["w4a16"])
    tensors = _tensors(run)
    block = LAYOUTS[kind][0]
    with safe_open(str(model / "model.safetensors"), framework="pt") as handle:
        original = {key: handle.get_tensor(key) for key in handle.keys() if ".experts." not in key}  # noqa: SIM118
    experts = {k for k in tensors if ".experts." in k}
    expected = set()
    for layer in range(LAYERS):
        for expert in range(EXPERTS):
            for projection in range(3):
                prefix = _expert(kind, layer, expert, projection)
                assert tensors[f"{prefix}.weight_packed"].dtype == torch.int32, prefix
                expected |= {f"{prefix}.weight_packed", f"{prefix}.weight_scale", f"{prefix}.weight_shape"}
        gate = f"model.layers.{layer}.{block}.gate.weight"
        assert tensors[gate].dtype == torch.bfloat16
        assert torch.equal(tensors[gate], original[gate])
    assert experts == expected
    # every other tensor is the original's, or a quantized Linear's under the original's name
    assert {k.rpartition(".")[0] for k in tensors if k not in experts} == {k.rpartition(".")[0] for k in original}
    ignore = set(json.loads((run.folder / "model" / "config.json").read_text())["quantization_config"]["ignore"])
    assert {f"model.layers.{layer}.{block}.gate" for layer in range(LAYERS)} <= ignore


def test_the_example_passes_its_perplexity_gate(runs: dict[str, Run]) -> None:
    report = _ok(runs["w4a16"]).report["result"]
    assert math.isfinite(report["baseline"]["perplexity"]) and math.isfinite(report["final"]["perplexity"])
    assert report["gates"][0]["passed"]  # the example's maxPerplexityIncrease


@pytest.mark.parametrize("scheme", ["w4a16", "fp8"])
def test_the_published_moe_folder_loads_in_transformers_and_generates(scheme: str, runs: dict[str, Run]) -> None:
    """At the folder's own dtype, transformers' default: transformers 5.17 loads a tensor it renames
    from a pre-quantized folder (a Mixtral's `block_sparse_moe.gate`) in the stored dtype whatever
    `dtype` asks for."""
    folder = _ok(runs[scheme]).folder / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    prompt = tokenizer("This License", return_tensors="pt")
    generated = loaded.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8


@pytest.mark.parametrize("scheme", ["w4a16", "fp8"])
def test_transformers_fuses_each_published_expert_into_its_own_place(
    scheme: str, runs: dict[str, Run], model: Path
) -> None:
    """The experts transformers builds from the published folder are the original's within the
    scheme's rounding, expert by expert and half by half: a gate projection loaded as an up
    projection (or one expert as another) would be as far from the original as the weights are large."""
    folder = _ok(runs[scheme]).folder / "model"
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    original = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, local_files_only=True)
    for mine, theirs in zip(loaded.model.layers, original.model.layers, strict=True):
        for name in ("gate_up_proj", "down_proj"):
            ours, reference = getattr(mine.mlp.experts, name).float(), getattr(theirs.mlp.experts, name)
            for expert in range(EXPERTS):
                for half in torch.stack([ours[expert], reference[expert]]).chunk(2 if name == "gate_up_proj" else 1, 1):
                    error = (half[0] - half[1]).norm() / half[1].norm()
                    assert error < 0.3, (name, expert, float(error))
