"""Every option against every method: which combinations the API takes, as one table.

For each object whose options depend on a selector (a step's method, TensorRT's precision, the
acceptance strategy, the student's source), the table lists each selector value and, per option,
sample settings with the selector values that use them. Any other combination must be refused,
naming the option. The CLI tests and the API-server test walk the same cases.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kompression.api.v1alpha1 import (
    MODELOPT_SCHEMES,
    Acceptance,
    ApiModel,
    DataSource,
    LLMQuantizeStep,
    LLMSparsifyStep,
    LowRankStep,
    PruneStep,
    QuantizeMethod,
    QuantizeStep,
    StudentRef,
    TensorRTStep,
)

Fields = dict[str, Any]


def _values(literal: Any) -> tuple[str, ...]:
    return typing.get_args(literal)


QUANTIZE = _values(QuantizeMethod)
PRUNE = _values(PruneStep.model_fields["method"].annotation)
LOW_RANK = _values(LowRankStep.model_fields["method"].annotation)
PRECISIONS = _values(TensorRTStep.model_fields["precision"].annotation)
STRATEGIES = _values(Acceptance.model_fields["strategy"].annotation)
DATA_KINDS = {
    "npz": {"uri": "s3://data/calib.npz"},
    "builtin": {"builtin": "Digits"},
    "jsonl": {"uri": "s3://data/calib.jsonl"},
    "txt": {"uri": "s3://data/calib.txt"},
}
TEXT = ("jsonl", "txt")
LLM_SCHEMES = _values(LLMQuantizeStep.model_fields["scheme"].annotation)
LLM_INT = ("W4A16", "W8A16", "W8A8")
LLM_WEIGHT_ONLY = ("W4A16", "W8A16")
LLM_MODELOPT = tuple(s for s in LLM_SCHEMES if s in MODELOPT_SCHEMES)
LLM_SPARSIFY = _values(LLMSparsifyStep.model_fields["method"].annotation)
LLM_KV_CACHE = ("W4A16", "W8A16", "W8A8", "FP8Dynamic", "FP8")
PROFILE = {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}


@dataclass(frozen=True)
class Selector:
    """One object's selector values, and for each option the settings tried with who uses them."""

    model: type[ApiModel]
    where: str  # the object's path in the spec, as errors name it
    choices: dict[str, Fields]  # selector value -> the fields that select it
    options: dict[str, list[tuple[Fields, tuple[str, ...]]]]
    # The selector's default: also tried unset, since the API server fills it in before its rules run.
    default: str | None = None


