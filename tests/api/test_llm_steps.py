"""Which lists of LLM steps a job takes ([llmQuantize], [llmSparsify], [llmSparsify, llmQuantize]), and
the llmQuantize job rules applied to llmSparsify: one table, walked through the Python twins of the
CRD's rules and (marker `cluster`) through a real API server's dry run."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
from admission import DryRun

from kompression.api.validation import SpecInvalid, parse_job

SPARSEGPT = {"llmSparsify": {"method": "SparseGPT"}}
WANDA = {"llmSparsify": {"method": "Wanda", "pattern": "2:4", "excludeLayers": ["re:.*down_proj"]}}
TEXT = {"calibration": {"uri": "s3://data/calib.txt"}, "evaluation": {"uri": "s3://data/eval.jsonl"}}


def _quantize(**fields: Any) -> dict[str, Any]:
    return {"llmQuantize": fields}


@dataclass(frozen=True)
class Case:
    id: str
    steps: list[dict[str, Any]]
    field: str | None  # None: accepted; else the path a refusal names
    says: str = ""  # what the refusal's message must contain
    data: dict[str, Any] | None = None  # spec.data, TEXT unless given
    acceptance: dict[str, Any] | None = None

    @property
    def manifest(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "model": {
                "uri": "s3://models/llama/",
                "format": "HuggingFace",
                "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
            },
            "data": copy.deepcopy(TEXT if self.data is None else self.data),
            "steps": [{"name": f"s{i}", **copy.deepcopy(s)} for i, s in enumerate(self.steps)],
            "output": {"uri": "s3://out/llama/"},
        }
        if self.acceptance is not None:
            spec["acceptance"] = self.acceptance
        return {
            "apiVersion": "kompression.dev/v1alpha1",
            "kind": "CompressionJob",
            "metadata": {"name": "llm-steps"},
            "spec": spec,
        }


LISTS = "[llmQuantize], [llmSparsify] or [llmSparsify, llmQuantize]"
CASES = [
    Case("quantize-alone", [_quantize(scheme="W4A16")], None),
    Case("sparsegpt-alone", [SPARSEGPT], None),
    Case("wanda-alone-with-options", [WANDA], None, acceptance={"maxPerplexityIncrease": 0.5}),
    Case("sparsegpt-then-rtn", [SPARSEGPT, _quantize(scheme="W4A16", algorithm="RTN")], None),
    Case("wanda-then-w8a16-rtn", [WANDA, _quantize(scheme="W8A16", algorithm="RTN", symmetric=False)], None),
    Case("sparsegpt-then-fp8", [SPARSEGPT, _quantize(scheme="FP8Dynamic")], None),
    Case("sparsegpt-then-w8a8-rtn", [SPARSEGPT, _quantize(scheme="W8A8", algorithm="RTN")], None),
    Case("quantize-twice", [_quantize(scheme="FP8Dynamic"), _quantize(scheme="FP8Dynamic")], "spec.steps", LISTS),
    Case("sparsify-twice", [SPARSEGPT, WANDA], "spec.steps", LISTS),
    Case("quantize-then-sparsify", [_quantize(scheme="FP8Dynamic"), SPARSEGPT], "spec.steps", LISTS),
    Case("sparsify-then-onnx", [SPARSEGPT, {"onnx": {}}], "spec.steps", "one worker image"),
    Case("sparsify-quantize-sparsify", [SPARSEGPT, _quantize(scheme="FP8Dynamic"), WANDA], "spec.steps", LISTS),
    Case("sparsegpt-then-gptq-by-default", [SPARSEGPT, _quantize(scheme="W4A16")], "spec.steps", "algorithm RTN"),
    Case(
        "wanda-then-w8a8-gptq",
        [WANDA, _quantize(scheme="W8A8", algorithm="GPTQ")],
        "spec.steps",
        "cannot use algorithm GPTQ",
    ),
    Case(
        "sparsify-without-calibration",
        [SPARSEGPT],
        "spec.data",
        "llmSparsify",
        data={"evaluation": {"uri": "s3://data/eval.txt"}},
    ),
    Case(
        "sparsify-with-builtin-data",
        [WANDA],
        "spec.data",
        "reads text",
        data={"calibration": {"builtin": "Digits"}},
    ),
    Case(
        "sparsify-with-padding",
        [SPARSEGPT],
        "spec.data",
        "`padding`",
        data={"calibration": {"uri": "s3://data/calib.txt", "padding": "Longest"}},
    ),
    Case(
        "sparsify-with-accuracy-gate",
        [SPARSEGPT],
        "spec.acceptance",
        "maxPerplexityIncrease",
        acceptance={"maxAccuracyDrop": 0.01},
    ),
    Case(
        "sparsify-perplexity-gate-without-evaluation",
        [SPARSEGPT],
        "spec.acceptance.maxPerplexityIncrease",
        "needs data.evaluation",
        data={"calibration": {"uri": "s3://data/calib.txt"}},
        acceptance={"maxPerplexityIncrease": 0.1},
    ),
]


def test_the_table_accepts_some_and_refuses_some() -> None:
    assert sum(c.field is None for c in CASES) >= 5
    assert sum(c.field is not None for c in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_python_verdict(case: Case) -> None:
    if case.field is None:
        parse_job(case.manifest)
        return
    with pytest.raises(SpecInvalid) as info:
        parse_job(case.manifest)
    messages = [e.message for e in info.value.errors if e.path == case.field]
    assert any(case.says in m for m in messages), info.value


@pytest.mark.cluster
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_api_server_agrees(dry_run: DryRun, case: Case) -> None:
    refusal = dry_run(case.manifest)
    if refusal is None:
        assert case.field is None, f"the API server accepted {case.id}"
    else:
        assert refusal.status == 422, refusal.body
        causes = refusal.causes
        assert case.field is not None, f"the API server refused it: {causes}"
        assert any(c.get("field") == case.field and case.says in c["message"] for c in causes), causes
