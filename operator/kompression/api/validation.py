"""Parse and validate CompressionJob manifests with the same rules as the API server."""

from __future__ import annotations

import json
import re
import reprlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kompression.api.architectures import argument_refusal, reference_allowed, refusal
from kompression.api.constants import API_VERSION, KIND
from kompression.api.rules import verdicts
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

    def __init__(self, errors: list[FieldError], name: str | None = None, kind: str = KIND) -> None:
        self.errors = errors
        self.name = name
        what = f"{kind} {name!r}" if name else kind
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


# Bounded at every level, so that describing a huge or deeply shared value costs a few hundred
# characters of work, not the size of its expansion.
_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4


def describe(value: Any) -> str:
    """A short, bounded rendering of any manifest value for an error message."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def pydantic_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against `kubectl explain compressionjob.spec`"
        elif err["type"] == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") in _PATTERN_HINTS:
            message = f"{_PATTERN_HINTS[err['ctx']['pattern']]} (got {describe(err.get('input'))})"
        elif err["type"] != "missing":
            message = f"{message} (got {describe(err.get('input'))})"
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
        rules = tuple(r for r in type(node).__rules__ if not r.transition)
        if rules:
            results = verdicts(rules, node.to_wire())
            errors += [
                FieldError(node_path + (r.field_path or ""), r.message)
                for r, ok in zip(rules, results, strict=True)
                if not ok
            ]
    return errors


_RULE_CACHE: OrderedDict[str, list[FieldError]] = OrderedDict()
_RULE_CACHE_SIZE = 4096


def _spec_rule_errors(spec: CompressionJobSpec) -> list[FieldError]:
    """rule_errors, remembered per spec: the operator parses the same immutable spec on every event,
    and handing objects to CEL costs milliseconds."""
    key = json.dumps(spec.to_wire(), sort_keys=True)
    if key in _RULE_CACHE:
        _RULE_CACHE.move_to_end(key)
        return _RULE_CACHE[key]
    errors = _RULE_CACHE[key] = rule_errors(spec, "spec")
    if len(_RULE_CACHE) > _RULE_CACHE_SIZE:
        _RULE_CACHE.popitem(last=False)
    return errors


def integral_floats_as_ints(value: Any) -> Any:
    """1.0 becomes 1, as the API server's JSON decoding makes it, before the strict type check.

    Shared sub-objects (YAML aliases) are converted once and stay shared.
    """
    memo: dict[int, Any] = {}

    def convert(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
            return int(v)
        if not isinstance(v, (dict, list)):
            return v
        if id(v) not in memo:
            memo[id(v)] = {k: convert(x) for k, x in v.items()} if isinstance(v, dict) else [convert(x) for x in v]
        return memo[id(v)]

    return convert(value)


def parse_job(obj: Any) -> CompressionJob:
    """Parse a CompressionJob manifest, raising SpecInvalid with every problem found."""
    if not isinstance(obj, dict):
        raise SpecInvalid([FieldError("<root>", f"expected a mapping, got {type(obj).__name__}")])
    meta = obj.get("metadata")
    raw_name = meta.get("name") if isinstance(meta, dict) else None
    name = raw_name if isinstance(raw_name, str) and len(raw_name) <= MAX_NAME else None
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        got = " ".join(
            v if isinstance(v, str) and len(v) <= 80 else describe(v) for v in (obj.get("apiVersion"), obj.get("kind"))
        )
        raise SpecInvalid([FieldError("apiVersion/kind", f"expected {API_VERSION} {KIND}, got {got}")], name)
    try:
        # Strict: the API server's schema takes no "1" for a number and no 1 for a string or a bool.
        job = CompressionJob.model_validate(integral_floats_as_ints(obj), strict=True)
    except ValidationError as exc:
        raise SpecInvalid(metadata_errors(meta) + pydantic_errors(exc), name) from None
    errors = metadata_errors(meta) + _spec_rule_errors(job.spec)
    if errors:
        raise SpecInvalid(errors, name)
    return job


# --------------------------------------------------------------------------------------------
# metadata, checked as the API server's ValidateObjectMeta does for a custom resource

MAX_NAME = 253  # a DNS-1123 subdomain; the Job and ConfigMap names derived from it are shortened to fit
MAX_NAMESPACE = 63
MAX_LABEL_VALUE = 63
MAX_ANNOTATIONS_BYTES = 256 * 1024
_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)
_LABEL = re.compile(DNS_LABEL_PATTERN)
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SUBDOMAIN_HINT = (
    "a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending alphanumeric"
)


def metadata_errors(meta: Any) -> list[FieldError]:
    """The API server's verdict on metadata: name (or generateName), namespace, labels, annotations."""
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        return [FieldError("metadata", f"expected a mapping, got {type(meta).__name__}")]
    errors: list[FieldError] = []
    name, generate = meta.get("name"), meta.get("generateName")
    if not name and not generate:
        errors.append(FieldError("metadata.name", "Required value: name or generateName is required"))
    if name:
        errors += _subdomain_errors("metadata.name", name)
    if generate and not name:
        # The API server appends five characters; a trailing '-' is the usual separator.
        errors += _subdomain_errors(
            "metadata.generateName", generate[:-1] + "a" if str(generate).endswith("-") else generate
        )
    namespace = meta.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > MAX_NAMESPACE or not _LABEL.match(namespace)
    ):
        errors.append(
            FieldError(
                "metadata.namespace",
                f"a lowercase RFC 1123 label of at most {MAX_NAMESPACE} characters (got {describe(namespace)})",
            )
        )
    errors += _map_errors("metadata.labels", meta.get("labels"), label_values=True)
    errors += _map_errors("metadata.annotations", meta.get("annotations"), label_values=False)
    return errors


