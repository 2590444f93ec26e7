"""Cross-field rules, written once in CEL and enforced twice.

Each rule's CEL expression is emitted into the CRD as ``x-kubernetes-validations`` for the API
server, and the same expression is evaluated in Python by a maintained CEL implementation (the
``common-expression-language`` bindings of the Rust ``cel`` crate) for ``kompression validate``, the
operator and the worker, on the object as the API server sees it (camelCase, defaults applied,
unset fields absent). So a rule may use only standard CEL, not Kubernetes' extension libraries.
tests/api/test_fuzz_apiserver.py compares the two verdicts on generated manifests.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cel


@dataclass(frozen=True)
class Rule:
    """One validation rule on an object node of the schema."""

    cel: str
    message: str
    # Relative path (CEL ``fieldPath``) of the field the error is reported on, e.g. ".sparsity".
    field_path: str | None = None
    # Transition rules compare against the stored object (``oldSelf``).
    transition: bool = False

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out

    def holds(self, wire: dict[str, Any], old: dict[str, Any] | None = None) -> bool:
        """The rule's verdict on an object in its wire form (and the stored one, for transitions)."""
        variables = {"self": wire} if old is None else {"self": wire, "oldSelf": old}
        try:
            return _program(self.cel).execute(variables) is True
        except Exception:  # a CEL runtime error fails the rule, as on the API server
            return False


def verdicts(rules: tuple[Rule, ...], wire: dict[str, Any]) -> list[bool]:
    """Each rule's verdict on one object. One CEL program evaluates them all at once, because
    handing an object to CEL costs more than evaluating a rule on it; a runtime error in any rule
    falls back to one program per rule, so it fails only its own rule."""
    if not rules:
        return []
    try:
        results = _program("[" + ", ".join(f"({r.cel})" for r in rules) + "]").execute({"self": wire})
    except Exception:  # some rule raised: evaluate each on its own
        return [r.holds(wire) for r in rules]
    return [result is True for result in results]


@functools.cache
def _program(expression: str) -> Any:
    return cel.compile(expression)
