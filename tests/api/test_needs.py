"""Each technique declares what it needs once (its config's `__needs__`); the job-level rules, `Step.needs`
and the worker image are generated from that declaration. Here: each declared predicate's CEL says what
its Python says; the declarations say what the techniques do; and a real API server takes the generated
rules (the CRD is refused when its CEL exceeds the cost budget) and applies each as `kompression validate`
does."""

from __future__ import annotations

import copy
import itertools
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from admission import DryRun

from kompression.api.rules import Rule
from kompression.api.v1alpha1 import (
    NEED_NAMES,
    TECHNIQUES,
    AllOf,
    AnyOf,
    CompressionJobSpec,
    Given,
    LLMQuantizeStep,
    Needs,
    Never,
    Predicate,
    Requires,
    TechniqueConfig,
    When,
    job_needs,
    job_rules,
)
from kompression.api.validation import SpecInvalid, parse_job

# The smallest config of each technique; the fields a predicate names are varied on top of it.
BASE: dict[str, dict[str, Any]] = {
    "prune": {"method": "L1Unstructured"},
    "lowRank": {"method": "SVD", "rankRatio": 0.5},
    "distill": {"student": {"architecture": "torchvision.models:resnet18"}},
    "quantize": {"method": "DynamicInt8"},
    "llmQuantize": {"scheme": "W4A16"},
    "llmSparsify": {"method": "Wanda"},
    "onnx": {},
    "tensorrt": {},
}
# A value for each optional object or field a `Given` names.
GIVEN: dict[str, Any] = {"fineTune": {}, "kvCache": "FP8"}
assert set(BASE) == set(TECHNIQUES)


def _declared() -> Iterator[tuple[str, str, Predicate]]:
    for kind, cls in TECHNIQUES.items():
        for need in NEED_NAMES:
            predicate = cls.__needs__.predicate(need)
            if not isinstance(predicate, Never):
                yield kind, need, predicate


DECLARED = list(_declared())


def _names(predicate: Predicate) -> list[str]:
    if isinstance(predicate, (When, Given)):
        return [predicate.name]
    if isinstance(predicate, (AnyOf, AllOf)):
        return sorted({n for p in predicate.parts for n in _names(p)})
    return []


def _strings(annotation: Any) -> list[Any]:
    """The values of the Literal inside X or X | None."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [v for arg in typing.get_args(annotation) for v in _strings(arg)]
    return []


def _candidates(cls: type[TechniqueConfig], name: str) -> list[Any]:
    info = cls.model_fields[name]
    if name in GIVEN:
        return [None, GIVEN[name]]
    return ([None] if info.default is None else []) + _strings(info.annotation)


def variants(kind: str, predicate: Predicate) -> list[TechniqueConfig]:
    """The technique's config with every combination of the values of the fields the predicate reads."""
    cls = TECHNIQUES[kind]
    names = _names(predicate)
    out = []
    for values in itertools.product(*(_candidates(cls, n) for n in names)):
        config = {**BASE[kind], **{n: v for n, v in zip(names, values, strict=True) if v is not None}}
        out.append(cls.model_validate(config))
    return out


@pytest.mark.parametrize(("kind", "need", "predicate"), DECLARED, ids=[f"{k}-{n}" for k, n, _ in DECLARED])
def test_each_predicates_cel_gives_its_python_verdict(kind: str, need: str, predicate: Predicate) -> None:
    configs = variants(kind, predicate)
    verdicts = []
    for config in configs:
        in_python = predicate.holds(config)
        in_cel = Rule(cel=predicate.cel("self"), message="").holds(config.to_wire())
        assert in_python == in_cel, (config.to_wire(), predicate.cel("self"))
        verdicts.append(in_python)
    # Every field value reached both verdicts unless the need is unconditional: the walk was not vacuous.
    assert set(verdicts) == ({True} if predicate.cel("self") == "true" else {True, False})


# What each technique needs, as the techniques' own docs say it (docs/steps.md, docs/llm.md).
NEEDS: list[tuple[str, str, Needs]] = [
    ("prune", "{method: L1Structured}", Needs("worker")),
    ("prune", "{method: L1Structured, fineTune: {}}", Needs("worker", training=True)),
    ("lowRank", "{method: SVD, energy: 0.9, fineTune: {epochs: 2}}", Needs("worker", training=True)),
    # Unset whitens by the calibration activations only when the job has data.calibration.
    ("lowRank", "{method: SVD, energy: 0.9}", Needs("worker")),
    ("lowRank", "{method: SVD, energy: 0.9, activations: Whiten}", Needs("worker", calibration=True)),
    ("lowRank", "{method: SVD, energy: 0.9, activations: Ignore}", Needs("worker")),
    ("distill", "{student: {fromStep: a}}", Needs("worker", training=True)),
    ("quantize", "{method: StaticInt8}", Needs("worker", calibration=True)),
    ("quantize", "{method: DynamicInt8}", Needs("worker")),
    ("quantize", "{method: FP8}", Needs("worker", gpu=True)),
    ("onnx", "{}", Needs("worker")),
    ("tensorrt", "{}", Needs("worker", gpu=True)),
    ("tensorrt", "{precision: INT8}", Needs("worker", calibration=True, gpu=True)),
    ("llmSparsify", "{method: SparseGPT}", Needs("worker-llm", calibration=True, tokenizer=True)),
]
# llmQuantize: whether it learns from calibration text, and why.
LLM_CALIBRATION: dict[str, bool] = {
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
    "{scheme: NVFP4}": True,
    "{scheme: MXFP4}": False,
}
# NVFP4 and MXFP4 are GPU-only formats: their kernels and their checkpoints' consumers run on NVIDIA GPUs.
NEEDS += [
    ("llmQuantize", f, Needs("worker-llm", calibration=c, tokenizer=True, gpu="NVFP4" in f or "MXFP4" in f))
    for f, c in LLM_CALIBRATION.items()
]


