"""Parse and validate CompressionJob manifests with the same rules as the API server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kompression.api.constants import API_VERSION, KIND
from kompression.api.v1alpha1 import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    IMPORT_REF_PATTERN,
    QUANTITY_PATTERN,
    ApiModel,
    CompressionJob,
    CompressionJobSpec,
)

# What each pattern accepts, in words: a regex alone does not tell a user what to write.
_PATTERN_HINTS = {
    DNS_LABEL_PATTERN: "expected a DNS label: lowercase letters, digits and '-', starting and ending alphanumeric",
    DNS_SUBDOMAIN_PATTERN: "expected a Kubernetes object name: lowercase letters, digits, '-' and '.'",
    IMPORT_REF_PATTERN: "expected an import reference `module.path:Name`, e.g. torchvision.models:resnet18",
    QUANTITY_PATTERN: "expected a Kubernetes quantity such as 16Gi, 512Mi, 4 or 500m",
}


@dataclass(frozen=True)
class FieldError:
    """One problem, located by its field path (``spec.steps[0].prune.sparsity``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecInvalid(ValueError):
    """The manifest breaks the API's rules; every error is listed."""

    def __init__(self, errors: list[FieldError], name: str | None = None) -> None:
        self.errors = errors
        self.name = name
        what = f"CompressionJob {name!r}" if name else "CompressionJob"
        super().__init__(f"{what} is invalid:\n" + "\n".join(f"  - {e}" for e in errors))


class ManifestUnreadable(ValueError):
    """The file cannot be read or is not YAML."""


def format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe_input(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against `kubectl explain compressionjob.spec`"
        elif err["type"] == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") in _PATTERN_HINTS:
            message = f"{_PATTERN_HINTS[err['ctx']['pattern']]} (got {_describe_input(err.get('input'))})"
        elif err["type"] != "missing":
            message = f"{message} (got {_describe_input(err.get('input'))})"
        errors.append(FieldError(format_path(loc), message))
    return errors


def _walk(model: ApiModel, path: str) -> Iterator[tuple[str, ApiModel]]:
    yield path, model
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, ApiModel):
            yield from _walk(value, f"{path}.{name}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ApiModel):
                    yield from _walk(item, f"{path}.{name}[{i}]")


def rule_errors(model: ApiModel, path: str) -> list[FieldError]:
    """Evaluate every cross-field rule below ``model`` (the CRD's CEL rules, in Python)."""
    errors = []
    for node_path, node in _walk(model, path):
        for rule in type(node).__rules__:
            if not rule.transition and not rule.check(node):
                errors.append(FieldError(node_path + (rule.field_path or ""), rule.message))
    return errors


def parse_job(obj: Any) -> CompressionJob:
    """Parse a CompressionJob manifest, raising SpecInvalid with every problem found."""
    if not isinstance(obj, dict):
        raise SpecInvalid([FieldError("<root>", f"expected a mapping, got {type(obj).__name__}")])
    name = (obj.get("metadata") or {}).get("name") if isinstance(obj.get("metadata"), dict) else None
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        raise SpecInvalid(
            [
                FieldError(
                    "apiVersion/kind", f"expected {API_VERSION} {KIND}, got {obj.get('apiVersion')} {obj.get('kind')}"
                )
            ],
            name,
        )
    try:
        job = CompressionJob.model_validate(obj)
    except ValidationError as exc:
        raise SpecInvalid(_pydantic_errors(exc), name) from None
    errors = rule_errors(job.spec, "spec")
    if errors:
        raise SpecInvalid(errors, name)
    return job


def check_update(old: CompressionJobSpec, new: CompressionJobSpec) -> list[FieldError]:
    """The transition rules (immutability) that the API server applies to updates."""
    return [
        FieldError("spec", rule.message)
        for rule in CompressionJobSpec.__rules__
        if rule.transition and not rule.check(old, new)
    ]


def load_documents(path: Path) -> list[Any]:
    """Every YAML document in a file, empty ones skipped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestUnreadable(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestUnreadable(f"{path}: not valid YAML: {exc}") from None
