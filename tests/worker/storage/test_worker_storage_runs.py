"""`kompression run` end to end through every storage scheme but S3 (test_e2e_worker covers it):
the model and data are downloaded, the artifacts uploaded and the manifest published through
gs:// (fake-gcs-server), az:// (Azurite) and pvc:// (a claim mount mapped to a folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from factories import job, npz, save_tiny, write_job
from kompression.api.constants import ExitCode
from kompression.cli import main
from kompression.worker.data.arrays import digits
from kompression.worker.report.files import load_report
from kompression.worker.storage import objects, publish

pytestmark = pytest.mark.timeout(300)


def _run_through(model_prefix: str, output: str, workdir: Path) -> None:
    """Store a model and its evaluation set under model_prefix, compress with real DynamicInt8, and
    check what was published under output."""
    evaluation = digits("eval")
    objects.upload(save_tiny(workdir / "model.pt2"), f"{model_prefix}/model.pt2")
    objects.upload(npz(workdir / "val.npz", evaluation.inputs["x"], evaluation.labels), f"{model_prefix}/val.npz")
    body = job(
        f"{model_prefix}/model.pt2",
        output,
        data={"evaluation": {"uri": f"{model_prefix}/val.npz", "metric": "Top1Accuracy"}},
    )
    assert main(["run", str(write_job(workdir / "job.yaml", body))]) == ExitCode.OK

    manifest = publish.read_manifest(output)
    assert manifest is not None and manifest["passed"] is True
    fetched = publish.fetch_published(output, workdir / "fetched")  # verifies every sha256
    # DynamicInt8 publishes an int8 ONNX model next to the reports.
    assert {"report.json", "report.md"} <= set(fetched) and any(n.endswith(".onnx") for n in fetched), sorted(fetched)
    report = load_report(fetched["report.json"])
    assert report.result is not None and report.result.compressionRatio is not None
    assert report.result.compressionRatio > 1.5
    baseline = report.result.baseline
    assert baseline is not None and baseline.accuracy is not None and baseline.accuracy > 0.5
    published = objects.list_files(output)
    assert "manifest.json" in published
    assert all(not p.startswith("checkpoints/") for p in published)


def test_run_through_gcs(gcs: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in gcs.env.items():
        monkeypatch.setenv(key, value)
    bucket = gcs.create_bucket("run")
    _run_through(f"gs://{bucket}/models/tiny", f"gs://{bucket}/out/", workdir)


def test_run_through_azure(azurite: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in azurite.env.items():
        monkeypatch.setenv(key, value)
    container = azurite.create_container("run")
    _run_through(f"az://{container}/models/tiny", f"az://{container}/out/", workdir)


def test_run_through_pvc_claims(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = workdir / "mnt-pvc"
    (root / "models").mkdir(parents=True)
    (root / "results").mkdir()
    monkeypatch.setenv("KOMPRESSION_PVC_ROOT", str(root))
    _run_through("pvc://models/tiny", "pvc://results/tiny/", workdir)
    # Nothing but the inputs stored above was written into the input claim.
    assert sorted(p.name for p in (root / "models").rglob("*") if p.is_file()) == ["model.pt2", "val.npz"]
    assert (root / "results" / "tiny" / "manifest.json").is_file()
    assert np.load(root / "models" / "tiny" / "val.npz")["inputs"].shape[1:] == (1, 8, 8)
