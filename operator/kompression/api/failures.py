"""Every way the worker can fail, once: its exit code, its reason, what the user is told, and
whether a retry can help.

The worker's error classes (worker/errors.py), its exit codes (`constants.ExitCode`), the Job's
podFailurePolicy, the operator's reading of a failed pod and `WorkerReport.reason` all derive from
this table. Adding a failure: add a `Reason`, one `Failure` row, and a row in
docs/troubleshooting.md; tests/api/test_failures.py checks that they agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from kompression.api.memory_plan import gib

# A failed worker's condition reason: one CamelCase word, as Kubernetes reasons are.
Reason = Literal[
    "Unexpected",
    "InvalidSpec",
    "ModelError",
    "DataError",
    "StorageError",
    "GateFailed",
    "RuntimeMissing",
    "StepInvalid",
    "StorageRefused",
]


@dataclass(frozen=True)
class Failure:
    exit_code: int
    reason: Reason
    message: str  # what the operator says when the worker left no message of its own
    retryable: bool  # False: podFailurePolicy fails the Job on this exit code without retrying


UNEXPECTED: Final = Failure(1, "Unexpected", "the worker failed unexpectedly (a bug or a transient fault)", True)
INVALID_SPEC: Final = Failure(2, "InvalidSpec", "the worker rejected the job's manifest", False)
MODEL_ERROR: Final = Failure(3, "ModelError", "the model could not be loaded or is unsafe or malformed", False)
DATA_ERROR: Final = Failure(4, "DataError", "a data set could not be read or holds invalid values", False)
STORAGE_ERROR: Final = Failure(
    5, "StorageError", "object storage stayed unreachable for longer than the retry budget", True
)
GATE_FAILED: Final = Failure(
    6, "GateFailed", "an acceptance gate failed; the best candidate was kept under rejected/", False
)
RUNTIME_MISSING: Final = Failure(7, "RuntimeMissing", "a step needs a runtime this image or node lacks", False)
STEP_INVALID: Final = Failure(8, "StepInvalid", "a step cannot apply to this model", False)
STORAGE_REFUSED: Final = Failure(
    9,
    "StorageRefused",
    "object storage refused the request for good (access denied, no such bucket, bad name)",
    False,
)

FAILURES: Final = (
    UNEXPECTED,
    INVALID_SPEC,
    MODEL_ERROR,
    DATA_ERROR,
    STORAGE_ERROR,
    GATE_FAILED,
    RUNTIME_MISSING,
    STEP_INVALID,
    STORAGE_REFUSED,
)
BY_REASON: Final[dict[str, Failure]] = {f.reason: f for f in FAILURES}
BY_EXIT_CODE: Final[dict[int, Failure]] = {f.exit_code: f for f in FAILURES}
# The exit codes a rerun cannot change.
PERMANENT_EXIT_CODES: Final = tuple(f.exit_code for f in FAILURES if not f.retryable)


def by_exit_code(code: int | None) -> Failure | None:
    """The failure a worker exit code names. Exit 1 names none: it is also what Python exits with
    on any uncaught crash, so the Job's own reason (BackoffLimitExceeded) says more."""
    failure = BY_EXIT_CODE.get(code) if code is not None else None
    return failure if failure is not UNEXPECTED else None


# The pod's termination reason when the kernel killed the worker for exceeding its memory limit.
OOM_KILLED: Final = "OOMKilled"


def oom_message(memory: str, plan: Mapping[str, Any] | None) -> str:
    """What the operator says of a worker killed for memory: the limit, and for an LLM job the plan
    its worker reported before loading (status.memoryPlan) with the knob that lowers it."""
    # The limit is the pod's: spec.resources.memory, or the plan's figure where the author left it unset.
    said = f"the worker ran out of memory (its limit {memory})"
    if not plan:
        return f"{said}; raise spec.resources.memory"
    return (
        f"{said}; its plan was {gib(int(plan['hostBytes']))} of host memory at peak: raise spec.resources.memory "
        f"past it, or lower the need with {plan['knob']}"
    )
