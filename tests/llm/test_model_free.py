"""llmQuantize method ModelFree (llm-compressor's model_free_ptq) through `kompression run`, on a
folder whose config.json names an architecture transformers does not have: the fixture Llama's
weights under KompressionUnknownForCausalLM / model_type kompression-unknown.

The published safetensors are checked tensor by tensor against a round-to-nearest computed here
from the original weights; on the fixture Llama itself (an architecture transformers has) the
model-free folder is compared with the Oneshot RTN path's and scored like any other."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from llm_jobs import FIXTURE, Run, Texts, kompression_run, kompression_runs, write_job

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

import torch
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from kompression.api.constants import ExitCode
from kompression.api.v1alpha1 import LLMQuantizeStep
from kompression.worker.errors import ModelError
from kompression.worker.formats import hf_folder
from kompression.worker.llm import model_free

UNKNOWN = {"architectures": ["KompressionUnknownForCausalLM"], "model_type": "kompression-unknown"}
# The fixture Llama's Linear layers (lm_head is tied to the embedding, so it has no tensor of its own).
LINEAR = [
    f"model.layers.{i}.{m}"
    for i in range(3)
    for m in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
]


def _manifest(step: str, *, evaluation: Path | None = None, acceptance: str = "") -> str:
    data = f"data: {{evaluation: {{uri: 'file://{evaluation}', samples: 20, maxLength: 128}}}}" if evaluation else ""
    return f"""\
apiVersion: kompression.dev/v1alpha1
kind: CompressionJob
metadata: {{name: model-free}}
spec:
  model:
    uri: file://unused
    format: HuggingFace
    inputs: [{{name: input_ids, shape: [-1, -1], dtype: int64}}]
  {data}
  steps:
  - name: quantize
    llmQuantize: {step}
  {acceptance}
  resources: {{gpus: 0}}
"""


@pytest.fixture(scope="module")
def unknown(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture Llama's folder, its config naming an architecture transformers does not have."""
    folder = tmp_path_factory.mktemp("unknown") / "model"
    shutil.copytree(FIXTURE, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **UNKNOWN}, indent=2))
    return folder


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm-model-free.yaml"


def _example() -> dict[str, Any]:
    """examples/llm-model-free.yaml as written (W4A16 RTN, ModelFree, its size gate), on the CPU."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["resources"] = {"gpus": 0}
    del doc["spec"]["worker"]
    return doc


@pytest.fixture(scope="module")
def runs(unknown: Path, texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Each job, two at a time."""
    w4 = "{scheme: W4A16, algorithm: RTN, method: ModelFree}"
    jobs = {
        "w4a16": (_example(), unknown),
        "fp8": (_manifest("{scheme: FP8Dynamic, method: ModelFree}"), unknown),
        "w8a16": (_manifest("{scheme: W8A16, algorithm: RTN, method: ModelFree, groupSize: 64}"), unknown),
        "refused": (_manifest(w4, evaluation=texts.evaluation), unknown),
        "known": (_manifest(w4, evaluation=texts.evaluation), FIXTURE),
        "oneshot": (_manifest("{scheme: W4A16, algorithm: RTN}", evaluation=texts.evaluation), FIXTURE),
    }
    paths = {
        name: write_job(tmp_path_factory.mktemp(name), manifest, model=model)
        for name, (manifest, model) in jobs.items()
    }
    procs = kompression_runs(*paths.values())
    return {name: Run(proc, paths[name].parent / "out") for name, proc in zip(paths, procs, strict=True)}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            out.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
    return out


def _notes(runs: dict[str, Run], name: str) -> dict[str, Any]:
    """report.json's notes on the job's one step (the example names it w4a16, the others quantize)."""
    return runs[name].notes("w4a16" if name == "w4a16" else "quantize")


def _ok(run: Run) -> None:
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]


