"""Storage under faults: outages, multipart uploads cut short, permanent refusals, and the
classification behind them. Against the real moto server; outages go through testbed.relay, a
relay that takes the endpoint away while moto keeps what it stores (so leftovers can be counted).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError

from kompression.api.constants import ExitCode
from kompression.worker.errors import StorageError, StorageRefused
from kompression.worker.storage import objects, retry
from kompression.worker.storage.retry import Fault, classify
from testbed.relay import Relay

pytestmark = pytest.mark.timeout(120)
PART = 5 << 20


def _client_error(code: str, status: int, message: str = "") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (_client_error("NoSuchKey", 404), Fault.MISSING),
        (_client_error("NoSuchBucket", 404), Fault.MISSING),
        (_client_error("404", 404), Fault.MISSING),  # HEAD answers carry only the status
        (_client_error("AccessDenied", 403), Fault.REFUSED),
        (_client_error("InvalidAccessKeyId", 403), Fault.REFUSED),
        (_client_error("SignatureDoesNotMatch", 403), Fault.REFUSED),
        (_client_error("ExpiredToken", 400), Fault.REFUSED),
        (_client_error("InvalidBucketName", 400), Fault.REFUSED),
        (_client_error("NotImplemented", 501), Fault.REFUSED),
        (_client_error("PreconditionFailed", 412), Fault.CONFLICT),
        (_client_error("SlowDown", 503), Fault.TRANSIENT),
        (_client_error("RequestTimeout", 400), Fault.TRANSIENT),  # a 400 that botocore retries
        (_client_error("InternalError", 500, "upstream said 403 Forbidden"), Fault.TRANSIENT),  # text is not read
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), Fault.TRANSIENT),
        (ParamValidationError(report='Invalid bucket name "Bad_Bucket!"'), Fault.REFUSED),
        (FileNotFoundError("x"), Fault.MISSING),
        (PermissionError("x"), Fault.REFUSED),
        (ConnectionResetError("x"), Fault.TRANSIENT),
        (ValueError("x"), Fault.REFUSED),  # fsspec's refusal of keys that leave the destination is one
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, Fault) else v.value,
)
def test_faults_are_classified_from_codes_and_classes(exc: BaseException, fault: Fault) -> None:
    assert classify(exc) is fault


def test_translated_errors_are_classified_by_their_cause() -> None:
    """s3fs raises an OSError from the ClientError; the cause decides."""
    try:
        try:
            raise _client_error("SlowDown", 503)
        except ClientError as err:
            raise PermissionError("translated") from err
    except PermissionError as exc:
        assert classify(exc) is Fault.TRANSIENT


def test_budget_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(retry.ENV_RETRY_SECONDS, "soon")
    with pytest.raises(StorageError, match=r"KOMPRESSION_STORAGE_RETRY_SECONDS='soon': expected a number"):
        retry.budget()
    monkeypatch.setenv(retry.ENV_RETRY_SECONDS, "45")
    monkeypatch.setenv(retry.ENV_BACKOFF, "0.2")
    policy = retry.budget()
    assert policy.seconds == 45
    delays = [policy.delay(5) for _ in range(200)]
    assert max(delays) <= 0.2 * 2**4 and len(set(delays)) > 100  # jittered, capped


# --------------------------------------------------------------------------------------------
# against the real server


@pytest.fixture
def s3env(s3: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture
def relay(s3env: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Relay]:
    cut = Relay(s3env.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", cut.endpoint_url)
    monkeypatch.setenv(retry.ENV_TIMEOUT, "5")
    yield cut
    cut.close()


def _big_file(path: Path, size: int) -> Path:
    block = bytes(range(256)) * 4096
    with path.open("wb") as fh:
        for i in range(size // len(block)):
            fh.write(block[i % 7 :] + block[: i % 7])
    return path


def _upload_in_thread(src: Path, uri: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["sha256"] = objects.upload(src, uri)
        except StorageError as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _wait_for_a_part(s3: Any, bucket: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for upload in s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            parts = s3.client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            if parts.get("Parts"):
                return
        time.sleep(0.01)
    raise AssertionError("no multipart upload with a stored part appeared")


def test_s3_outage_of_10s_mid_multipart_upload_is_ridden_out(
    relay: Relay, s3env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOMPRESSION_STORAGE_PART_BYTES", str(PART))
    bucket = s3env.create_bucket()
    src = _big_file(tmp_path / "model.bin", 8 * PART)
    thread, outcome = _upload_in_thread(src, f"s3://{bucket}/runs/r1/model.bin")
    _wait_for_a_part(s3env, bucket)
    relay.cut()
    time.sleep(10)
    relay.restore()
    thread.join(90)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["seconds"] >= 10
    body = s3env.client.get_object(Bucket=bucket, Key="runs/r1/model.bin")["Body"].read()
    assert body == src.read_bytes()
    assert s3env.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_outage_longer_than_the_budget_fails_retryably_and_aborts_the_upload(
    relay: Relay, s3env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOMPRESSION_STORAGE_PART_BYTES", str(PART))
    monkeypatch.setenv(retry.ENV_RETRY_SECONDS, "2")
    bucket = s3env.create_bucket()
    src = _big_file(tmp_path / "model.bin", 8 * PART)
    thread, outcome = _upload_in_thread(src, f"s3://{bucket}/runs/r1/model.bin")
    _wait_for_a_part(s3env, bucket)
    relay.cut()
    time.sleep(8)  # longer than the budget: the upload gives up, its abort keeps trying
    relay.restore()
    thread.join(90)
    error = outcome.get("error")
    assert isinstance(error, StorageError) and not isinstance(error, StorageRefused)
    assert error.exit_code == ExitCode.STORAGE_ERROR and "retry budget 2 s" in error.message
    # Checked at once: the abort happened inside the failing call, after the endpoint came back.
    assert s3env.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError):
        s3env.client.head_object(Bucket=bucket, Key="runs/r1/model.bin")


def test_the_retry_budget_bounds_an_outage(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(retry.ENV_RETRY_SECONDS, "3")
    relay.cut()
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        objects.read_bytes("s3://anything/key")
    elapsed = time.monotonic() - started
    # One attempt may run past the budget: botocore's own tries (at most 1 + 2 s of jittered
    # sleep) and, on a loaded machine, the client's first-call setup.
    assert elapsed < 3 + 8, elapsed
    assert info.value.exit_code == ExitCode.STORAGE_ERROR and "retry budget 3 s" in info.value.message


def test_permanent_refusals_fail_at_once_with_the_permanent_exit_code(
    s3env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(retry.ENV_RETRY_SECONDS, "60")
    bucket = s3env.create_bucket()
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 100)
    cases = {
        "no such key": lambda: objects.read_bytes(f"s3://{bucket}/missing"),
        "no such bucket (read)": lambda: objects.read_bytes("s3://no-such-bucket-kompression/x"),
        "no such bucket (write)": lambda: objects.upload(src, "s3://no-such-bucket-kompression/x"),
        "bad bucket name": lambda: objects.upload(src, "s3://Bad_Bucket!/x"),
    }
    for what, call in cases.items():
        started = time.monotonic()
        with pytest.raises(StorageRefused) as info:
            call()
        assert time.monotonic() - started < 10, what  # not waited out against a 60 s budget
        assert info.value.exit_code == ExitCode.STORAGE_REFUSED, what
        assert ExitCode.STORAGE_REFUSED in ExitCode.PERMANENT
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    s3env.set_auth("0")
    try:
        started = time.monotonic()
        with pytest.raises(StorageRefused, match="access denied") as info:
            objects.upload(src, f"s3://{bucket}/denied.bin")
        assert time.monotonic() - started < 10
        assert info.value.code == "InvalidAccessKeyId"
    finally:
        s3env.set_auth("inf")


UPLOADER = """
import sys
from pathlib import Path
from kompression.worker.storage import objects
objects.upload(Path(sys.argv[1]), sys.argv[2])
"""


def test_sigterm_mid_multipart_upload_aborts_it(s3env: Any, tmp_path: Path) -> None:
    """A deleted or evicted pod gets SIGTERM: the upload in flight is aborted, not left billed."""
    bucket = s3env.create_bucket()
    src = _big_file(tmp_path / "model.bin", 40 * PART)
    env = {
        **os.environ,
        "KOMPRESSION_STORAGE_PART_BYTES": str(PART),
        "PYTHONPATH": str(Path(objects.__file__).parents[3]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, str(src), f"s3://{bucket}/runs/r1/model.bin"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_a_part(s3env, bucket)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert s3env.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_spec_output_retry_seconds_reaches_the_worker(
    relay: Relay, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from factories import job, write_job
    from kompression.cli import main

    monkeypatch.setenv(retry.ENV_RETRY_SECONDS, "60")  # the chart's; the spec's must win
    relay.cut()
    body = job("s3://models/model.pt2", "file://out/")
    body["spec"]["output"]["retrySeconds"] = 1
    code = main(["run", str(write_job(workdir / "job.yaml", body)), "--progress", "json"])
    err = capsys.readouterr().err
    assert code == ExitCode.STORAGE_ERROR and "retry budget 1 s" in err, err[-2000:]
