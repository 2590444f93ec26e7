"""llmQuantize with backend ModelOpt through `kompression run` on the tiny-llama fixture: NVIDIA
Model Optimizer's INT4 AWQ (W4A16) and FP8 per-channel (FP8Dynamic) publish unified HF checkpoints
(hf_quant_config.json) that TensorRT-LLM reads. No runtime on a CPU loads those checkpoints, so the
published tensors are decoded here the way the ModelOpt loaders do (an FP8 weight times its scale)
and compared with the original weights, and the checkpoint check is shown to refuse a folder that
lacks a scale."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from llm_jobs import FIXTURE, Run, Texts, job_yaml, kompression_run, kompression_runs, write_job

from kompression.api.constants import ExitCode

pytest.importorskip("modelopt", reason="the ModelOpt backend runs in .venv-llm: `make test-llm`")

import torch
from safetensors import safe_open

from kompression.api.v1alpha1 import LLMQuantizeStep
from kompression.worker.errors import RuntimeMissing, StepInvalid
from kompression.worker.llm import modelopt_backend


@pytest.fixture(scope="module")
def runs(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """W4A16 (ModelOpt's INT4 AWQ, gated) and FP8Dynamic (no calibration), side by side."""
    folders = tmp_path_factory.mktemp("awq"), tmp_path_factory.mktemp("fp8")
    jobs = (
        write_job(
            folders[0],
            job_yaml(
                texts,
                "{scheme: W4A16, backend: ModelOpt}",
                acceptance="acceptance: {maxPerplexityIncrease: 0.1}",
                eval_samples=16,
            ),
        ),
        write_job(folders[1], job_yaml(texts, "{scheme: FP8Dynamic, backend: ModelOpt}", eval_samples=16)),
    )
    awq, fp8 = kompression_runs(*jobs)
    return Run(awq, folders[0] / "out"), Run(fp8, folders[1] / "out")


def test_modelopt_publishes_unified_checkpoints_with_every_file_digested(runs: tuple[Run, Run]) -> None:
    for run, quant_algo in zip(runs, ("W4A16_AWQ", "FP8_PER_CHANNEL_PER_TOKEN"), strict=True):
        assert run.proc.returncode == 0, run.proc.stderr[-3000:]
        model = run.folder / "model"
        hf_quant = json.loads((model / "hf_quant_config.json").read_text())
        assert hf_quant["producer"]["name"] == "modelopt"
        assert hf_quant["quantization"]["quant_algo"] == quant_algo
        assert "lm_head" in hf_quant["quantization"]["exclude_modules"]
        embedded = json.loads((model / "config.json").read_text())["quantization_config"]
        assert (embedded["quant_method"], embedded["quant_algo"]) == ("modelopt", quant_algo)
        assert (model / "tokenizer.json").is_file()
        assert not [p for p in model.rglob("*") if p.suffix in (".pth", ".pt", ".bin")]  # no pickled state
        manifest = json.loads((run.output / "manifest.json").read_text())
        published = {a["uri"].removeprefix("file://"): a["sha256"] for a in manifest["artifacts"]}
        on_disk = {str(p) for p in run.folder.rglob("*") if p.is_file()}
        assert set(published) == on_disk
        for path, digest in published.items():
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest, path


def _notes(run: Run) -> dict[str, Any]:
    notes: dict[str, Any] = next(m for m in run.report["details"]["models"] if m["name"] == "quantize")["notes"]
    return notes


def test_the_report_records_backend_modelopt_its_version_and_the_method(runs: tuple[Run, Run]) -> None:
    awq, fp8 = (_notes(run) for run in runs)
    assert awq["backend"] == "modelopt"
    assert awq["modelopt"] == importlib.metadata.version("nvidia-modelopt")
    assert (awq["scheme"], awq["algorithm"], awq["modeloptConfig"]) == ("W4A16", "AWQ", "INT4_AWQ_CFG")
    assert awq["groupSize"] == 128
    assert awq["calibration"]["samples"] == 32
    assert (fp8["scheme"], fp8["modeloptConfig"]) == ("FP8Dynamic", "FP8_PER_CHANNEL_PER_TOKEN_CFG")
    assert fp8["calibration"] is None  # dynamic activations: no data


def test_awq_passes_its_perplexity_gate_and_shrinks_the_weights(runs: tuple[Run, Run]) -> None:
    result = runs[0].report["result"]
    baseline, final = result["baseline"], result["final"]
    increase = final["perplexity"] / baseline["perplexity"] - 1
    assert 0 < increase < 0.1  # int4 costs measurable perplexity, within the gate
    assert result["gatesPassed"] is True
    # The tied bf16 embedding stays; the decoder's Linears go from 16 to 4 bits plus scales.
    assert final["sizeBytes"] < 0.75 * baseline["sizeBytes"]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118


def test_fp8_weights_decode_as_the_loaders_read_them_to_the_original(runs: tuple[Run, Run]) -> None:
    """vLLM's and TensorRT-LLM's ModelOpt FP8 per-channel loaders compute with fp8 weight x per-row
    scale; decoded that way, every published Linear is the original weight within FP8's rounding."""
    published = _tensors(runs[1].folder / "model")
    with safe_open(FIXTURE / "model.safetensors", "pt") as f:
        original = {key: f.get_tensor(key).float() for key in f.keys()}  # noqa: SIM118
    weights = [k for k in published if k.endswith("_proj.weight")]
    assert len(weights) == 3 * 7
    for key in weights:
        decoded = published[key].float() * published[key.removesuffix("weight") + "weight_scale"].float()[:, None]
        error = (decoded - original[key]).norm() / original[key].norm()
        assert 0 < error < 0.05, key  # e4m3 keeps 3 mantissa bits: a few percent, never exact


def test_the_checkpoint_check_refuses_a_folder_a_loader_could_not_read(runs: tuple[Run, Run], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tmp_path / "model"
    shutil.copytree(runs[1].folder / "model", model)
    cfg = LLMQuantizeStep(scheme="FP8Dynamic", backend="ModelOpt")
    shapes = {"model.layers.0.mlp.down_proj": (256, 512)}
    modelopt_backend.check_checkpoint(model, cfg, shapes)
    tensors = _tensors(model)
    del tensors["model.layers.0.mlp.down_proj.weight_scale"]
    save_file(tensors, model / "model.safetensors")
    with pytest.raises(StepInvalid, match=r"model\.layers\.0\.mlp\.down_proj\.weight_scale is missing"):
        modelopt_backend.check_checkpoint(model, cfg, shapes)


def test_modelopt_nvfp4_fails_on_a_cpu_naming_the_cause(texts: Texts, tmp_path: Path) -> None:
    job = job_yaml(texts, "{scheme: NVFP4, backend: ModelOpt}").replace("gpus: 0", "gpus: 1")
    run = kompression_run(write_job(tmp_path, job))
    assert run.returncode == ExitCode.RUNTIME_MISSING
    assert "NVFP4 and MXFP4 are GPU-only formats" in run.stderr and "sees no CUDA device" in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_worker_without_model_optimizer_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modelopt.torch.quantization", None)  # an import of it raises ImportError
    with pytest.raises(RuntimeMissing, match=r"needs NVIDIA Model Optimizer \(nvidia-modelopt\)"):
        modelopt_backend.quantize(
            FIXTURE,
            Path("unused"),
            LLMQuantizeStep(scheme="FP8Dynamic", backend="ModelOpt"),
            calibration=None,
            evaluation=None,
            device="cpu",
        )
