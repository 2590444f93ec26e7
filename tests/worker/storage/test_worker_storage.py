"""The storage layer: local and pvc:// URIs, round trips against S3 (both checksum settings), GCS
and Azure emulators on loopback, digests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from kompression.worker.errors import StorageError
from kompression.worker.storage import objects


def test_file_uris_relative_absolute_and_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert objects.parse_uri("file://a/b.pt2").path == str(tmp_path / "a" / "b.pt2")
    assert objects.parse_uri("file:///abs/b.pt2").path == "/abs/b.pt2"
    assert objects.parse_uri("rel/c").path == str(tmp_path / "rel" / "c")
    with pytest.raises(StorageError, match="not hf://"):
        objects.parse_uri("hf://org/model")


def test_local_upload_download_verifies_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    digest = objects.upload(src, "file://dst/obj.bin")
    assert objects.download("file://dst/obj.bin", tmp_path / "back.bin", digest).read_bytes() == b"x" * 1000
    with pytest.raises(StorageError, match="sha256 mismatch"):
        objects.download("file://dst/obj.bin", tmp_path / "back2.bin", "0" * 64)


@pytest.mark.parametrize("checksums", ["when_required", "when_supported"])
def test_s3_round_trip_under_both_checksum_settings(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checksums: str
) -> None:
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", checksums)
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", checksums)
    options = objects.s3_options()
    assert options["config_kwargs"]["request_checksum_calculation"] == checksums
    bucket = s3.create_bucket()
    src = tmp_path / "model.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    digest = objects.upload(src, f"s3://{bucket}/a/model.bin")
    assert objects.exists(f"s3://{bucket}/a/model.bin")
    assert objects.list_files(f"s3://{bucket}/a") == ["model.bin"]
    back = objects.download(f"s3://{bucket}/a/model.bin", tmp_path / "back.bin", digest)
    assert back.read_bytes() == src.read_bytes()
    with pytest.raises(objects.ObjectNotFound, match=f"s3://{bucket}/missing"):
        objects.read_bytes(f"s3://{bucket}/missing")
    objects.remove(f"s3://{bucket}/a")
    assert objects.list_files(f"s3://{bucket}/a") == []


def test_unknown_checksum_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "always")
    with pytest.raises(StorageError, match=r"AWS_REQUEST_CHECKSUM_CALCULATION='always'.*when_required"):
        objects.s3_options()


@pytest.mark.parametrize(("protocol", "package"), [("gs", "gcsfs"), ("az", "adlfs")])
def test_backends_missing_from_an_image_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, protocol: str, package: str
) -> None:
    # The worker extra installs both; an image built without it is the fault simulated here.
    monkeypatch.setitem(sys.modules, package, None)
    # An earlier gs:// or az:// test may have imported the back end already: forget that too.
    monkeypatch.setitem(sys.modules, f"{package}.core", None)
    # (fsspec's package attribute `registry` is a read-only view; the module holds the dict.)
    monkeypatch.delitem(importlib.import_module("fsspec.registry")._registry, protocol, raising=False)
    with pytest.raises(StorageError, match=f"pip install {package}"):
        objects.filesystem(protocol)


# --------------------------------------------------------------------------------------------
# pvc://: files under the claim's mount


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the Job's /mnt/pvc with the claims `models` and `results` mounted."""
    root = tmp_path / "mnt-pvc"
    (root / "models").mkdir(parents=True)
    (root / "results").mkdir()
    monkeypatch.setenv("KOMPRESSION_PVC_ROOT", str(root))
    return root


def test_pvc_uris_read_and_write_under_the_claims_mount(claims: Path, tmp_path: Path) -> None:
    assert objects.parse_uri("pvc://models/a/model.pt2").path == str(claims / "models" / "a" / "model.pt2")
    assert objects.parse_uri("pvc://results").path == str(claims / "results")
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights" * 100)
    digest = objects.upload(src, "pvc://results/run/model.bin")
    assert (claims / "results" / "run" / "model.bin").read_bytes() == src.read_bytes()
    assert objects.list_files("pvc://results/run") == ["model.bin"]
    assert objects.read_bytes("pvc://results/run/model.bin") == src.read_bytes()
    back = objects.download("pvc://results/run/model.bin", tmp_path / "back.bin", digest)
    assert back.read_bytes() == src.read_bytes()
    objects.remove("pvc://results/run")
    assert objects.list_files("pvc://results/run") == []


def test_pvc_claim_that_is_not_mounted_is_named_with_the_fix(claims: Path) -> None:
    with pytest.raises(
        StorageError, match=r"claim 'scratch' is not mounted at .*mnt-pvc/scratch.*KOMPRESSION_PVC_ROOT"
    ):
        objects.parse_uri("pvc://scratch/x.npz")


def test_pvc_default_root_is_where_the_operator_mounts_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KOMPRESSION_PVC_ROOT", raising=False)
    with pytest.raises(StorageError, match="not mounted at /mnt/pvc/models"):
        objects.parse_uri("pvc://models/m.pt2")


@pytest.mark.parametrize("uri", ["pvc://models/../results/x", "pvc://models/a/../../../etc/passwd"])
def test_pvc_paths_cannot_leave_the_claim(claims: Path, uri: str) -> None:
    with pytest.raises(StorageError, match="leaves the claim's volume"):
        objects.parse_uri(uri)


# --------------------------------------------------------------------------------------------
# gs:// and az:// against their emulators


def _round_trip(scheme: str, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    digest = objects.upload(src, f"{scheme}://{bucket}/a/model.bin")
    objects.write_bytes(b'{"k": 1}', f"{scheme}://{bucket}/a/sub/manifest.json")
    assert objects.exists(f"{scheme}://{bucket}/a/model.bin")
    assert objects.list_files(f"{scheme}://{bucket}/a") == ["model.bin", "sub/manifest.json"]
    back = objects.download(f"{scheme}://{bucket}/a/model.bin", tmp_path / "back.bin", digest)
    assert back.read_bytes() == src.read_bytes()
    folder = objects.download(f"{scheme}://{bucket}/a/sub", tmp_path / "folder")
    assert (folder / "manifest.json").read_bytes() == b'{"k": 1}'
    assert objects.read_bytes(f"{scheme}://{bucket}/a/sub/manifest.json") == b'{"k": 1}'
    with pytest.raises(objects.ObjectNotFound, match=f"{scheme}://{bucket}/missing"):
        objects.read_bytes(f"{scheme}://{bucket}/missing")
    objects.remove(f"{scheme}://{bucket}/a")
    assert objects.list_files(f"{scheme}://{bucket}/a") == []


def test_gcs_round_trip_against_fake_gcs_server(gcs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in gcs.env.items():
        monkeypatch.setenv(key, value)
    _round_trip("gs", gcs.create_bucket(), tmp_path)


def test_azure_round_trip_against_azurite(azurite: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in azurite.env.items():
        monkeypatch.setenv(key, value)
    _round_trip("az", azurite.create_container(), tmp_path)
