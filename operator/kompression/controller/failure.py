"""Failure policy: which worker exits end the Job at once, and how a failure is named.

The podFailurePolicy lets the Job controller, not the operator, fail on a permanent exit code, so
the decision holds while the operator is down. Disruptions (eviction, preemption, node drain) are
ignored so that they do not burn the retry budget.
"""

from __future__ import annotations

from typing import Any

from kompression.api.constants import ExitCode

WORKER_CONTAINER = "worker"

# Worker exit code -> condition reason, for the codes a retry cannot change.
EXIT_REASONS: dict[int, str] = {
    ExitCode.INVALID_SPEC: "InvalidSpec",
    ExitCode.MODEL_ERROR: "ModelError",
    ExitCode.DATA_ERROR: "DataError",
    ExitCode.STORAGE_ERROR: "StorageError",
    ExitCode.GATE_FAILED: "GateFailed",
    ExitCode.RUNTIME_MISSING: "RuntimeMissing",
    ExitCode.STEP_INVALID: "StepInvalid",
    ExitCode.STORAGE_REFUSED: "StorageRefused",
}

EXIT_MESSAGES: dict[str, str] = {
    "InvalidSpec": "the worker rejected the job's manifest",
    "ModelError": "the model could not be loaded or is unsafe or malformed",
    "DataError": "a data set could not be read or holds invalid values",
    "StorageError": "object storage stayed unreachable for longer than the retry budget",
    "StorageRefused": "object storage refused the request for good (access denied, no such bucket, bad name)",
    "GateFailed": "an acceptance gate failed; the best candidate was kept under rejected/",
    "RuntimeMissing": "a step needs a runtime this image or node lacks",
    "StepInvalid": "a step cannot apply to this model",
}


def pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": WORKER_CONTAINER,
                    "operator": "In",
                    "values": list(ExitCode.PERMANENT),
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def reason_for_exit_code(code: int | None) -> str | None:
    if code is None:
        return None
    return EXIT_REASONS.get(code)
