"""Options a method does not use are refused, naming the option and the methods that use it: every
option of every step (and of acceptance) against every method, through the Python twins of the
CRD's rules. test_apiserver.py walks the same cases on a real API server."""

from __future__ import annotations

import typing

import pytest
from option_cases import CASES, TABLE, Case, refusal_names_option_and_users

from kompression.api.v1alpha1 import ApiModel, Step
from kompression.api.validation import SpecInvalid, parse_job


def test_the_table_walks_every_field_of_each_object() -> None:
    for sel in TABLE:
        selectors = {f for fields in sel.choices.values() for f in fields}
        assert selectors | set(sel.options) == set(sel.model.model_fields), sel.model.__name__


def _model(annotation: typing.Any) -> type[ApiModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, ApiModel):
            return arg
    return None


def test_every_technique_with_a_method_is_in_the_table() -> None:
    walked = {sel.model for sel in TABLE}
    for name, field in Step.model_fields.items():
        technique = _model(field.annotation)
        if technique is None:
            continue
        selectors = [
            f for f, info in technique.model_fields.items() if typing.get_origin(info.annotation) is typing.Literal
        ]
        assert not selectors or technique in walked, (
            f"{name}: classify each option of {technique.__name__} in option_cases.py"
        )


def test_the_cases_refuse_some_and_accept_some() -> None:
    assert sum(c.accepted for c in CASES) >= 40
    assert sum(not c.accepted for c in CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_python_verdict(case: Case) -> None:
    if case.accepted:
        parse_job(case.manifest)
        return
    with pytest.raises(SpecInvalid) as info:
        parse_job(case.manifest)
    messages = [e.message for e in info.value.errors if e.path == case.field]
    assert messages, f"no error names {case.field}: {info.value}"
    assert any(refusal_names_option_and_users(case, m) for m in messages), messages
