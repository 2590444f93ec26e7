"""Errors the worker reports to users. Each is a row of the failure table (api/failures.py): its
exit code, and the CamelCase reason that the operator shows as a condition reason."""

from __future__ import annotations

from typing import ClassVar

from kompression.api import failures
from kompression.api.failures import Failure, Reason


def brief(exc: BaseException) -> str:
    """A library's exception as one line of at most 400 characters, to quote inside a WorkerError's
    message (its type name when it says nothing)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


class WorkerError(Exception):
    """A failure that is explained to the user, never shown as a traceback."""

    failure: ClassVar[Failure] = failures.UNEXPECTED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def exit_code(self) -> int:
        return self.failure.exit_code

    @property
    def reason(self) -> Reason:
        return self.failure.reason


class SpecError(WorkerError):
    failure = failures.INVALID_SPEC


class ModelError(WorkerError):
    failure = failures.MODEL_ERROR


class DataError(WorkerError):
    failure = failures.DATA_ERROR


class StorageError(WorkerError):
    """Storage failed in a way a later attempt may not: an outage longer than the retry budget."""

    failure = failures.STORAGE_ERROR
    code: str | None = None  # the storage service's error code (S3's NoSuchBucket, AccessDenied...)


class StorageRefused(StorageError):
    """Storage answered, and every retry would get the same answer: access denied, no such
    bucket or object, an invalid bucket name. Permanent: the Job fails without retrying."""

    failure = failures.STORAGE_REFUSED


class GateFailed(WorkerError):
    failure = failures.GATE_FAILED


class RuntimeMissing(WorkerError):
    failure = failures.RUNTIME_MISSING


class StepInvalid(WorkerError):
    failure = failures.STEP_INVALID