def _groups(weight: torch.Tensor, group: int) -> torch.Tensor:
    rows, columns = weight.shape
    return weight.float().reshape(rows, columns // group, group)


def _check_int_groups(run: Run, bits: int, group: int) -> None:
    """Every Linear weight packed as int`bits` with one symmetric scale per `group` columns:
    scale = max|w| / ((2^bits - 1) / 2) of its group (compressed-tensors' symmetric range), and each
    integer the nearest to w / scale, clamped to the range."""
    original = _tensors(FIXTURE)
    published = _tensors(run.folder / "model")
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for module in LINEAR:
        weight = original[f"{module}.weight"]
        assert f"{module}.weight" not in published, module
        packed, scale = published[f"{module}.weight_packed"], published[f"{module}.weight_scale"]
        assert packed.dtype == torch.int32 and scale.dtype == weight.dtype, module
        assert published[f"{module}.weight_shape"].tolist() == list(weight.shape)
        rows, columns = weight.shape
        assert scale.shape == (rows, columns // group), module
        groups = _groups(weight, group)
        # The library divides in bfloat16, the weights' dtype: equal to 1% (bf16 keeps 8 bits).
        expected = groups.abs().amax(dim=2) / ((high - low) / 2)
        torch.testing.assert_close(scale.float(), expected, rtol=1e-2, atol=0)
        ints = unpack_from_int32(packed, bits, torch.Size(weight.shape)).reshape(rows, columns // group, group)
        # w / scale in the weights' dtype, as the library divides (in float32 about 0.6% of the int4
        # quotients near a half-way point round the other way), then to nearest: exactly equal.
        quotient = weight.reshape(rows, columns // group, group) / scale.unsqueeze(2)
        nearest = torch.clamp(torch.round(quotient), low, high)
        assert torch.equal(ints.to(weight.dtype), nearest), module


def test_w4a16_on_an_unknown_architecture_rounds_every_linear_weight_to_nearest(runs: dict[str, Run]) -> None:
    _ok(runs["w4a16"])
    _check_int_groups(runs["w4a16"], bits=4, group=128)


def test_w8a16_takes_its_group_size(runs: dict[str, Run]) -> None:
    _ok(runs["w8a16"])
    _check_int_groups(runs["w8a16"], bits=8, group=64)
    (group_config,) = runs["w8a16"].quantization_config["config_groups"].values()
    assert group_config["weights"]["num_bits"] == 8 and group_config["weights"]["group_size"] == 64


def test_fp8_dynamic_stores_fp8_weights_with_one_scale_per_row(runs: dict[str, Run]) -> None:
    _ok(runs["fp8"])
    original = _tensors(FIXTURE)
    published = _tensors(runs["fp8"].folder / "model")
    for module in LINEAR:
        weight, fp8 = original[f"{module}.weight"].float(), published[f"{module}.weight"]
        scale = published[f"{module}.weight_scale"]
        assert fp8.dtype == torch.float8_e4m3fn and fp8.shape == weight.shape, module
        assert scale.shape == (weight.shape[0], 1), module
        # E4M3's largest value is 448: each row's largest weight maps to it.
        torch.testing.assert_close(scale.float(), weight.abs().amax(dim=1, keepdim=True) / 448, rtol=1e-2, atol=0)
        # w / scale in the weights' dtype, as the library divides, cast to E4M3 (to nearest): equal.
        nearest = (original[f"{module}.weight"] / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
        assert torch.equal(fp8.view(torch.uint8), nearest.view(torch.uint8)), module
        # Dequantized, within E4M3's relative rounding (3 mantissa bits: half a step is 1/16).
        error = (fp8.float() * scale.float() - weight).abs()
        assert (error <= weight.abs() / 16 + scale.float() * 2**-9 + 1e-6).float().mean() > 0.999, module


def test_the_embedding_and_norms_stay_as_they_were(runs: dict[str, Run]) -> None:
    original = _tensors(FIXTURE)
    for name in ("w4a16", "fp8"):
        published = _tensors(runs[name].folder / "model")
        kept = [k for k in original if k.endswith("norm.weight") or k == "model.embed_tokens.weight"]
        assert "model.embed_tokens.weight" in kept
        for key in kept:
            assert torch.equal(published[key], original[key]), (name, key)
        notes = _notes(runs, name)
        assert notes["keptByShape"] == ["model.embed_tokens"]
        assert notes["method"] == "ModelFree"


def test_config_json_carries_the_quantization_config_and_keeps_the_architecture(
    runs: dict[str, Run], unknown: Path
) -> None:
    for name, fmt in (("w4a16", "pack-quantized"), ("fp8", "float-quantized")):
        config = json.loads((runs[name].folder / "model" / "config.json").read_text())
        assert config["architectures"] == UNKNOWN["architectures"]
        assert config["model_type"] == UNKNOWN["model_type"]
        quantization = config["quantization_config"]
        assert quantization["quant_method"] == "compressed-tensors"
        assert quantization["format"] == fmt
        assert quantization["quantization_status"] == "compressed"
        assert "lm_head" in quantization["ignore"] and "model.embed_tokens" in quantization["ignore"]
        # The tokenizer travels with the weights.
        assert (runs[name].folder / "model" / "tokenizer.json").read_bytes() == (
            unknown / "tokenizer.json"
        ).read_bytes()


def test_the_report_records_sizes_and_says_why_nothing_else_was_measured(runs: dict[str, Run]) -> None:
    report = runs["w4a16"].report
    result = report["result"]
    for row in (result["baseline"], result["final"]):
        assert row["sizeBytes"] > 0
        assert row.get("perplexity") is None and row.get("tokensPerSecond") is None and row.get("accuracy") is None
    assert result["baseline"]["sizeBytes"] == (FIXTURE / "model.safetensors").stat().st_size
    assert result["baseline"]["parameters"] == result["final"]["parameters"] > 0
    # W4A16 packs eight weights in 4 bytes; the embedding stays bf16: well over the 2x gate.
    assert result["compressionRatio"] >= 2.0
    assert [g["passed"] for g in result["gates"]] == [True]
    assert "no model class" in _notes(runs, "w4a16")["notScored"]


def test_scoring_an_unknown_architecture_is_refused_before_any_work(runs: dict[str, Run]) -> None:
    run = runs["refused"]
    assert run.proc.returncode == ExitCode.MODEL_ERROR, run.proc.stderr[-3000:]
    assert "Traceback" not in run.proc.stderr
    assert "has no model class for this folder" in run.proc.stderr
    assert "spec.data.evaluation cannot be scored" in run.proc.stderr
    assert "remove data.evaluation" in run.proc.stderr
    assert not (run.output / "runs").exists()


def test_on_a_known_architecture_model_free_matches_oneshot_rtn(runs: dict[str, Run]) -> None:
    _ok(runs["known"])
    _ok(runs["oneshot"])
    free, oneshot = _tensors(runs["known"].folder / "model"), _tensors(runs["oneshot"].folder / "model")
    assert free.keys() == oneshot.keys()
    for key in free:
        assert torch.equal(free[key], oneshot[key]), key
    # Scored like any folder: transformers loads it back and both measure the same perplexity.
    one: dict[str, Any] = runs["oneshot"].report["result"]
    two: dict[str, Any] = runs["known"].report["result"]
    assert two["final"]["perplexity"] == one["final"]["perplexity"]
    assert two["final"]["sizeBytes"] == pytest.approx(one["final"]["sizeBytes"], rel=0.01)


def test_the_folder_is_vetted_as_every_folder_is_only_its_architecture_may_be_unknown(
    unknown: Path, tmp_path: Path
) -> None:
    folder = hf_folder.vet(unknown, hf_folder.MODEL_URI, any_architecture=True)
    assert folder.architecture is None and not hf_folder.runnable(folder, AutoModelForCausalLM)
    # A job with a step that builds the model class refuses it, as before.
    with pytest.raises(ModelError, match=r"'KompressionUnknownForCausalLM', which is not a model class"):
        hf_folder.vet(unknown, hf_folder.MODEL_URI)
    hostile = tmp_path / "model"
    for config, refusal in (
        ({"architectures": ["AutoConfig"]}, "not a model class"),  # not a model, and transformers has it
        ({"architectures": ["transformers.dynamic_module_utils:get_class_from_dynamic_module"]}, "not a model class"),
        ({"auto_map": {"AutoModelForCausalLM": "modeling.Evil"}}, r"remote code \(auto_map\)"),
        ({"attn_implementation": "kernels-community/flash-attn2"}, "not one of transformers' own"),
    ):
        shutil.rmtree(hostile, ignore_errors=True)
        shutil.copytree(unknown, hostile)
        edited = {**json.loads((unknown / "config.json").read_text()), **config}
        (hostile / "config.json").write_text(json.dumps(edited))
        with pytest.raises(ModelError, match=refusal):
            hf_folder.vet(hostile, hf_folder.MODEL_URI, any_architecture=True)
    shutil.rmtree(hostile)
    shutil.copytree(unknown, hostile)
    (hostile / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="pickled weights"):
        hf_folder.vet(hostile, hf_folder.MODEL_URI, any_architecture=True)


def test_two_ranks_publish_what_one_process_does(runs: dict[str, Run], unknown: Path, tmp_path: Path) -> None:
    """resources.gpus > 1 starts torchrun: rank 0 rounds the weights alone (over every GPU it has)
    and the other ranks leave at once, instead of waiting for a calibration that never comes."""
    job = write_job(tmp_path, _manifest("{scheme: W4A16, algorithm: RTN, method: ModelFree}"), model=unknown)
    run = Run(kompression_run(job, "--nproc-per-node", "2"), tmp_path / "out")
    _ok(run)
    _ok(runs["w4a16"])
    two, one = _tensors(run.folder / "model"), _tensors(runs["w4a16"].folder / "model")
    assert two.keys() == one.keys() and all(torch.equal(two[k], one[k]) for k in one)
    assert len(list((run.output / "runs").iterdir())) == 1


def test_the_steps_page_shows_the_example_that_runs_here() -> None:
    page = (EXAMPLE.parents[1] / "docs" / "steps.md").read_text()
    section = page.split("### Model-free PTQ", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert yaml.safe_load(block) == yaml.safe_load(EXAMPLE.read_text())


def test_a_novel_moe_layout_keeps_router_embedding_head_and_scales_and_splits_fused_experts(tmp_path: Path) -> None:
    """Names no transformers class has: a fused qkv, an `ln_1` norm scale, a router (`mlp.gate`), fused
    3-D experts and an untied head. Only the matrices that are neither embedding, head nor router
    are rounded; the library splits the fused experts into one weight per expert and projection."""
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    vocabulary, hidden, inner, experts = 384, 256, 512, 4
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)

    tensors = {
        "model.embed_tokens.weight": rand(vocabulary, hidden),
        "model.layers.0.ln_1.weight": torch.ones(hidden, dtype=torch.bfloat16),
        "model.layers.0.attn.qkv.weight": rand(3 * hidden, hidden),
        "model.layers.0.mlp.gate.weight": rand(experts, hidden),
        "model.layers.0.mlp.experts.gate_up_proj": rand(experts, 2 * inner, hidden),
        "model.layers.0.mlp.experts.down_proj": rand(experts, hidden, inner),
        "lm_head.weight": rand(vocabulary, hidden),
    }
    save_file(tensors, str(source / "model.safetensors"))
    config = {"architectures": ["NovelMoeForCausalLM"], "model_type": "novel-moe", "vocab_size": vocabulary}
    (source / "config.json").write_text(json.dumps(config))
    folder = hf_folder.vet(source, hf_folder.MODEL_URI, any_architecture=True)
    step = LLMQuantizeStep(scheme="W4A16", algorithm="RTN", method="ModelFree")

    notes = model_free.quantize(folder, out, step, "cpu")

    assert notes["keptByShape"] == ["lm_head", "model.embed_tokens", "model.layers.0.ln_1"]
    published = _tensors(out)
    for kept in ("model.embed_tokens", "model.layers.0.ln_1", "model.layers.0.mlp.gate", "lm_head"):
        assert torch.equal(published[f"{kept}.weight"], tensors[f"{kept}.weight"]), kept
    assert "model.layers.0.attn.qkv.weight_packed" in published
    for expert in range(experts):
        for projection in ("gate_proj", "up_proj", "down_proj"):
            assert f"model.layers.0.mlp.experts.{expert}.{projection}.weight_packed" in published
    assert not any(k.endswith(("gate_up_proj", "experts.down_proj")) for k in published)
    ignored = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert {"lm_head", "re:.*gate$", "model.embed_tokens", "model.layers.0.ln_1"} <= set(ignored)

    # A .safetensors file below the top level is no weight file the vetting read: refused, not rounded.
    (source / "extra").mkdir()
    save_file({"x": rand(8, 8)}, str(source / "extra" / "stray.safetensors"))
    with pytest.raises(ModelError, match=r"extra/stray\.safetensors is not one of the model's weight files"):
        model_free.quantize(folder, tmp_path / "again", step, "cpu")
