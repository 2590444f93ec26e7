"""The failure table is the one place a failure is defined: the worker's error classes and exit
codes, the podFailurePolicy, the operator's reading of a failed pod and WorkerReport.reason agree
with it, and no other module spells a reason out."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from kompression.api import failures
from kompression.api.constants import ExitCode
from kompression.api.report import WorkerReport
from kompression.controller.failure_policy import EXIT_REASONS, pod_failure_policy
from kompression.controller.observe import observe
from kompression.controller.views import JobView, PodView
from kompression.worker import errors

PACKAGE = Path(failures.__file__).resolve().parents[1]
REASONS = set(get_args(failures.Reason))


def _error_classes() -> list[type[errors.WorkerError]]:
    found, todo = [], [errors.WorkerError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_reason_has_one_row_with_its_own_exit_code() -> None:
    assert {f.reason for f in failures.FAILURES} == REASONS
    assert len(failures.FAILURES) == len(REASONS) == len(failures.BY_EXIT_CODE)
    assert ExitCode.OK not in failures.BY_EXIT_CODE
    for f in failures.FAILURES:
        assert re.fullmatch(r"(?:[A-Z][a-z]+)+", f.reason), f.reason
        assert f.message and f.message[0].islower(), f.reason


def test_exit_codes_come_from_the_table() -> None:
    named = {name: value for name, value in vars(ExitCode).items() if name.isupper() and isinstance(value, int)}
    assert set(named.values()) == {ExitCode.OK, *failures.BY_EXIT_CODE}
    for name, value in named.items():
        if value != ExitCode.OK:
            assert getattr(failures, name) is failures.BY_EXIT_CODE[value], name
    assert set(ExitCode.PERMANENT) == {f.exit_code for f in failures.FAILURES if not f.retryable}


def test_each_failure_has_one_error_class_with_its_exit_code_and_reason() -> None:
    classes = {cls.failure.reason: cls for cls in _error_classes()}
    assert set(classes) == REASONS, "a failure without an error class, or two classes for one failure"
    for reason, cls in classes.items():
        error = cls("details")
        assert (error.exit_code, error.reason) == (failures.BY_REASON[reason].exit_code, reason)


def test_pod_failure_policy_fails_the_job_on_exactly_the_permanent_codes() -> None:
    fail, ignore = pod_failure_policy()["rules"]
    assert fail["action"] == "FailJob" and ignore["action"] == "Ignore"
    assert sorted(fail["onExitCodes"]["values"]) == sorted(f.exit_code for f in failures.FAILURES if not f.retryable)


def _failed(exit_code: int, job_reason: str, message: str | None = None) -> Any:
    terminated: dict[str, Any] = {"exitCode": exit_code, "reason": "Error"}
    if message is not None:
        terminated["message"] = message
    job = {"spec": {}, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": job_reason}]}}
    pod = {
        "metadata": {"creationTimestamp": "2025-01-01T00:00:00Z"},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "worker", "state": {"terminated": terminated}}]},
    }
    return observe(JobView.of(job), [PodView.of(pod)], user_suspended=False, kueue_managed=False)


@pytest.mark.parametrize("failure", failures.FAILURES, ids=lambda f: f.reason)
def test_the_operator_names_a_failed_pod_by_the_table(failure: failures.Failure) -> None:
    job_reason = "BackoffLimitExceeded" if failure.retryable else "PodFailurePolicy"
    # Without a report (the worker was killed before writing one): the exit code names the failure,
    # except exit 1, which any crash exits with: the Job's own reason says more.
    obs = _failed(failure.exit_code, job_reason)
    if failure is failures.UNEXPECTED:
        assert obs.reason == job_reason and failure.exit_code not in EXIT_REASONS
    else:
        assert (obs.phase, obs.reason) == ("Failed", failure.reason)
        assert obs.message == f"{failure.message} (exit code {failure.exit_code})"
        assert EXIT_REASONS[failure.exit_code] == failure.reason
    # With the worker's report: its reason, and the table's words when it gave none.
    report = WorkerReport(phase="Failed", reason=failure.reason).model_dump_json()
    obs = _failed(failure.exit_code, job_reason, report)
    assert (obs.reason, obs.message) == (failure.reason, failure.message)


def test_a_report_reason_is_one_of_the_table() -> None:
    for reason in REASONS:
        assert WorkerReport(phase="Failed", reason=reason).reason == reason
    with pytest.raises(ValidationError):
        WorkerReport.model_validate({"phase": "Failed", "reason": "SomethingElse"})


def test_no_module_but_the_table_spells_out_a_reason() -> None:
    """A reason written as a string literal elsewhere would drift from the table unnoticed."""
    table = Path(failures.__file__).resolve()
    found = []
    for source in PACKAGE.rglob("*.py"):
        if source.resolve() == table:
            continue
        tree = ast.parse(source.read_text(), str(source))
        # `__all__` lists class names (StorageError), which are not reasons.
        exported = {
            id(const)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
            for const in ast.walk(node.value)
        }
        found += [
            f"{source.relative_to(PACKAGE)}:{node.lineno} {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in REASONS and id(node) not in exported
        ]
    assert not found, found
