"""Fixtures more than one worker test module uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from encoder_helpers import save_tiny_bert


@pytest.fixture(params=["file", "s3"])
def prefix(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An output prefix on a local folder, then on the test bed's S3 server (its credentials in the
    environment, as the operator's Secret puts them in the worker pod's)."""
    if request.param == "file":
        return f"file://{tmp_path}/out"
    s3 = request.getfixturevalue("s3")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{s3.create_bucket()}/team/model"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder a worker pod runs in: the current directory, with the termination log (what the
    kubelet reads back as the pod's termination message) written there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KOMPRESSION_TERMINATION_LOG", str(tmp_path / "termination-log"))
    return tmp_path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """encoder_helpers' tiny BERT folder, saved once per module: tests that change it change a copy."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "encoder")
