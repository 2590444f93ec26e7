"""The S3 calls the worker makes with botocore itself, where fsspec cannot say what is needed.

- Uploads: one PUT up to the part size, else a multipart upload whose every failure path (a
  part or the completion failing, a permanent refusal, an interrupt) aborts it, so a storage
  outage never leaves billed, invisible parts behind. The abort keeps trying for at least
  ``CLEANUP_MIN_SECONDS``, so an outage shorter than that is waited out.
- Conditional writes: ``If-Match`` / ``If-None-Match: *`` on PutObject, the publisher's
  compare-and-swap of ``manifest.json``. A server that ignores the headers makes the write
  unconditional; the publisher stays safe then too (see publish.py).

Each request is retried by botocore's standard mode first (``BOTOCORE_ATTEMPTS``, jittered), and
the call as a whole by ``storage_retry.with_retries`` within the job's budget.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from kompression.worker.errors import StorageError
from kompression.worker.storage.retry import ObjectNotFound, budget, with_retries

log = logging.getLogger(__name__)

ENV_PART_BYTES = "KOMPRESSION_STORAGE_PART_BYTES"
MIN_PART_BYTES = 5 << 20  # S3's smallest part but the last
DEFAULT_PART_BYTES = 16 << 20


def part_bytes() -> int:
    raw = os.environ.get(ENV_PART_BYTES, "")
    try:
        value = int(raw) if raw.strip() else DEFAULT_PART_BYTES
    except ValueError:
        raise StorageError(f"{ENV_PART_BYTES}={raw!r}: expected a number of bytes") from None
    if value < MIN_PART_BYTES:
        raise StorageError(f"{ENV_PART_BYTES}={raw!r}: S3 parts are at least {MIN_PART_BYTES} bytes")
    return value


@functools.lru_cache(maxsize=4)
def _client(options_json: str) -> Any:
    # botocore: only in images with S3 support, and only once S3 is used
    import botocore.config
    import botocore.session

    options = json.loads(options_json)
    config = botocore.config.Config(**options["config_kwargs"])
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=options.get("endpoint_url"),
        region_name=(options.get("client_kwargs") or {}).get("region_name"),
        aws_access_key_id=options.get("key"),
        aws_secret_access_key=options.get("secret"),
        aws_session_token=options.get("token"),
        config=config,
    )


def client(options: dict[str, Any]) -> Any:
    """A botocore S3 client for s3fs-style options, made once per distinct configuration."""
    return _client(json.dumps(options, sort_keys=True, default=str))


def split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


def put_file(s3: Any, uri: str, path: str, src: Path) -> None:
    """Upload src to the bucket/key path; multipart above the part size, aborted on any failure."""
    bucket, key = split(path)
    size = src.stat().st_size
    part = part_bytes()
    if size <= part:
        body = src.read_bytes()
        with_retries(uri, "upload", lambda: s3.put_object(Bucket=bucket, Key=key, Body=body))
        return
    with _terminate_raises():
        _multipart(s3, uri, bucket, key, src, part=part)


def _multipart(s3: Any, uri: str, bucket: str, key: str, src: Path, *, part: int) -> None:
    upload_id: str | None = None
    try:
        created = with_retries(
            uri, "start a multipart upload", lambda: s3.create_multipart_upload(Bucket=bucket, Key=key)
        )
        upload_id = str(created["UploadId"])
        parts = []
        with src.open("rb") as fh:
            for number in range(1, 10_001):
                chunk = fh.read(part)
                if not chunk:
                    break
                answer = with_retries(
                    uri,
                    f"upload part {number}",
                    functools.partial(
                        s3.upload_part, Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                    ),
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        with_retries(
            uri,
            "complete the multipart upload",
            lambda: s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            ),
        )
    except BaseException:
        if upload_id is not None:
            abort(s3, uri, bucket, key, upload_id)
        raise


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """Turn SIGTERM (pod deletion, eviction, a deadline) into SystemExit while a multipart upload
    runs, so that its abort runs too; by default the signal would end the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, _: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def abort(s3: Any, uri: str, bucket: str, key: str, upload_id: str) -> None:
    """Abort one multipart upload; a failure is logged, never raised over the error that caused it."""
    try:
        with_retries(
            uri,
            "abort the unfinished multipart upload",
            lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
            budget().for_cleanup(),
        )
    except ObjectNotFound:
        pass  # already gone: completed, aborted, or forgotten by the server
    except StorageError as exc:
        log.error("%s: multipart upload %s could not be aborted and stays billed: %s", uri, upload_id, exc)


def get_versioned(s3: Any, uri: str, path: str) -> tuple[bytes, str]:
    """The object's bytes and its ETag; ObjectNotFound when there is none."""
    bucket, key = split(path)

    def get() -> tuple[bytes, str]:
        answer = s3.get_object(Bucket=bucket, Key=key)
        with answer["Body"] as body:
            return bytes(body.read()), str(answer["ETag"])

    return with_retries(uri, "read", get)


def put_bytes_if(s3: Any, uri: str, path: str, data: bytes, etag: str | None) -> None:
    """PUT data only if the object still has etag (None: only if there is no object yet)."""
    bucket, key = split(path)
    condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
    with_retries(uri, "write", lambda: s3.put_object(Bucket=bucket, Key=key, Body=data, **condition))
