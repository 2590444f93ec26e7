"""Cross-field rules, written once and enforced twice.

Each rule carries its CEL expression (emitted into the CRD as ``x-kubernetes-validations``) and
the same predicate in Python (run by ``kompression validate``, the operator and the worker), so the
API server and the CLI give the same verdicts. A test applies every invalid example to a real
kube-apiserver and through the CLI and compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """One validation rule on an object node of the schema."""

    cel: str
    message: str
    check: Callable[..., bool]
    # Relative path (CEL ``fieldPath``) of the field the error is reported on, e.g. ".sparsity".
    field_path: str | None = None
    # Transition rules compare against the stored object (``oldSelf``); check gets (old, new).
    transition: bool = False

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out