@pytest.mark.parametrize(("kind", "flow", "needs"), NEEDS, ids=[f"{k}{f}" for k, f, _ in NEEDS])
def test_each_technique_declares_what_it_needs(kind: str, flow: str, needs: Needs) -> None:
    assert TECHNIQUES[kind].model_validate(yaml.safe_load(flow)).needs == needs


def test_advice_for_a_need_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="the needs are calibration, training, tokenizer, gpu"):
        Requires(advice={"calibraton": "add one"})


def test_awq_defaults_to_zero_points_and_the_other_algorithms_to_symmetric_scales() -> None:
    assert LLMQuantizeStep(scheme="W4A16", algorithm="AWQ").symmetric_or_default is False
    assert LLMQuantizeStep(scheme="W4A16", algorithm="AWQ", symmetric=True).symmetric_or_default is True
    assert LLMQuantizeStep(scheme="W4A16").symmetric_or_default is True
    assert LLMQuantizeStep(scheme="W4A16", algorithm="RTN").symmetric_or_default is True


# --------------------------------------------------------------------------------------------
# jobs


def job(
    steps: list[dict[str, Any]],
    *,
    data: dict[str, Any] | None = None,
    llm: bool = False,
    huggingface: bool | None = None,
    gpus: int = 0,
) -> dict[str, Any]:
    """A job whose other rules are met as far as they can be: a transformers folder and text data for an
    LLM job (`huggingface` overrides the format), an exported graph and built-in data otherwise."""
    hf = llm if huggingface is None else huggingface
    model: dict[str, Any] = (
        {
            "uri": "s3://m/llama/",
            "format": "HuggingFace",
            "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
        }
        if hf
        else {"uri": "s3://m/net.pt2", "format": "TorchExport", "inputs": [{"name": "x", "shape": [-1, 8]}]}
    )
    spec: dict[str, Any] = {
        "model": model,
        "steps": [{"name": f"s{i}", **copy.deepcopy(s)} for i, s in enumerate(steps)],
        "output": {"uri": "s3://out/x/"},
        "resources": {"gpus": gpus},
    }
    if data:
        spec["data"] = data
    return {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "needs"},
        "spec": spec,
    }


def data_set(llm: bool) -> dict[str, Any]:
    return {"uri": "s3://d/texts.txt"} if llm else {"builtin": "Digits"}


def test_the_job_needs_what_its_steps_need_and_runs_in_their_image() -> None:
    graph = parse_job(
        job(
            [
                {"prune": {"method": "L1Structured", "fineTune": {}}},
                {"quantize": {"method": "StaticInt8"}},
                {"tensorrt": {}},
            ],
            data={"calibration": data_set(False), "training": data_set(False)},
            gpus=1,
        )
    ).spec
    assert [s.needs for s in graph.steps] == [
        Needs("worker", training=True),
        Needs("worker", calibration=True),
        Needs("worker", gpu=True),
    ]
    assert graph.needs == Needs("worker", calibration=True, training=True, gpu=True)
    assert graph.image == "worker"
    sparse_then_rtn = [{"llmSparsify": {"method": "Wanda"}}, {"llmQuantize": {"scheme": "W4A16", "algorithm": "RTN"}}]
    llm = parse_job(job(sparse_then_rtn, data={"calibration": data_set(True)}, llm=True)).spec
    assert [s.needs.calibration for s in llm.steps] == [True, False]
    assert llm.needs == Needs("worker-llm", calibration=True, tokenizer=True)
    assert llm.image == "worker-llm"


def test_whitened_low_rank_without_calibration_data_is_refused_naming_the_field() -> None:
    whiten = [{"lowRank": {"method": "SVD", "rankRatio": 0.5, "activations": "Whiten"}}]
    with pytest.raises(SpecInvalid) as refused:
        parse_job(job(whiten))
    assert [(e.path, e.message) for e in refused.value.errors] == [
        (
            "spec.data",
            "lowRank with activations Whiten needs data.calibration; add a calibration data set, or leave "
            "`activations` unset to whiten only when there is one",
        )
    ]
    assert parse_job(job(whiten, data={"calibration": data_set(False)})).spec.needs.calibration
    # Unset, it whitens when there is calibration data and asks for none.
    assert not parse_job(job([{"lowRank": {"method": "SVD", "rankRatio": 0.5}}])).spec.needs.calibration


