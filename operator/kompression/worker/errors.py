"""Errors the worker reports to users. Each maps to a documented exit code (api.constants.ExitCode)
and a CamelCase reason that the operator shows as a condition reason."""

from __future__ import annotations

from kompression.api.constants import ExitCode


class WorkerError(Exception):
    """A failure that is explained to the user, never shown as a traceback."""

    exit_code: int = ExitCode.UNEXPECTED
    reason: str = "WorkerError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecError(WorkerError):
    exit_code = ExitCode.INVALID_SPEC
    reason = "InvalidSpec"


class ModelError(WorkerError):
    exit_code = ExitCode.MODEL_ERROR
    reason = "ModelError"


class DataError(WorkerError):
    exit_code = ExitCode.DATA_ERROR
    reason = "DataError"


class StorageError(WorkerError):
    """Storage failed in a way a later attempt may not: an outage longer than the retry budget."""

    exit_code = ExitCode.STORAGE_ERROR
    reason = "StorageError"
    code: str | None = None  # the storage service's error code (S3's NoSuchBucket, AccessDenied...)


class StorageRefused(StorageError):
    """Storage answered, and every retry would get the same answer: access denied, no such
    bucket or object, an invalid bucket name. Permanent: the Job fails without retrying."""

    exit_code = ExitCode.STORAGE_REFUSED
    reason = "StorageRefused"


class GateFailed(WorkerError):
    exit_code = ExitCode.GATE_FAILED
    reason = "GateFailed"


class RuntimeMissing(WorkerError):
    exit_code = ExitCode.RUNTIME_MISSING
    reason = "RuntimeMissing"


class StepInvalid(WorkerError):
    exit_code = ExitCode.STEP_INVALID
    reason = "StepInvalid"
