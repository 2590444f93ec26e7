"""How a storage failure is classified, and how long a transient one is retried.

Classification reads what the storage service said, never the text of a message:

- botocore's ``ClientError`` code and HTTP status (S3 and S3-compatibles), and botocore's own
  exception classes (connection errors, timeouts, missing credentials, an invalid bucket name);
- for local files and the other fsspec back ends, the ``OSError`` subclass.

botocore's standard retry mode decides what is transient (its ``TransientRetryableChecker`` and
``ThrottledRetryableChecker``: 500/502/503/504, RequestTimeout, SlowDown and the other throttling
codes, connection errors and timeouts). Those are retried here with full-jitter exponential
backoff until the budget runs out; then a StorageError (exit 5) lets the Job's backoffLimit try
the whole run again. Everything else is answered at once, because a retry gets the same answer:

- ``Missing`` (NoSuchKey, NoSuchBucket, 404, FileNotFoundError) -> ObjectNotFound, permanent;
- ``Refused`` (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, expired tokens, any 401
  or 403, no credentials at all, an invalid bucket name, any other 4xx, 501 NotImplemented)
  -> StorageRefused, exit 9, which the Job's podFailurePolicy fails at once;
- ``Conflict`` (412 PreconditionFailed, 409 ConditionalRequestConflict, FileExistsError)
  -> WriteConflict, for the conditional writes of the publisher to handle;
- a ``ValueError`` (an argument no retry changes, such as fsspec's refusal of object keys that
  would be copied outside the destination) -> StorageRefused.

The budget (``KOMPRESSION_STORAGE_RETRY_SECONDS``, set from spec.output.retrySeconds or the
chart's ``worker.storageRetrySeconds``) bounds the time one operation spends waiting between
attempts; ``KOMPRESSION_STORAGE_RETRIES`` bounds the attempts and
``KOMPRESSION_STORAGE_BACKOFF_SECONDS`` is the first backoff step.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from kompression.api.constants import ENV_STORAGE_RETRY_SECONDS
from kompression.worker.errors import StorageError, StorageRefused

log = logging.getLogger(__name__)

ENV_RETRY_SECONDS = ENV_STORAGE_RETRY_SECONDS
ENV_RETRIES = "KOMPRESSION_STORAGE_RETRIES"
ENV_BACKOFF = "KOMPRESSION_STORAGE_BACKOFF_SECONDS"
ENV_TIMEOUT = "KOMPRESSION_STORAGE_TIMEOUT_SECONDS"

DEFAULT_RETRY_SECONDS = 60.0
DEFAULT_ATTEMPTS = 30
DEFAULT_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
DEFAULT_TIMEOUT_SECONDS = 60.0
# Attempts botocore makes of one request (standard mode, its own jittered backoff) before an
# attempt of the loop here counts as failed.
BOTOCORE_ATTEMPTS = 3
# An unfinished multipart upload is billed until someone aborts it, so its abort keeps trying at
# least this long even when the operation's own budget is shorter.
CLEANUP_MIN_SECONDS = 30.0

MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidSecurity",
        "403",
    }
)
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412"})
UNSUPPORTED_CODES = frozenset({"NotImplemented"})

T = TypeVar("T")


class Fault(enum.Enum):
    MISSING = "missing"
    REFUSED = "refused"
    CONFLICT = "conflict"
    TRANSIENT = "transient"


class ObjectNotFound(StorageRefused):
    """The URI is reachable but names nothing. Callers turn this into ModelError or DataError."""


class WriteConflict(StorageError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


@dataclass(frozen=True)
class Budget:
    """How long and how often one storage operation is retried."""

    seconds: float = DEFAULT_RETRY_SECONDS
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF_SECONDS

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, backoff * 2^attempt)], so retrying workers spread out."""
        return random.uniform(0.0, min(MAX_BACKOFF_SECONDS, self.backoff * 2.0 ** max(0, attempt - 1)))

    def for_cleanup(self) -> Budget:
        return replace(self, seconds=max(self.seconds, CLEANUP_MIN_SECONDS), attempts=max(self.attempts, 10))


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r}: expected a number") from None
    if value < minimum:
        raise StorageError(f"{name}={raw!r}: expected a number >= {minimum:g}")
    return value


def budget() -> Budget:
    """The retry budget from the environment (the operator sets it on the worker pod)."""
    return Budget(
        seconds=_env_number(ENV_RETRY_SECONDS, DEFAULT_RETRY_SECONDS, 0),
        attempts=int(_env_number(ENV_RETRIES, DEFAULT_ATTEMPTS, 1)),
        backoff=_env_number(ENV_BACKOFF, DEFAULT_BACKOFF_SECONDS, 0),
    )


def request_timeout() -> float:
    """Seconds one request may wait for the server to answer (botocore's read timeout)."""
    return _env_number(ENV_TIMEOUT, DEFAULT_TIMEOUT_SECONDS, 0.1)


# --------------------------------------------------------------------------------------------
# classification


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and what caused it: s3fs turns a ClientError into an OSError raised from it."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out and len(out) < 10:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _client_error(exc: BaseException) -> Any:
    try:
        from botocore.exceptions import ClientError  # botocore: only in images with S3 support
    except ImportError:  # an image without S3 support cannot have raised one
        return None
    return next((e for e in _chain(exc) if isinstance(e, ClientError)), None)


def _botocore_error(exc: BaseException) -> Any:
    try:
        from botocore.exceptions import BotoCoreError  # botocore: only in images with S3 support
    except ImportError:
        return None
    return next((e for e in _chain(exc) if isinstance(e, BotoCoreError)), None)


