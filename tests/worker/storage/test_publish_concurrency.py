"""Publication with several publishers on one prefix, and confinement of file:// prefixes.

Each scheme runs against real storage: the moto server for s3://, the local disk for file://.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from kompression.worker.errors import StorageRefused
from kompression.worker.storage import objects, publish

pytestmark = pytest.mark.timeout(180)
OPERATOR_DIR = str(Path(publish.__file__).resolve().parents[3])


def _file(tmp: Path, name: str) -> Path:
    path = tmp / f"{uuid.uuid4().hex}-{name}"
    path.write_bytes(os.urandom(3000))
    return path


def test_a_commit_never_deletes_a_run_another_publisher_is_uploading(prefix: str, tmp_path: Path) -> None:
    first, second = publish.Publisher(prefix), publish.Publisher(prefix)
    second.add(_file(tmp_path, "model.onnx"), "model", "ONNXModel")  # second is mid-upload...
    first.add(_file(tmp_path, "model.onnx"), "model", "ONNXModel")
    first.commit({})  # ...when first commits and cleans up
    second.add(_file(tmp_path, "report.json"), "report", "Report")
    second.commit({})
    manifest = publish.read_manifest(prefix)
    assert manifest is not None and manifest["runId"] == second.run_id
    assert manifest["previousRunId"] == first.run_id
    fetched = publish.fetch_published(prefix, tmp_path / "fetched")  # every file there, every sha256 right
    assert len(fetched) == 2


def test_cleanup_keeps_two_generations_and_drops_the_older(prefix: str, tmp_path: Path) -> None:
    ids = []
    for _ in range(4):
        pub = publish.Publisher(prefix)
        pub.add(_file(tmp_path, "model.onnx"), "model", "ONNXModel")
        pub.commit({})
        ids.append(pub.run_id)
    runs = {rel.split("/", 1)[0] for rel in objects.list_files(objects.join(prefix, publish.RUNS))}
    assert runs == set(ids[-2:])


def test_a_lost_race_rereads_the_winner_and_goes_on_top(prefix: str, tmp_path: Path) -> None:
    uri = objects.join(prefix, publish.MANIFEST)
    objects.write_bytes(b'{"runId": "a"}', uri)
    _, version = objects.read_versioned(uri)
    objects.write_bytes(b'{"runId": "b"}', uri)  # another publisher got there first
    with objects.publish_lock(prefix), pytest.raises(objects.WriteConflict):
        objects.write_if(b'{"runId": "c"}', uri, version, exists=True)
    with objects.publish_lock(prefix), pytest.raises(objects.WriteConflict):
        objects.write_if(b'{"runId": "c"}', uri, None, exists=False)
    assert json.loads(objects.read_bytes(uri)) == {"runId": "b"}


def test_runs_no_manifest_names_are_deleted_only_when_abandoned(prefix: str, tmp_path: Path) -> None:
    runs = objects.join(prefix, publish.RUNS)
    crashed = "20000101T000000Z-0badc0de"  # a run that died a long time ago
    young = publish.new_run_id()  # maybe someone's upload in progress
    for run_id in (crashed, young, "not-a-run"):
        objects.upload(_file(tmp_path, "x"), objects.join(runs, run_id, "x"))
    pub = publish.Publisher(prefix)
    pub.add(_file(tmp_path, "model.onnx"), "model", "ONNXModel")
    pub.commit({})
    left = {rel.split("/", 1)[0] for rel in objects.list_files(runs)}
    assert left == {young, "not-a-run", pub.run_id}


PUBLISHER = textwrap.dedent(
    """
    import os, sys, uuid
    from pathlib import Path
    from kompression.worker.storage import publish
    prefix, tmp, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    for i in range(rounds):
        pub = publish.Publisher(prefix)
        for k in range(3):
            path = tmp / f"{uuid.uuid4().hex}.bin"
            path.write_bytes(os.urandom(4000))
            pub.add(path, f"part{k}", "Report")
        pub.commit({"round": i})
    """
)


def test_two_concurrent_publisher_processes(prefix: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": OPERATOR_DIR}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, prefix, str(tmp_path), "4"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    broken: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        """A reader throughout: the current manifest must always name files that exist."""
        while not stop.is_set():
            manifest = publish.read_manifest(prefix)
            if manifest is not None:
                run = objects.join(prefix, publish.RUNS, manifest["runId"])
                present = {objects.join(run, rel) for rel in objects.list_files(run)}
                missing = [a["uri"] for a in manifest["artifacts"] if a["uri"] not in present]
                again = publish.read_manifest(prefix)
                if missing and again is not None and again["runId"] == manifest["runId"]:
                    broken.append(f"{manifest['runId']} names missing {missing}")
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=150)
            assert proc.returncode == 0, err[-3000:]
    finally:
        stop.set()
        watcher.join()
    assert broken == []
    publish.fetch_published(prefix, tmp_path / "fetched")


# --------------------------------------------------------------------------------------------
# file:// confinement


def test_a_symlinked_runs_folder_is_refused_and_nothing_outside_is_touched(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (outside / "20000101T000000Z-0badc0de").mkdir()  # looks like an abandoned run
    (outside / "20000101T000000Z-0badc0de" / "data").write_text("also mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs").symlink_to(outside)
    pub = publish.Publisher(f"file://{out}")
    with pytest.raises(StorageRefused, match=r"symbolic link.*outside"):
        pub.add(_file(tmp_path, "model.onnx"), "model", "ONNXModel")
    assert sorted(p.name for p in outside.iterdir()) == ["20000101T000000Z-0badc0de", "keep.txt"]
    assert (outside / "20000101T000000Z-0badc0de" / "data").read_text() == "also mine"


def test_a_symlinked_old_run_is_not_followed_by_cleanup(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    runs = tmp_path / "out" / "runs"
    runs.mkdir(parents=True)
    (runs / "20000101T000000Z-0badc0de").symlink_to(outside)
    pub = publish.Publisher(f"file://{tmp_path / 'out'}")
    pub.add(_file(tmp_path, "model.onnx"), "model", "ONNXModel")
    pub.commit({})
    assert (outside / "keep.txt").read_text() == "mine"
    assert publish.read_manifest(f"file://{tmp_path / 'out'}") is not None


def test_a_symlinked_checkpoints_folder_is_refused(tmp_path: Path) -> None:
    import torch  # here, not at the top: the other tests of this module run without torch

    from kompression.api.v1alpha1 import Step
    from kompression.worker.trial import Checkpoints

    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoints").symlink_to(outside)
    checkpoints = Checkpoints(
        f"file://{out}", [Step.model_validate({"name": "q", "quantize": {"method": "DynamicInt8"}})]
    )
    with pytest.raises(StorageRefused, match="symbolic link"):
        checkpoints.save("q", "state", {"w": torch.zeros(1)})
    with pytest.raises(StorageRefused, match="symbolic link"):
        checkpoints.clear()
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