def test_steps_of_two_images_are_refused_and_have_no_one_image() -> None:
    mixed = job([{"prune": {"method": "L1Structured"}}, {"llmQuantize": {"scheme": "FP8Dynamic"}}], llm=True)
    with pytest.raises(SpecInvalid, match="a job runs in one worker image"):
        parse_job(mixed)
    spec = CompressionJobSpec.model_validate(mixed["spec"])  # the model alone, without the rules
    with pytest.raises(ValueError, match="different worker images"):
        job_needs(s.config for s in spec.steps)


def _missing(need: str) -> dict[str, Any]:
    """Keyword arguments of `job` for a spec that lacks what `need` asks for."""
    return {"calibration": {}, "training": {}, "tokenizer": {"huggingface": False}, "gpu": {"gpus": 0}}[need]


def _present(need: str, llm: bool) -> dict[str, Any]:
    return {
        "calibration": {"data": {"calibration": data_set(llm)}},
        "training": {"data": {"training": data_set(llm)}},
        "tokenizer": {"huggingface": True},
        "gpu": {"gpus": 1},
    }[need]


def _rule_cases() -> Iterator[tuple[str, Rule, dict[str, Any], bool]]:
    """(id, generated rule, manifest, whether the rule refuses it): for each technique's need, a config that
    has it with and without what it needs, and, unless it is unconditional, one that does not have it."""
    rules = iter(job_rules(TECHNIQUES))
    for need in NEED_NAMES:
        for kind, declared_need, predicate in DECLARED:
            if declared_need != need:
                continue
            rule = next(rules)
            llm = TECHNIQUES[kind].__needs__.image == "worker-llm"
            configs = variants(kind, predicate)
            has = next(c for c in configs if predicate.holds(c))
            step = [{kind: has.to_wire()}]
            yield f"{kind}-{need}-missing", rule, job(step, llm=llm, **_missing(need)), True
            yield f"{kind}-{need}-present", rule, job(step, llm=llm, **_present(need, llm)), False
            lacks = [c for c in configs if not predicate.holds(c)]
            if lacks:
                yield (
                    f"{kind}-{need}-unneeded",
                    rule,
                    job([{kind: lacks[0].to_wire()}], llm=llm, **_missing(need)),
                    False,
                )
    image = next(rules)
    prune, rtn = {"prune": {"method": "L1Structured"}}, {"llmQuantize": {"scheme": "W4A16", "algorithm": "RTN"}}
    yield "image-mixed", image, job([prune, rtn], llm=True), True
    yield (
        "image-llm",
        image,
        job([{"llmSparsify": {"method": "Wanda"}}, rtn], llm=True, data={"calibration": data_set(True)}),
        False,
    )
    yield "image-worker", image, job([prune, {"onnx": {}}]), False
    assert next(rules, None) is None, "a generated rule has no cases here"


RULE_CASES = list(_rule_cases())
RULE_IDS = [case[0] for case in RULE_CASES]


def _cli_messages(manifest: dict[str, Any]) -> list[str]:
    try:
        parse_job(manifest)
    except SpecInvalid as exc:
        return [e.message for e in exc.errors]
    return []


@pytest.mark.parametrize(("rule", "manifest", "refused"), [c[1:] for c in RULE_CASES], ids=RULE_IDS)
def test_kompression_validate_applies_each_generated_rule(rule: Rule, manifest: dict[str, Any], refused: bool) -> None:
    assert (rule.message in _cli_messages(manifest)) is refused, _cli_messages(manifest)


def test_the_image_and_need_rules_are_generated_once_each() -> None:
    generated = job_rules(TECHNIQUES)
    assert all(r in CompressionJobSpec.__rules__ for r in generated)
    assert len({r.cel for r in generated}) == len(generated)


# --------------------------------------------------------------------------------------------
# a real API server


@pytest.mark.cluster
def test_the_api_server_takes_the_generated_rules_within_its_cel_cost_budget(kube: Any, crd: None) -> None:
    # The API server estimates each rule's cost when the CRD is created and refuses the CRD when one
    # exceeds the budget: the `crd` fixture created it, so the rules it stored were within budget.
    stored = kube.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/compressionjobs.kompression.dev"
    )
    spec_schema = stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    on_server = {r["rule"] for r in spec_schema["x-kubernetes-validations"]}
    assert {r.cel for r in job_rules(TECHNIQUES)} <= on_server


@pytest.mark.cluster
@pytest.mark.parametrize(("rule", "manifest", "refused"), [c[1:] for c in RULE_CASES], ids=RULE_IDS)
def test_the_api_server_applies_each_generated_rule(
    dry_run: DryRun, rule: Rule, manifest: dict[str, Any], refused: bool
) -> None:
    refusal = dry_run(manifest)
    if refusal is not None:
        assert refusal.status == 422, refusal.body
    messages = [] if refusal is None else [c["message"] for c in refusal.causes]
    assert any(rule.message in m for m in messages) is refused, messages
