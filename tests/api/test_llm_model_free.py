"""llmQuantize's method ModelFree (llm-compressor's model_free_ptq, no model class, no data): the
combinations that need calibration text run through the model are refused, naming the field and
what would be accepted; the data-free ones are taken and need no calibration data."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kompression.api.v1alpha1 import LLM_MODEL_FREE_SCHEMES
from kompression.api.validation import SpecInvalid, parse_job

JOB: dict[str, Any] = {
    "apiVersion": "kompression.dev/v1alpha1",
    "kind": "CompressionJob",
    "metadata": {"name": "new-architecture"},
    "spec": {
        "model": {
            "uri": "s3://models/new-architecture/",
            "format": "HuggingFace",
            "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
        },
        "steps": [{"name": "q", "llmQuantize": {"scheme": "W4A16", "algorithm": "RTN", "method": "ModelFree"}}],
        "output": {"uri": "s3://out/new-architecture/"},
    },
}


def _job(*, data: bool = False, **options: Any) -> dict[str, Any]:
    job = copy.deepcopy(JOB)
    step = job["spec"]["steps"][0]["llmQuantize"]
    step.update(options)
    for name in [k for k, v in step.items() if v is None]:
        del step[name]
    if data:
        job["spec"]["data"] = {"calibration": {"uri": "s3://data/calib.txt"}}
    return job


@pytest.mark.parametrize(
    "options",
    [
        {"scheme": "W4A16", "algorithm": "RTN"},
        {"scheme": "W8A16", "algorithm": "RTN", "groupSize": 64, "symmetric": False},
        {"scheme": "FP8Dynamic", "algorithm": None},
        {"scheme": "W4A16", "algorithm": "RTN", "excludeLayers": ["re:.*down_proj"]},
    ],
)
def test_data_free_schemes_are_taken_without_calibration_data(options: dict[str, Any]) -> None:
    job = parse_job(_job(**options))
    cfg = job.spec.steps[0].llmQuantize
    assert cfg is not None and cfg.method_or_default == "ModelFree"
    assert not job.spec.needs.calibration


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        # GPTQ is the integer schemes' default: unset is refused as GPTQ is.
        ({"algorithm": None}, "method", "algorithm RTN"),
        ({"algorithm": "GPTQ"}, "method", "algorithm RTN"),
        ({"algorithm": "AWQ"}, "method", "algorithm RTN"),
        ({"algorithm": "AutoRound"}, "method", "use method Oneshot"),
        ({"scheme": "W8A8", "algorithm": None}, "method", "W4A16, W8A16 and FP8Dynamic"),
        ({"scheme": "FP8", "algorithm": None}, "method", "static activation scales"),
        ({"scheme": "NVFP4", "algorithm": None}, "method", "W4A16, W8A16 and FP8Dynamic"),
        ({"scheme": "MXFP4", "algorithm": None}, "method", "W4A16, W8A16 and FP8Dynamic"),
        ({"kvCache": "FP8"}, "kvCache", "remove kvCache or use method Oneshot"),
        ({"backend": "ModelOpt", "algorithm": None}, "backend", "compressed-tensors"),
    ],
)
def test_what_needs_calibration_is_refused_naming_the_field(options: dict[str, Any], field: str, words: str) -> None:
    # Calibration data in the job changes nothing: ModelFree never runs the model to learn from it.
    for data in (False, True):
        with pytest.raises(SpecInvalid) as info:
            parse_job(_job(data=data, **options))
        messages = [e.message for e in info.value.errors if e.path == f"spec.steps[0].llmQuantize.{field}"]
        assert any(words in m for m in messages), info.value
        assert any(f"`{field}`" in m for m in messages), info.value


def test_an_unset_method_keeps_old_manifests_meaning_oneshot() -> None:
    job = _job(method=None, algorithm="GPTQ", data=True)
    cfg = parse_job(job).spec.steps[0].llmQuantize
    assert cfg is not None and cfg.method_or_default == "Oneshot"
    assert parse_job(job).spec.needs.calibration


def test_the_schemes_it_serves_are_the_ones_the_description_names() -> None:
    parse_job(_job(method="ModelFree"))  # W4A16 with RTN, the fixture
    for scheme in LLM_MODEL_FREE_SCHEMES:
        parse_job(_job(scheme=scheme, algorithm="RTN" if scheme != "FP8Dynamic" else None))


@pytest.mark.parametrize("scheme", ["W8A8", "FP8", "NVFP4", "MXFP4"])
def test_a_scheme_it_does_not_serve_gets_one_refusal_not_a_second_about_rtn(scheme: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_job(_job(scheme=scheme, algorithm=None))
    on_method = [e for e in info.value.errors if e.path == "spec.steps[0].llmQuantize.method"]
    assert len(on_method) == 1 and "serves schemes W4A16, W8A16 and FP8Dynamic" in on_method[0].message
