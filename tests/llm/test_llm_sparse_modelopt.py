"""2:4 for TensorRT-LLM: llmSparsify with backend ModelOpt (Model Optimizer's SparseGPT) alone, and
followed by llmQuantize FP8 with backend ModelOpt, through `kompression run` on the tiny Llama. The
pattern is measured on the published weights as stored (FP8 bytes read as floats), and the
checkpoint check refuses a folder whose weights lost it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from llm_jobs import Run, Texts, job_yaml, kompression_runs, write_job

pytest.importorskip("modelopt", reason="the ModelOpt backend runs in .venv-llm: `make test-llm`")

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kompression.api.v1alpha1 import LLMQuantizeStep, LLMSparsifyStep
from kompression.worker.errors import StepInvalid
from kompression.worker.llm import modelopt_backend, sparsity

SPARSE = {"name": "sparse24", "llmSparsify": {"method": "SparseGPT", "backend": "ModelOpt"}}
FP8 = {"name": "fp8", "llmQuantize": {"scheme": "FP8", "backend": "ModelOpt"}}


def _job(texts: Texts, steps: list[dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(job_yaml(texts, "{scheme: FP8}", eval_samples=16))
    doc["spec"]["steps"] = steps
    doc["spec"]["data"]["calibration"].update(samples=16, maxLength=96)
    doc["spec"]["acceptance"] = {"maxPerplexityIncrease": 5}
    return doc


@pytest.fixture(scope="module")
def runs(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    cases = {"sparse": [SPARSE], "sparse-fp8": [SPARSE, FP8]}
    folders = {name: tmp_path_factory.mktemp(name) for name in cases}
    procs = kompression_runs(*(write_job(folders[n], _job(texts, steps)) for n, steps in cases.items()))
    return {n: Run(p, folders[n] / "out") for n, p in zip(cases, procs, strict=True)}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            out |= {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle is not a mapping)
    return out


def _decoder_linears(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t for k, t in tensors.items() if ".layers." in k and k.endswith("proj.weight")}


def test_both_publish_and_report_the_pattern_measured_on_the_published_weights(runs: dict[str, Run]) -> None:
    for name, run in runs.items():
        assert run.proc.returncode == 0, (name, run.proc.stderr[-3000:])
    sparse = runs["sparse"].notes("sparse24")
    assert sparse["backend"] == "modelopt"
    assert sparse["measuredSparsity"]["storedAs"] == "dense"
    assert sparse["measuredSparsity"]["conformingGroupFraction"] == 1.0
    assert sparse["measuredSparsity"]["layers"] == 21  # 3 layers x 7 Linears; lm_head kept dense
    fp8 = runs["sparse-fp8"].notes("fp8")
    assert fp8["measuredSparsity"]["storedAs"] == "ModelOpt FP8"
    assert fp8["measuredSparsity"]["layers"] == 21
    assert fp8["measuredSparsity"]["layersConforming"] == 21


def test_every_published_fp8_weight_keeps_two_zeros_in_each_group_of_four(runs: dict[str, Run]) -> None:
    folder = runs["sparse-fp8"].folder / "model"
    assert json.loads((folder / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == "FP8"
    weights = _decoder_linears(_tensors(folder))
    assert len(weights) == 21
    for key, weight in weights.items():
        assert weight.dtype == torch.float8_e4m3fn, key
        assert bool(sparsity.conforming(weight.float(), 2, 4).all()), key
        assert (weight.float() == 0).float().mean() < 0.6, key  # pruned to 2:4, not emptied


def test_the_sparse_folder_keeps_lm_head_dense_and_the_original_dtype(runs: dict[str, Run]) -> None:
    tensors = _tensors(runs["sparse"].folder / "model")
    linears = _decoder_linears(tensors)
    assert {t.dtype for t in linears.values()} == {torch.bfloat16}
    assert all(bool(sparsity.conforming(t.float(), 2, 4).all()) for t in linears.values())
    embed = tensors["model.embed_tokens.weight"].float()  # tied to lm_head
    assert (embed == 0).float().mean() < 0.01


def test_the_checkpoint_check_refuses_weights_that_lost_the_pattern(runs: dict[str, Run], tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(runs["sparse-fp8"].folder / "model", model)
    cfg = LLMQuantizeStep(scheme="FP8", backend="ModelOpt")
    shapes = {"model.layers.0.mlp.down_proj": (256, 512)}
    sparse = LLMSparsifyStep(method="SparseGPT", backend="ModelOpt")
    modelopt_backend.check_checkpoint(model, cfg, shapes, sparse=sparse)
    tensors = _tensors(model)
    key = "model.layers.0.mlp.down_proj.weight"
    tensors[key] = torch.ones_like(tensors[key].float()).to(torch.float8_e4m3fn)
    save_file(tensors, model / "model.safetensors")
    with pytest.raises(StepInvalid, match=r"down_proj\.weight keeps 2:4 in only 0\.0% of its groups of 4"):
        modelopt_backend.check_checkpoint(model, cfg, shapes, sparse=sparse)
    # Kept dense on purpose by the sparsify step: not checked.
    modelopt_backend.check_checkpoint(
        model,
        cfg,
        shapes,
        sparse=LLMSparsifyStep(method="SparseGPT", backend="ModelOpt", excludeLayers=["model.layers.0.mlp.down_proj"]),
    )
