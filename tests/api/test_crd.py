"""The CRD is generated from the typed model: drift fails, and the schema is structural and documented."""

from __future__ import annotations

import re
from typing import Any

from api_cases import ROOT

from kompression.api.crd import build_crd, build_sweep_crd, render_crd
from kompression.api.v1alpha1 import TECHNIQUE_FIELDS, TECHNIQUES, ApiModel, Requires, Step, TechniqueConfig

CRD_FILE = ROOT / "crds" / "compressionjobs.kompression.dev.yaml"


def test_committed_crd_matches_the_model() -> None:
    assert CRD_FILE.read_text() == render_crd(), "crds/ is stale: run `kompression crd -o " + str(CRD_FILE) + "`"


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, child in node.get("properties", {}).items():
        out += _walk(child, f"{path}.{name}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    return out


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema(), ""):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not {"$ref", "anyOf", "allOf", "oneOf", "const"} & node.keys(), path


def test_every_spec_and_status_field_is_described() -> None:
    for path, node in _walk(_schema()["properties"]["spec"], "spec") + _walk(
        _schema()["properties"]["status"], "status"
    ):
        if not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def _emitted_rules(node: Any) -> list[tuple[str, str]]:
    if isinstance(node, dict):
        found = [(r["rule"], r["message"]) for r in node.get("x-kubernetes-validations", [])]
        return found + [r for v in node.values() for r in _emitted_rules(v)]
    if isinstance(node, list):
        return [r for v in node for r in _emitted_rules(v)]
    return []


def test_every_model_rule_is_in_the_crd() -> None:
    emitted = set(_emitted_rules(build_crd())) | set(_emitted_rules(build_sweep_crd()))
    classes: list[type[ApiModel]] = [ApiModel]
    declared = set()
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        declared |= {(rule.cel, rule.message) for rule in cls.__rules__}
    assert len(declared) >= 15
    assert declared <= emitted


def test_enums_bounds_and_defaults_reach_the_schema() -> None:
    steps = _schema()["properties"]["spec"]["properties"]["steps"]
    prune = steps["items"]["properties"]["prune"]["properties"]
    assert "L1Structured" in prune["method"]["enum"]
    assert prune["sparsity"] == {
        "type": "number",
        "description": prune["sparsity"]["description"],
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "exclusiveMaximum": True,
        "default": 0.5,
    }
    assert steps["x-kubernetes-list-map-keys"] == ["name"]


def test_printer_columns() -> None:
    columns = {c["name"] for c in build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Phase", "Step", "Ratio", "AccDelta", "Age"} <= columns


# A number format on its own: FP8, INT4, BF16, NVFP4, MXFP4, W4A16 (case-insensitive here).
_PRECISION = re.compile(r"(fp|int|uint|bf|nvfp|mxfp)\d+|w\d+a\d+", re.IGNORECASE)


def test_enum_values_keep_acronyms_in_capitals() -> None:
    # Element types (model.inputs[].dtype) are spelled as numpy and torch spell them: float32, int64.
    values = {
        v
        for path, node in _walk(_schema(), "")
        if not path.endswith(".dtype")
        for v in node.get("enum", [])
        if isinstance(v, str)
    }
    assert {"FP8", "FP16", "INT8", "DynamicInt8", "BFloat16"} <= values
    for value in values:
        assert not _PRECISION.fullmatch(value) or value.isupper(), f"{value}: write precisions in capitals"
        assert not re.search(r"Onnx|Tensorrt|Cuda|Gpu", value), f"{value}: write acronyms in capitals"


def test_each_step_kind_is_one_step_field_whose_config_declares_its_needs() -> None:
    # The Step fields name each kind once; TECHNIQUE_FIELDS, its CEL rule and the worker's registry follow them.
    assert list(TECHNIQUE_FIELDS) == [name for name in Step.model_fields if name != "name"]
    for kind in TECHNIQUE_FIELDS:
        config = TECHNIQUES[kind]
        assert issubclass(config, TechniqueConfig), kind
        assert isinstance(config.__dict__.get("__needs__"), Requires), f"{kind}: its config declares no __needs__"