def _subdomain_errors(path: str, value: Any) -> list[FieldError]:
    if not isinstance(value, str):
        return [FieldError(path, f"expected a string (got {describe(value)})")]
    if len(value) > MAX_NAME:
        return [FieldError(path, f"must be no more than {MAX_NAME} characters (got {len(value)})")]
    if not _SUBDOMAIN.match(value):
        return [FieldError(path, f"{_SUBDOMAIN_HINT} (got {describe(value)})")]
    return []


def _qualified_name_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > MAX_NAME or not _SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def _map_errors(path: str, value: Any, label_values: bool) -> list[FieldError]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [FieldError(path, f"expected a mapping of strings (got {describe(value)})")]
    errors = []
    for key, item in value.items():
        where = f"{path}[{describe(key)}]"
        if not isinstance(key, str) or not _qualified_name_ok(key):
            errors.append(
                FieldError(where, "a key must be a qualified name: [prefix/]name, name at most 63 characters")
            )
        elif not isinstance(item, str):
            errors.append(FieldError(where, f"expected a string (got {describe(item)})"))
        elif label_values and (len(item) > MAX_LABEL_VALUE or not _LABEL_VALUE.match(item)):
            errors.append(FieldError(where, f"a label value: at most {MAX_LABEL_VALUE} alphanumerics, '-', '_' or '.'"))
    if not label_values and sum(len(str(k)) + len(str(v)) for k, v in value.items()) > MAX_ANNOTATIONS_BYTES:
        errors.append(FieldError(path, f"annotations may total at most {MAX_ANNOTATIONS_BYTES} bytes"))
    return errors


def check_architectures(job: CompressionJob, allowed: tuple[str, ...]) -> None:
    """The cluster's policy on `architecture` references and their arguments (not a CRD rule: the list
    is the operator's); SpecInvalid naming every refused field. `kompression validate`, `run` (before it
    downloads anything), `render` and the operator (before it makes a Job) all apply it."""
    errors = _architecture_errors(job.spec, allowed)
    if errors:
        raise SpecInvalid(errors, job.metadata.name)


def _architecture_errors(spec: CompressionJobSpec, allowed: tuple[str, ...]) -> list[FieldError]:
    refs = [("spec.model", spec.model.architecture, spec.model.architectureArguments)]
    refs += [
        (f"spec.steps[{i}].distill.student", s.distill.student.architecture, s.distill.student.architectureArguments)
        for i, s in enumerate(spec.steps)
        if s.distill is not None
    ]
    errors = []
    for path, ref, arguments in refs:
        if ref and not reference_allowed(ref, allowed):
            errors.append(FieldError(f"{path}.architecture", refusal(ref, allowed)))
        reason = argument_refusal(arguments)
        if reason:
            errors.append(FieldError(f"{path}.architectureArguments", reason))
    return errors


def check_update(old: ApiModel, new: ApiModel) -> list[FieldError]:
    """The transition rules (immutability) that the API server applies to updates of a spec (a
    CompressionJob's or a CompressionSweep's)."""
    return [
        FieldError("spec", rule.message)
        for rule in type(new).__rules__
        if rule.transition and not rule.holds(new.to_wire(), old.to_wire())
    ]


# --------------------------------------------------------------------------------------------
# reading manifests: bounded work whatever the file holds

MAX_MANIFEST_BYTES = 3 * 1024 * 1024  # the API server's own request size limit
MAX_NODES = 100_000  # YAML nodes after expanding aliases; a CompressionJob has a few hundred
MAX_DEPTH = 64  # nesting of mappings and sequences; a CompressionJob needs about 10


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while composing and alias bombs before constructing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ManifestUnreadable(f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Any) -> Any:
        expanded = _expanded_size(node)
        if expanded > MAX_NODES:
            raise ManifestUnreadable(
                f"the document expands to more than {MAX_NODES} YAML nodes (aliases included); "
                "is it an alias bomb? Write the manifest out without anchors and aliases"
            )
        return super().construct_document(node)


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document has once every alias is expanded, computed once per distinct node."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if children_done:
            sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes.get(id(c), 0) for c in children))
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def load_documents(path: Path) -> list[Any]:
    """Every YAML document in a file, empty ones skipped; ManifestUnreadable for anything else."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestUnreadable(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestUnreadable(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes, the API server's limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestUnreadable(f"{path}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})") from None
    loader = _BoundedLoader(text)
    try:
        docs = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            doc = loader.get_data()
            if doc is not None:
                docs.append(doc)
        return docs
    except ManifestUnreadable as exc:
        raise ManifestUnreadable(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestUnreadable(f"{path}: not valid YAML: {_short_yaml_error(exc)}") from None
    except RecursionError:
        raise ManifestUnreadable(f"{path}: nested too deeply") from None
    finally:
        loader.dispose()


def _short_yaml_error(exc: yaml.YAMLError) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
