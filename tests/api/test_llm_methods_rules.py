"""Which llmQuantize steps need data.calibration: the job rule's CEL (through the Python twin here,
on a real API server below) and LLMQuantizeStep.needs_calibration, which the worker acts on, must
give the same answer for every method. (Options a scheme does not use are walked in option_cases.py.)"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from admission import DryRun

from kompression.api.v1alpha1 import LLMQuantizeStep
from kompression.api.validation import SpecInvalid, parse_job

# step -> whether it learns from calibration text, and why
CALIBRATION: dict[str, bool] = {
    "{scheme: W4A16}": True,  # GPTQ, the default
    "{scheme: W4A16, algorithm: GPTQ}": True,
    "{scheme: W4A16, algorithm: AWQ}": True,  # activation statistics pick the channels to protect
    "{scheme: W8A16, algorithm: AWQ, symmetric: true}": True,
    "{scheme: W4A16, algorithm: RTN}": False,
    "{scheme: W8A16, algorithm: RTN}": False,
    "{scheme: W4A16, algorithm: RTN, kvCache: FP8}": True,  # the KV cache's static scales
    "{scheme: W8A8, algorithm: RTN}": True,  # SmoothQuant
    "{scheme: FP8Dynamic}": False,
    "{scheme: FP8Dynamic, kvCache: FP8}": True,
    "{scheme: FP8}": True,  # static per-tensor activation scales
    "{scheme: FP8, kvCache: FP8}": True,
    "{scheme: NVFP4}": True,
    "{scheme: MXFP4}": False,
}


def _step(flow: str) -> dict[str, Any]:
    return yaml.safe_load(flow)


def _manifest(step: dict[str, Any], *, calibration: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"evaluation": {"uri": "s3://data/eval.txt"}}
    if calibration:
        data["calibration"] = {"uri": "s3://data/calib.txt"}
    return {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "llm-methods"},
        "spec": {
            "model": {
                "uri": "s3://models/llama/",
                "format": "HuggingFace",
                "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
            },
            "data": data,
            "steps": [{"name": "q", "llmQuantize": copy.deepcopy(step)}],
            "output": {"uri": "s3://out/llama/"},
            "resources": {"gpus": 1},
        },
    }


CASES = [(flow, needs, with_data) for flow, needs in CALIBRATION.items() for with_data in (True, False)]


def _id(case: tuple[str, bool, bool]) -> str:
    flow, _, with_data = case
    return f"{flow}{'+calibration' if with_data else ''}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_the_rule_and_needs_calibration_agree(case: tuple[str, bool, bool]) -> None:
    flow, needs, with_data = case
    step = _step(flow)
    assert LLMQuantizeStep.model_validate(step).needs_calibration is needs
    manifest = _manifest(step, calibration=with_data)
    if with_data or not needs:
        parse_job(manifest)
        return
    with pytest.raises(SpecInvalid) as info:
        parse_job(manifest)
    messages = [e.message for e in info.value.errors if e.path == "spec.data"]
    assert any("needs data.calibration" in m for m in messages), info.value


def test_awq_defaults_to_zero_points_and_the_other_algorithms_to_symmetric_scales() -> None:
    assert LLMQuantizeStep(scheme="W4A16", algorithm="AWQ").symmetric_or_default is False
    assert LLMQuantizeStep(scheme="W4A16", algorithm="AWQ", symmetric=True).symmetric_or_default is True
    assert LLMQuantizeStep(scheme="W4A16").symmetric_or_default is True
    assert LLMQuantizeStep(scheme="W4A16", algorithm="RTN").symmetric_or_default is True


@pytest.mark.cluster
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_the_api_server_agrees(dry_run: DryRun, case: tuple[str, bool, bool]) -> None:
    flow, needs, with_data = case
    refusal = dry_run(_manifest(_step(flow), calibration=with_data))
    if refusal is None:
        assert with_data or not needs, f"the API server accepted {flow} without data.calibration"
    else:
        assert refusal.status == 422, refusal.body
        causes = refusal.causes
        assert needs and not with_data, causes
        assert any(c.get("field") == "spec.data" and "needs data.calibration" in c["message"] for c in causes), causes
