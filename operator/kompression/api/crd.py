"""Generate the CustomResourceDefinition from the typed API models.

Pydantic's JSON Schema is rewritten into a structural OpenAPI v3 schema: references inlined,
optionals flattened, JSON Schema 2020 bounds turned into OpenAPI 3.0 ones, defaults that make
nested defaulting work, and each model's rules emitted as ``x-kubernetes-validations``.
"""

from __future__ import annotations

from typing import Any

import yaml

from kompression.api import constants as c
from kompression.api.v1alpha1 import ApiModel, CompressionJob, CompressionSweep

PRINTER_COLUMNS: list[dict[str, Any]] = [
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

SWEEP_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the sweep."},
    {"name": "Done", "type": "integer", "jsonPath": ".status.trialsDone", "description": "Trials finished."},
    {"name": "Total", "type": "integer", "jsonPath": ".status.trialsTotal", "description": "Trials planned."},
    {
        "name": "BestRatio",
        "type": "number",
        "jsonPath": ".status.best.metrics.compressionRatio",
        "description": "Compression ratio of the best trial by the first objective.",
    },
    {
        "name": "BestAccDelta",
        "type": "number",
        "jsonPath": ".status.best.metrics.accuracyDelta",
        "description": "Accuracy delta of the best trial by the first objective.",
    },
    {
        "name": "Best",
        "type": "string",
        "jsonPath": ".status.best.name",
        "description": "The best trial's CompressionJob.",
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
        if node.get("x-kubernetes-preserve-unknown-fields"):
            # Any JSON value (a sweep axis's values): the schema says only that it is kept as given.
            return {k: node[k] for k in ("description", "x-kubernetes-preserve-unknown-fields") if k in node}
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


def _resource_schema(cls: type[ApiModel], kind: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The root schema of a resource, and its spec and status nodes (to be adjusted per kind)."""
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    conv = _Converter(raw.get("$defs", {}))
    spec = conv.convert({"$ref": f"#/$defs/{kind}Spec"}, "spec")
    status = conv.convert({"$ref": f"#/$defs/{kind}Status"}, "status")
    status["properties"]["conditions"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    root = {
        "type": "object",
        "description": " ".join((cls.__doc__ or "").split()),
        "properties": {
            "apiVersion": {"type": "string", "description": f"APIVersion: {c.API_VERSION}."},
            "kind": {"type": "string", "description": f"Kind: {kind}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
    return root, spec, status


def _job_spec_defaults(spec: dict[str, Any]) -> None:
    """What a CompressionJob spec's schema adds to the model's: defaulted objects and map-keyed lists."""
    # These always exist after defaulting, so their fields' defaults apply when the user leaves
    # the whole object out. Technique objects (onnx: {}, fineTune: {}) must never be defaulted:
    # their presence is meaningful.
    for name in ("resources", "runPolicy", "worker", "measurement"):
        spec["properties"][name]["default"] = {}
    # Lists keyed by a name merge cleanly under server-side apply.
    spec["properties"]["steps"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})


def openapi_schema() -> dict[str, Any]:
    """The CompressionJob's schema."""
    root, spec, status = _resource_schema(CompressionJob, c.KIND)
    _job_spec_defaults(spec)
    status["properties"]["steps"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    return root


def sweep_openapi_schema() -> dict[str, Any]:
    """The CompressionSweep's schema: its template is a CompressionJob spec, defaulted alike."""
    root, spec, status = _resource_schema(CompressionSweep, c.SWEEP_KIND)
    _job_spec_defaults(spec["properties"]["template"])
    # The API server checks a default against the rules as written, before nested defaults fill it in.
    spec["properties"]["search"]["default"] = {"algorithm": "Grid"}
    for name in ("parameters", "objectives"):
        spec["properties"][name]["x-kubernetes-list-type"] = "atomic"
    status["properties"]["trials"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    return root


def _crd(
    *,
    name: str,
    kind: str,
    plural: str,
    singular: str,
    short_names: tuple[str, ...],
    columns: list[dict[str, Any]],
    schema: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "labels": {c.LABEL_PART_OF: "kompression"}},
        "spec": {
            "group": c.GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(c.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    """The CompressionJob CRD as a manifest."""
    return _crd(
        name=c.CRD_NAME,
        kind=c.KIND,
        plural=c.PLURAL,
        singular=c.SINGULAR,
        short_names=c.SHORT_NAMES,
        columns=PRINTER_COLUMNS,
        schema=openapi_schema(),
    )


def build_sweep_crd() -> dict[str, Any]:
    """The CompressionSweep CRD as a manifest."""
    return _crd(
        name=c.SWEEP_CRD_NAME,
        kind=c.SWEEP_KIND,
        plural=c.SWEEP_PLURAL,
        singular=c.SWEEP_SINGULAR,
        short_names=c.SWEEP_SHORT_NAMES,
        columns=SWEEP_PRINTER_COLUMNS,
        schema=sweep_openapi_schema(),
    )


HEADER = "# Generated by `kompression crd` from operator/kompression/api/v1alpha1/. Do not edit.\n"


def render_crd() -> str:
    """The CompressionJob CRD file."""
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def render_sweep_crd() -> str:
    """The CompressionSweep CRD file."""
    return HEADER + yaml.safe_dump(build_sweep_crd(), sort_keys=False, width=120)


# Each CRD file under crds/ and what renders it: `kompression crd --kind`, make crd and the drift checks.
CRD_FILES = {
    c.KIND: (f"{c.CRD_NAME}.yaml", render_crd),
    c.SWEEP_KIND: (f"{c.SWEEP_CRD_NAME}.yaml", render_sweep_crd),
}
