"""Generate the CustomResourceDefinition from the typed API models.

Pydantic's JSON Schema is rewritten into a structural OpenAPI v3 schema: references inlined,
optionals flattened, JSON Schema 2020 bounds turned into OpenAPI 3.0 ones, defaults that make
nested defaulting work, and each model's rules emitted as ``x-kubernetes-validations``.
"""

from __future__ import annotations

from typing import Any

import yaml

from kompression.api import constants as c
from kompression.api.v1alpha1 import ApiModel, CompressionJob

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the job."},
    {"name": "Step", "type": "string", "jsonPath": ".status.currentStep", "description": "Step running now."},
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress.percentage",
        "description": "Percent done.",
        "priority": 1,
    },
    {
        "name": "Ratio",
        "type": "number",
        "jsonPath": ".status.result.compressionRatio",
        "description": "Original size / final size.",
    },
    {
        "name": "AccDelta",
        "type": "number",
        "jsonPath": ".status.result.accuracyDelta",
        "description": "Final minus original accuracy.",
    },
    {
        "name": "Speedup",
        "type": "number",
        "jsonPath": ".status.result.speedup",
        "description": "Original / final latency.",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_COPY_KEYS = (
    "type",
    "description",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "format",
)


class SchemaError(ValueError):
    """The typed model cannot be expressed as a structural schema (a bug in the API model)."""


def _model_classes() -> dict[str, type[ApiModel]]:
    found: dict[str, type[ApiModel]] = {}
    todo: list[type[ApiModel]] = [ApiModel]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def _scalar_keywords(node: dict[str, Any]) -> dict[str, Any]:
    """Type, bounds, enum and default, with JSON Schema 2020 exclusive bounds in OpenAPI 3.0 form."""
    out = {k: node[k] for k in _COPY_KEYS if k in node}
    if "exclusiveMinimum" in node:
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if node.get("default") not in (None, []):
        out["default"] = node["default"]
    return out


class _Converter:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.classes = _model_classes()

    def convert(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            merged = {**self.defs[name], **node}
            out = self.convert(merged, where)
            cls = self.classes.get(name)
            if cls is not None and cls.__rules__:
                out["x-kubernetes-validations"] = [r.to_crd() for r in cls.__rules__]
            return out
        if "anyOf" in node:
            options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
            if len(options) != 1:
                raise SchemaError(f"{where}: unions other than Optional[X] are not structural")
            return self.convert({**options[0], **node}, where)
        if "const" in node:
            node["enum"] = [node.pop("const")]
        out = _scalar_keywords(node)
        kind = node.get("type")
        if kind == "object" and "properties" in node:
            out["properties"] = {k: self._property(v, f"{where}.{k}") for k, v in node["properties"].items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif kind == "object":
            # Free-form keyword arguments: kept as given, not pruned.
            out["x-kubernetes-preserve-unknown-fields"] = True
        elif kind == "array":
            out["items"] = self.convert(node["items"], f"{where}[]")
        elif kind is None:
            raise SchemaError(f"{where}: field has no type")
        return out

    def _property(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        out = self.convert(node, where)
        if not out.get("description"):
            raise SchemaError(f"{where}: every field needs a description (kubectl explain shows it)")
        return out


def openapi_schema() -> dict[str, Any]:
    raw = CompressionJob.model_json_schema(by_alias=True, mode="validation")
    conv = _Converter(raw.get("$defs", {}))
    spec = conv.convert({"$ref": "#/$defs/CompressionJobSpec"}, "spec")
    status = conv.convert({"$ref": "#/$defs/CompressionJobStatus"}, "status")
    # These always exist after defaulting, so their fields' defaults apply when the user leaves
    # the whole object out. Technique objects (onnx: {}, fineTune: {}) must never be defaulted:
    # their presence is meaningful.
    for name in ("resources", "runPolicy", "worker", "measurement"):
        spec["properties"][name]["default"] = {}
    # Lists keyed by a name merge cleanly under server-side apply.
    spec["properties"]["steps"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    status["properties"]["conditions"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    status["properties"]["steps"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    return {
        "type": "object",
        "description": " ".join((CompressionJob.__doc__ or "").split()),
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion: kompression.dev/v1alpha1."},
            "kind": {"type": "string", "description": "Kind: CompressionJob."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }


def build_crd() -> dict[str, Any]:
    """The CompressionJob CRD as a manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": c.CRD_NAME,
            "labels": {c.LABEL_PART_OF: "kompression"},
        },
        "spec": {
            "group": c.GROUP,
            "names": {
                "kind": c.KIND,
                "listKind": f"{c.KIND}List",
                "plural": c.PLURAL,
                "singular": c.SINGULAR,
                "shortNames": list(c.SHORT_NAMES),
                "categories": list(c.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


HEADER = "# Generated by `kompression crd` from operator/kompression/api/v1alpha1/. Do not edit.\n"


def render_crd() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
