"""The storage layer: local URIs, S3 round trips under both checksum settings, digests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kompression.worker import storage
from kompression.worker.errors import StorageError


def test_file_uris_relative_absolute_and_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.parse_uri("file://a/b.pt2").path == str(tmp_path / "a" / "b.pt2")
    assert storage.parse_uri("file:///abs/b.pt2").path == "/abs/b.pt2"
    assert storage.parse_uri("rel/c").path == str(tmp_path / "rel" / "c")
    with pytest.raises(StorageError, match="hf://"):
        storage.parse_uri("hf://org/model")


def test_local_upload_download_verifies_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    digest = storage.upload(src, "file://dst/obj.bin")
    assert storage.download("file://dst/obj.bin", tmp_path / "back.bin", digest).read_bytes() == b"x" * 1000
    with pytest.raises(StorageError, match="sha256 mismatch"):
        storage.download("file://dst/obj.bin", tmp_path / "back2.bin", "0" * 64)


@pytest.mark.parametrize("checksums", ["when_required", "when_supported"])
def test_s3_round_trip_under_both_checksum_settings(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checksums: str
) -> None:
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", checksums)
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", checksums)
    options = storage.s3_options()
    assert options["config_kwargs"]["request_checksum_calculation"] == checksums
    bucket = s3.create_bucket()
    src = tmp_path / "model.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    digest = storage.upload(src, f"s3://{bucket}/a/model.bin")
    assert storage.exists(f"s3://{bucket}/a/model.bin")
    assert storage.list_files(f"s3://{bucket}/a") == ["model.bin"]
    back = storage.download(f"s3://{bucket}/a/model.bin", tmp_path / "back.bin", digest)
    assert back.read_bytes() == src.read_bytes()
    with pytest.raises(storage.ObjectNotFound, match=f"s3://{bucket}/missing"):
        storage.read_bytes(f"s3://{bucket}/missing")
    storage.remove(f"s3://{bucket}/a")
    assert storage.list_files(f"s3://{bucket}/a") == []


def test_unknown_checksum_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "always")
    with pytest.raises(StorageError, match=r"AWS_REQUEST_CHECKSUM_CALCULATION='always'.*when_required"):
        storage.s3_options()


def test_optional_backends_missing_say_what_to_install() -> None:
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here, so the missing-backend error cannot occur")
    with pytest.raises(StorageError, match="gcsfs"):
        storage.filesystem("gs")
