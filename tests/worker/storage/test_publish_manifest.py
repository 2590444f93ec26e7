"""manifest.json read back: whatever sits at the output prefix is validated on every read, and a
run that could not publish on top of it fails before any compute with DataError (exit 4),
leaving the prefix as it was; fetch_published checks every file of a published folder.

Against real storage: the moto server for s3://, the local disk for file://."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from factories import job, write_job
from kompression.api.constants import ExitCode
from kompression.cli import main
from kompression.worker.errors import DataError, StorageError
from kompression.worker.storage import objects, publish

pytestmark = pytest.mark.timeout(180)

GOOD = {"version": 1, "runId": "20260101T000000Z-00000000", "createdAt": "2026-01-01T00:00:00Z", "artifacts": []}
BAD = {
    "a-list": ["x"],
    "empty-object": {},
    "a-string": "manifest",
    "not-json": b"{not json",
    "run-id-a-number": {**GOOD, "runId": 5},
    "run-id-a-path": {**GOOD, "runId": "../../elsewhere"},
    "newer-version": {**GOOD, "version": 2},
    "artifacts-an-object": {**GOOD, "artifacts": {"uri": "s3://b/x"}},
    "artifact-without-digest": {**GOOD, "artifacts": [{"name": "m", "kind": "Report", "uri": "s3://b/x"}]},
    "size-a-string": {
        **GOOD,
        "artifacts": [{"name": "m", "kind": "Report", "uri": "s3://b/x", "sha256": "0" * 64, "sizeBytes": "12"}],
    },
}


def _body(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _run(prefix: str, workdir: Path) -> int:
    # The model does not exist: a run that got as far as fetching it would fail with ModelError (3).
    body = job("file://missing-model.pt2", prefix + "/")
    return main(["run", str(write_job(workdir / "job.yaml", body)), "--progress", "json"])


@pytest.mark.parametrize("shape", list(BAD))
def test_a_bad_manifest_fails_the_run_before_any_work(
    workdir: Path, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    out = workdir / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(_body(BAD[shape]))
    assert _run(f"file://{out}", workdir) == ExitCode.DATA_ERROR
    err = capsys.readouterr().err
    assert f"{out}/manifest.json: not a Kompression manifest" in err and "spec.output.uri" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # no runs/, no lock, nothing
    assert (out / "manifest.json").read_bytes() == _body(BAD[shape])
    report = json.loads((workdir / "termination-log").read_text())
    assert report["reason"] == "DataError"


def test_a_bad_manifest_on_s3_fails_the_run_before_any_upload(
    s3: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    prefix = f"s3://{s3.create_bucket()}/out"
    objects.write_bytes(b'["x"]', f"{prefix}/manifest.json")
    assert _run(prefix, workdir) == ExitCode.DATA_ERROR
    assert "manifest.json: not a Kompression manifest (the document: Input should be an object)" in (
        capsys.readouterr().err
    )
    assert objects.list_files(prefix) == ["manifest.json"]


def test_a_bad_rejected_manifest_fails_early_too(workdir: Path) -> None:
    out = workdir / "out"
    (out / "rejected").mkdir(parents=True)
    (out / "rejected" / "manifest.json").write_text("{}")
    assert _run(f"file://{out}", workdir) == ExitCode.DATA_ERROR
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["rejected", "rejected/manifest.json"]


def test_a_good_manifest_lets_the_run_go_on(workdir: Path) -> None:
    out = workdir / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({**GOOD, "job": "earlier", "passed": True}))
    assert _run(f"file://{out}", workdir) == ExitCode.MODEL_ERROR  # the missing model, past the check


def test_every_read_validates_including_the_commit(prefix: str, tmp_path: Path) -> None:
    objects.write_bytes(b"{}", objects.join(prefix, publish.MANIFEST))
    with pytest.raises(DataError, match=r"not a Kompression manifest \(version: Field required"):
        publish.read_manifest(prefix)
    pub = publish.Publisher(prefix)
    report = tmp_path / "report.json"
    report.write_text("{}")
    pub.add(report, "report", "Report")
    with pytest.raises(DataError, match="not a Kompression manifest"):
        pub.commit({})


# --------------------------------------------------------------------------------------------
# fetch_published


def _publish_folder(prefix: str, tmp_path: Path) -> publish.Publisher:
    """A run with a model folder (as the LLM path publishes one, file by file) and a report."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "weights.safetensors").write_bytes(os.urandom(5000))
    pub = publish.Publisher(prefix)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        pub.add(path, "step", "HuggingFaceFile", f"model/{path.relative_to(folder).as_posix()}")
    report = tmp_path / "report.json"
    report.write_text("{}")
    pub.add(report, "report", "Report")
    pub.commit({"passed": True})
    return pub


def test_fetch_published_keeps_the_folder_layout_and_checks_every_file(prefix: str, tmp_path: Path) -> None:
    pub = _publish_folder(prefix, tmp_path)
    fetched = publish.fetch_published(prefix, tmp_path / "fetched")
    assert sorted(fetched) == ["model/config.json", "model/sub/weights.safetensors", "report.json"]
    assert (
        fetched["model/sub/weights.safetensors"].read_bytes()
        == (tmp_path / "model/sub/weights.safetensors").read_bytes()
    )

    # One byte changed inside the published folder, the size kept: the digest catches it.
    tampered = objects.join(pub.run_prefix, "model", "sub", "weights.safetensors")
    body = bytearray(objects.read_bytes(tampered))
    body[100] ^= 1
    objects.write_bytes(bytes(body), tampered)
    with pytest.raises(StorageError, match=r"weights\.safetensors: sha256 mismatch"):
        publish.fetch_published(prefix, tmp_path / "again")


def test_fetch_published_refuses_an_artifact_that_names_a_folder(prefix: str, tmp_path: Path) -> None:
    pub = _publish_folder(prefix, tmp_path)
    uri = objects.join(prefix, publish.MANIFEST)
    manifest = json.loads(objects.read_bytes(uri))
    # A manifest rewritten to name the folder with some file's digest: no digest covers a folder.
    manifest["artifacts"] = [{**manifest["artifacts"][0], "uri": objects.join(pub.run_prefix, "model")}]
    objects.write_bytes(json.dumps(manifest).encode(), uri)
    with pytest.raises(StorageError, match="a sha256 names one file, and this URI is a folder"):
        publish.fetch_published(prefix, tmp_path / "fetched")


def test_fetch_published_refuses_an_artifact_outside_the_run(prefix: str, tmp_path: Path) -> None:
    _publish_folder(prefix, tmp_path)
    elsewhere = objects.join(prefix, "elsewhere.json")
    digest = objects.write_bytes(b"{}", elsewhere)
    uri = objects.join(prefix, publish.MANIFEST)
    manifest = json.loads(objects.read_bytes(uri))
    manifest["artifacts"].append({"name": "x", "kind": "Report", "uri": elsewhere, "sha256": digest, "sizeBytes": 2})
    objects.write_bytes(json.dumps(manifest).encode(), uri)
    with pytest.raises(StorageError, match="names a file outside its run's folder"):
        publish.fetch_published(prefix, tmp_path / "fetched")
    assert not (tmp_path / "fetched" / "elsewhere.json").exists()