class _Status:
    """The part of an HTTP response botocore's retry checkers read."""

    def __init__(self, status: int | None) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}


def _botocore_retryable(*, response: dict[str, Any] | None = None, status: int | None = None, exc: Any = None) -> bool:
    # botocore: only in images with S3 support
    from botocore.retries.standard import RetryContext, ThrottledRetryableChecker, TransientRetryableChecker

    context = RetryContext(
        attempt_number=1,
        parsed_response=response,
        http_response=_Status(status) if status is not None else None,
        caught_exception=exc,
        request_context={},
    )
    return bool(TransientRetryableChecker().is_retryable(context) or ThrottledRetryableChecker().is_retryable(context))


def error_code(exc: BaseException) -> tuple[str | None, int | None]:
    """The storage service's error code and HTTP status, when a ClientError caused exc."""
    err = _client_error(exc)
    if err is None:
        return None, None
    response = err.response or {}
    code = (response.get("Error") or {}).get("Code")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (str(code) if code is not None else None), (int(status) if status is not None else None)


def _classify_response(exc: BaseException, response: dict[str, Any]) -> Fault:
    code, status = error_code(exc)
    if code in MISSING_CODES or status == 404:
        return Fault.MISSING
    if code in CONFLICT_CODES or status == 412:
        return Fault.CONFLICT
    if _botocore_retryable(response=response, status=status):
        return Fault.TRANSIENT
    if code in DENIED_CODES or code in UNSUPPORTED_CODES or (status is not None and 400 <= status < 500):
        return Fault.REFUSED
    return Fault.TRANSIENT


def classify(exc: BaseException) -> Fault:
    err = _client_error(exc)
    if err is not None:
        return _classify_response(exc, err.response or {})
    core = _botocore_error(exc)
    if core is not None:
        # botocore: only in images with S3 support
        from botocore.exceptions import NoCredentialsError, ParamValidationError, PartialCredentialsError

        refused = isinstance(core, NoCredentialsError | PartialCredentialsError | ParamValidationError)
        # Otherwise a connection error, a timeout, a response cut short.
        return Fault.REFUSED if refused else Fault.TRANSIENT
    local = {
        FileNotFoundError: Fault.MISSING,
        PermissionError: Fault.REFUSED,
        NotADirectoryError: Fault.REFUSED,
        IsADirectoryError: Fault.REFUSED,
        FileExistsError: Fault.CONFLICT,
        # A bad argument, which every retry repeats: fsspec (>= 2026.9) refuses a copy whose names
        # from the listing would land outside the destination with one.
        ValueError: Fault.REFUSED,
    }
    return next((fault for cls, fault in local.items() if isinstance(exc, cls)), Fault.TRANSIENT)


def describe(exc: BaseException) -> str:
    code, status = error_code(exc)
    err = _client_error(exc)
    if err is not None:
        message = (err.response.get("Error") or {}).get("Message") or ""
        text = f"{code} (HTTP {status})" + (f": {message}" if message else "")
    else:
        text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _refusal(uri: str, action: str, exc: BaseException) -> StorageError:
    code, _ = error_code(exc)
    detail = describe(exc)
    fault = classify(exc)
    error: StorageError
    if fault is Fault.MISSING:
        error = ObjectNotFound(f"{uri}: not found ({action}): {detail}")
    elif fault is Fault.CONFLICT:
        error = WriteConflict(f"{uri}: changed by someone else while trying to {action}: {detail}")
    elif code in DENIED_CODES or _denied(exc):
        error = StorageRefused(
            f"{uri}: access denied while trying to {action}: {detail}. Check the credentials in "
            "spec.output.credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket policy; "
            "a retry cannot fix this"
        )
    else:
        error = StorageRefused(
            f"{uri}: the storage refused to {action}: {detail}. Check the bucket name and the path; "
            "a retry cannot fix this"
        )
    error.code = code
    return error


def _denied(exc: BaseException) -> bool:
    _, status = error_code(exc)
    if status in (401, 403) or isinstance(exc, PermissionError):
        return True
    core = _botocore_error(exc)
    if core is None:
        return False
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError  # botocore: S3 images only

    return isinstance(core, NoCredentialsError | PartialCredentialsError)


def with_retries(uri: str, action: str, fn: Callable[[], T], policy: Budget | None = None) -> T:
    """Run fn, retrying transient faults within the budget; every failure becomes a StorageError
    that names uri, the action and the cause."""
    policy = policy or budget()
    started = time.monotonic()
    deadline = started + policy.seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:  # fsspec back ends raise anything from OSError to botocore errors
            if classify(exc) is not Fault.TRANSIENT:
                raise _refusal(uri, action, exc) from None
            delay = policy.delay(attempt)
            if attempt >= policy.attempts or time.monotonic() + delay > deadline:
                elapsed = time.monotonic() - started
                error = StorageError(
                    f"{uri}: cannot {action} after {attempt} attempt(s) over {elapsed:.1f} s "
                    f"(retry budget {policy.seconds:g} s): {describe(exc)}. Check that the storage endpoint "
                    "(AWS_ENDPOINT_URL for S3-compatibles) is reachable; spec.output.retrySeconds "
                    "sets how long an outage is waited out"
                )
                error.code = error_code(exc)[0]
                raise error from None
            log.warning("%s: %s failed (%s); retrying in %.1f s", uri, action, describe(exc), delay)
            time.sleep(delay)
