"""llmQuantize's backend ModelOpt: the options Model Optimizer cannot serve are refused, naming the
field and what would be accepted (option_cases.py walks backend against every scheme)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kompression.api.validation import SpecInvalid, parse_job

JOB: dict[str, Any] = {
    "apiVersion": "kompression.dev/v1alpha1",
    "kind": "CompressionJob",
    "metadata": {"name": "llama"},
    "spec": {
        "model": {
            "uri": "s3://models/llama/",
            "format": "HuggingFace",
            "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
        },
        "data": {"calibration": {"uri": "s3://data/calib.txt"}, "evaluation": {"uri": "s3://data/eval.txt"}},
        "steps": [{"name": "q", "llmQuantize": {"scheme": "W4A16", "backend": "ModelOpt"}}],
        "output": {"uri": "s3://out/llama/"},
    },
}


def _job(**options: Any) -> dict[str, Any]:
    job = copy.deepcopy(JOB)
    job["spec"]["steps"][0]["llmQuantize"].update(options)
    return job


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"algorithm": "GPTQ"}, "algorithm", "AWQ for W4A16"),
        ({"algorithm": "RTN"}, "algorithm", "remove `algorithm`"),
        ({"symmetric": False}, "symmetric", "no zero points"),
        ({"excludeLayers": ["re:.*down_proj"]}, "excludeLayers", "model.layers.0.mlp.down_proj"),
        ({"scheme": "W8A8"}, "backend", "use backend LLMCompressor"),
    ],
)
def test_modelopt_refuses_what_it_cannot_serve(options: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_job(_job(**options))
    messages = [e.message for e in info.value.errors if e.path == f"spec.steps[0].llmQuantize.{field}"]
    assert any(words in m for m in messages), info.value


def test_modelopt_takes_its_own_options_and_llmcompressor_stays_the_default() -> None:
    job = parse_job(_job(groupSize=64, symmetric=True, excludeLayers=["model.layers.0.mlp.down_proj"]))
    cfg = job.spec.steps[0].llmQuantize
    assert cfg is not None and cfg.backend_or_default == "ModelOpt"
    plain = copy.deepcopy(JOB)
    del plain["spec"]["steps"][0]["llmQuantize"]["backend"]
    cfg = parse_job(plain).spec.steps[0].llmQuantize
    assert cfg is not None and cfg.backend_or_default == "LLMCompressor"


SPARSE_MODELOPT = {"name": "s", "llmSparsify": {"method": "SparseGPT", "backend": "ModelOpt"}}


def _steps(*steps: dict[str, Any]) -> dict[str, Any]:
    job = copy.deepcopy(JOB)
    job["spec"]["steps"] = list(steps)
    return job


@pytest.mark.parametrize(
    "steps",
    [
        [SPARSE_MODELOPT],
        [SPARSE_MODELOPT, {"name": "q", "llmQuantize": {"scheme": "FP8", "backend": "ModelOpt"}}],
        [SPARSE_MODELOPT, {"name": "q", "llmQuantize": {"scheme": "FP8Dynamic", "backend": "ModelOpt"}}],
    ],
)
def test_modelopt_runs_2_of_4_alone_or_before_its_fp8(steps: list[dict[str, Any]]) -> None:
    cfg = parse_job(_steps(*steps)).spec.steps[0].llmSparsify
    assert cfg is not None and cfg.backend_or_default == "ModelOpt"


@pytest.mark.parametrize(
    ("steps", "path", "words"),
    [
        (
            [{"name": "s", "llmSparsify": {"method": "Wanda", "backend": "ModelOpt"}}],
            "spec.steps[0].llmSparsify.backend",
            "SparseGPT only",
        ),
        (
            [{"name": "s", "llmSparsify": {"method": "SparseGPT", "backend": "ModelOpt", "excludeLayers": ["re:.*"]}}],
            "spec.steps[0].llmSparsify.excludeLayers",
            "by their full name",
        ),
        (
            [SPARSE_MODELOPT, {"name": "q", "llmQuantize": {"scheme": "FP8Dynamic"}}],
            "spec.steps",
            "every step of its job uses it",
        ),
        (
            [
                {"name": "s", "llmSparsify": {"method": "SparseGPT"}},
                {"name": "q", "llmQuantize": {"scheme": "FP8", "backend": "ModelOpt"}},
            ],
            "spec.steps",
            "every step of its job uses it",
        ),
        (
            [SPARSE_MODELOPT, {"name": "q", "llmQuantize": {"scheme": "W4A16", "backend": "ModelOpt"}}],
            "spec.steps",
            "scheme FP8 or FP8Dynamic",
        ),
    ],
)
def test_modelopt_2_of_4_refuses_what_would_lose_or_mix_the_pattern(
    steps: list[dict[str, Any]], path: str, words: str
) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_job(_steps(*steps))
    assert any(e.path == path and words in e.message for e in info.value.errors), info.value