TABLE = (
    Selector(
        QuantizeStep,
        "spec.steps[0].quantize",
        {m: {"method": m} for m in QUANTIZE},
        {
            "calibrator": [({"calibrator": c}, ("StaticInt8",)) for c in ("MinMax", "Percentile", "Entropy")],
            "percentile": [
                ({"calibrator": "Percentile", "percentile": 99.9}, ("StaticInt8",)),
                ({"percentile": 99.9}, ()),
                ({"calibrator": "Entropy", "percentile": 99.9}, ()),
            ],
            "perChannel": [({"perChannel": v}, ("StaticInt8", "DynamicInt8")) for v in (True, False)],
            "excludeLayers": [
                ({"excludeLayers": ["head"]}, ("StaticInt8", "DynamicInt8", "FP8")),
                ({"excludeLayers": []}, QUANTIZE),  # an empty list sets nothing, in CEL as in Python
            ],
        },
    ),
    Selector(
        PruneStep,
        "spec.steps[0].prune",
        {m: {"method": m} for m in PRUNE},
        {
            "sparsity": [
                ({"sparsity": 0.3}, tuple(m for m in PRUNE if m != "SemiStructured24")),
                ({"sparsity": 0.5}, PRUNE),
            ],
            "ignoreLayers": [({"ignoreLayers": ["features.0"]}, PRUNE)],
            "fineTune": [({"fineTune": {"epochs": 1}}, PRUNE)],
        },
    ),
    Selector(
        LowRankStep,
        "spec.steps[0].lowRank",
        {m: {"method": m} for m in LOW_RANK},
        {
            # Every method needs exactly one rank choice, so each variant names one.
            "rankRatio": [({"rankRatio": 0.5}, LOW_RANK)],
            "energy": [({"energy": 0.9}, LOW_RANK)],
            "includeLayers": [({"energy": 0.9, "includeLayers": ["features.*"]}, LOW_RANK)],
            "excludeLayers": [({"energy": 0.9, "excludeLayers": ["head"]}, LOW_RANK)],
            "fineTune": [({"energy": 0.9, "fineTune": {"epochs": 1}}, LOW_RANK)],
            "activations": [({"energy": 0.9, "activations": a}, ("SVD",)) for a in ("Whiten", "Ignore")],
        },
    ),
    Selector(
        LLMQuantizeStep,
        "spec.steps[0].llmQuantize",
        {m: {"scheme": m} for m in LLM_SCHEMES},
        {
            "algorithm": [
                *(({"algorithm": a}, LLM_INT) for a in ("GPTQ", "RTN")),
                ({"algorithm": "AWQ"}, LLM_WEIGHT_ONLY),
                ({"algorithm": "AutoRound"}, LLM_WEIGHT_ONLY),
            ],
            # AutoRound's options go with its algorithm, which only the weight-only schemes take.
            "iterations": [({"algorithm": "AutoRound", "iterations": 50}, LLM_WEIGHT_ONLY), ({"iterations": 50}, ())],
            "learningRate": [
                ({"algorithm": "AutoRound", "learningRate": 0.01}, LLM_WEIGHT_ONLY),
                ({"algorithm": "GPTQ", "learningRate": 0.01}, ()),
            ],
            "groupSize": [({"groupSize": 64}, LLM_WEIGHT_ONLY)],
            "symmetric": [({"symmetric": v}, LLM_WEIGHT_ONLY) for v in (True, False)],
            "smoothingStrength": [({"smoothingStrength": 0.5}, ("W8A8",))],
            "kvCache": [({"kvCache": "FP8"}, LLM_KV_CACHE)],
            "excludeLayers": [({"excludeLayers": ["re:.*down_proj"]}, LLM_SCHEMES)],
            "backend": [({"backend": "LLMCompressor"}, LLM_SCHEMES), ({"backend": "ModelOpt"}, LLM_MODELOPT)],
            # ModelFree alone serves FP8Dynamic; the weight-only ints need algorithm RTN with it
            # (tests/api/test_llm_model_free.py walks those).
            "method": [({"method": "Oneshot"}, LLM_SCHEMES), ({"method": "ModelFree"}, ("FP8Dynamic",))],
        },
    ),
    Selector(
        LLMSparsifyStep,
        "spec.steps[0].llmSparsify",
        {m: {"method": m} for m in LLM_SPARSIFY},
        {
            "pattern": [({"pattern": "2:4"}, LLM_SPARSIFY)],
            "excludeLayers": [({"excludeLayers": ["re:.*down_proj", "model.layers.0.mlp.up_proj"]}, LLM_SPARSIFY)],
            "backend": [({"backend": "LLMCompressor"}, LLM_SPARSIFY), ({"backend": "ModelOpt"}, ("SparseGPT",))],
        },
    ),
    Selector(
        TensorRTStep,
        "spec.steps[0].tensorrt",
        {p: {"precision": p} for p in PRECISIONS},
        {
            "profiles": [({"profiles": [PROFILE]}, PRECISIONS)],
            "workspaceMiB": [({"workspaceMiB": 1024}, PRECISIONS)],
            "timingCache": [({"timingCache": False}, PRECISIONS)],
        },
        default="FP16",
    ),
    Selector(
        Acceptance,
        "spec.acceptance",
        {s: {"strategy": s} for s in STRATEGIES},
        {
            "maxAccuracyDrop": [({"maxAccuracyDrop": 0.01}, STRATEGIES)],
            "minCompressionRatio": [({"minCompressionRatio": 2.0}, STRATEGIES)],
            "minSpeedup": [({"minSpeedup": 1.5}, STRATEGIES)],
            # The LLM gate: this table's job has a DynamicInt8 step, so it is refused whatever the strategy
            # (tests/api/test_validation.py accepts it on an llmQuantize job).
            "maxPerplexityIncrease": [({"maxPerplexityIncrease": 0.05}, ())],
            "maxTrials": [({"maxTrials": 4}, ("Auto",))],
            "timeoutSeconds": [({"timeoutSeconds": 600}, ("Auto",))],
        },
        default="Fixed",
    ),
    Selector(
        DataSource,
        "spec.data.calibration",
        DATA_KINDS,
        {
            "samples": [({"samples": 64}, tuple(DATA_KINDS))],
            "batchSize": [({"batchSize": 8}, tuple(DATA_KINDS))],
            "maxLength": [({"maxLength": 64}, TEXT)],
            "padding": [({"padding": p}, TEXT) for p in ("MaxLength", "Longest")],
            "truncation": [({"truncation": v}, TEXT) for v in (True, False)],
        },
    ),
    Selector(
        StudentRef,
        "spec.steps[1].distill.student",
        {"fromStep": {"fromStep": "prune"}, "architecture": {"architecture": "torchvision.models:resnet18"}},
        {"architectureArguments": [({"architectureArguments": {"num_classes": 10}}, ("architecture",))]},
    ),
)


