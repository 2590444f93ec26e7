"""What every API object shares: the ApiModel base, name patterns, bounds and the uri rules."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.alias_generators import to_camel

from kompression.api.rules import Rule
from kompression.api.uris import URI_DOT_SEGMENT_HINT, URI_DOT_SEGMENT_PATTERN, URI_HINT, URI_PATTERN

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
IMPORT_REF_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
MAX_STEPS = 16
# Bounds no real job reaches, so that a manifest cannot make the worker allocate without limit.
MAX_DIMENSION = 1_048_576  # one tensor dimension (inputs, TensorRT profiles)
MAX_SEQUENCE_LENGTH = 131_072  # tokens per text sample
MAX_INPUT_ELEMENTS = 2**28  # one example input: 1 GiB of float32, above a 512^3 volume or a 64-frame 512x512 video

StorageUri = Annotated[str, StringConstraints(max_length=2048)]
StepName = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)]
ShortString = Annotated[str, StringConstraints(max_length=253)]
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=32)]
Timestamp = Annotated[str, StringConstraints(max_length=64)]


def uri_rules(*, optional: bool = False) -> tuple[Rule, Rule]:
    """The checks of a `uri`: rules, not a field pattern, so that the API server and `kompression
    validate` both name the accepted schemes in words instead of quoting a regex. The second refuses
    `.`, `..` and empty path segments."""
    guard = "!has(self.uri) || " if optional else ""
    return (
        Rule(cel=f"{guard}self.uri.matches('{URI_PATTERN}')", message=URI_HINT, field_path=".uri"),
        Rule(
            cel=f"{guard}!self.uri.matches('{URI_DOT_SEGMENT_PATTERN}')",
            message=URI_DOT_SEGMENT_HINT,
            field_path=".uri",
        ),
    )


# A module name or name pattern (a Kubernetes-style 253-character bound), as the layer lists of
# lowRank, llmQuantize and llmSparsify take them.
ModulePattern = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=False,
    )
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def shape_elements_cel(shape: str) -> str:
    """CEL: the number of elements of a shape (at most 8 dimensions), each -1 counted as 1, in
    double arithmetic, which cannot overflow as int64 would."""
    dims = (f"double(({shape}.size() <= {i} || {shape}[{i}] < 1) ? 1 : {shape}[{i}])" for i in range(8))
    return " * ".join(dims)