def _manifest(where: str, fields: Fields) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "options"},
        "spec": {
            "model": {
                "uri": "s3://models/m.pt2",
                "format": "TorchExport",
                "inputs": [{"name": "x", "shape": [-1, 3, 32, 32]}],
            },
            "data": {
                "calibration": {"uri": "s3://data/calib.npz"},
                "evaluation": {"uri": "s3://data/val.npz"},
                "training": {"uri": "s3://data/train.npz"},
            },
            "steps": [{"name": "q", "quantize": {"method": "DynamicInt8"}}],
            "output": {"uri": "s3://out/m/"},
            "resources": {"gpus": 1},
        },
    }
    spec = doc["spec"]
    if where == "spec.acceptance":
        spec["acceptance"] = fields
    elif where == "spec.data.calibration":
        # Text data is tokenized with the model folder's tokenizer: a HuggingFace model.
        spec["model"].update(uri="s3://models/bert/", format="HuggingFace")
        spec["data"]["calibration"] = fields
    elif where == "spec.steps[1].distill.student":
        spec["steps"] = [
            {"name": "prune", "prune": {"method": "L1Structured"}},
            {"name": "d", "distill": {"student": fields}},
        ]
    elif where in ("spec.steps[0].llmQuantize", "spec.steps[0].llmSparsify"):
        spec["model"] = {
            "uri": "s3://models/llama/",
            "format": "HuggingFace",
            "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
        }
        spec["data"] = {"calibration": {"uri": "s3://data/calib.txt"}, "evaluation": {"uri": "s3://data/eval.txt"}}
        spec["steps"] = [{"name": "s", where.rsplit(".", 1)[-1]: fields}]
    else:
        kind = where.rsplit(".", 1)[-1]
        spec["steps"] = [{"name": "s", kind: fields}]
    return doc


@dataclass(frozen=True)
class Case:
    id: str
    manifest: dict[str, Any]
    option: str
    field: str  # the option's path, which a refusal must name
    accepted: bool
    users: tuple[str, ...]  # what a refusal's message must name: the selector values that use the option


def cases() -> Iterator[Case]:
    for sel in TABLE:
        choices = dict(sel.choices)
        if sel.default is not None:
            choices[f"{sel.default}(unset)"] = {}
        for choice, selecting in choices.items():
            for option, variants in sel.options.items():
                named = sorted({u for _, users in variants for u in users})
                for i, (fields, users) in enumerate(variants):
                    yield Case(
                        id=f"{sel.model.__name__}.{option}#{i}@{choice}",
                        manifest=_manifest(sel.where, copy.deepcopy({**selecting, **fields})),
                        option=option,
                        field=f"{sel.where}.{option}",
                        accepted=choice.removesuffix("(unset)") in users,
                        users=users or tuple(named),
                    )


CASES = list(cases())


def refusal_names_option_and_users(case: Case, message: str) -> bool:
    """A refusal names the option and what uses it."""
    return f"`{case.option}`" in message and all(u in message for u in case.users)
