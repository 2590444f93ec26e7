"""docs/data.md runs as written: its scripts write data sets the worker reads for the inputs the
page declares, and its text job is valid and tokenizes with a model folder's own tokenizer."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kompression.api.v1alpha1 import DataSpec, ModelInput
from kompression.api.validation import parse_job
from kompression.worker.data.arrays import load_datasets

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "data.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), re.S)


def test_the_data_page_examples_run_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for i, script in enumerate(_blocks("python")):
        (tmp_path / f"block{i}.py").write_text(script)
        runpy.run_path(str(tmp_path / f"block{i}.py"))
    declared_block, job_block = (yaml.safe_load(b) for b in _blocks("yaml"))
    declared = [ModelInput.model_validate(i) for i in declared_block["inputs"]]
    job = parse_job(job_block)
    assert job.spec.data is not None
    assert [i.to_wire() for i in job.spec.model.inputs] == [i.to_wire() for i in declared]

    npz = load_datasets(
        DataSpec.model_validate({"evaluation": {"uri": "file://val.npz", "metric": "CosineSimilarity"}}),
        declared,
        lambda uri: tmp_path / "val.npz",
    )
    assert npz.evaluation is not None and len(npz.evaluation) == 256
    assert {k: a.dtype for k, a in npz.evaluation.inputs.items()} == {"input_ids": np.int64, "attention_mask": np.int64}

    sys.path.insert(0, str(REPO / "tests" / "worker"))
    try:
        from encoder_helpers import save_tiny_bert
    finally:
        sys.path.remove(str(REPO / "tests" / "worker"))
    folder = save_tiny_bert(tmp_path / "minilm")
    local = {
        "s3://data/calibration.txt": tmp_path / "calibration.txt",
        "s3://data/sentences.jsonl": tmp_path / "sentences.jsonl",
    }
    text = load_datasets(job.spec.data, declared, local.__getitem__, folder)
    assert text.evaluation is not None and text.calibration is not None
    assert text.evaluation.inputs["input_ids"].shape == (3, 128) and len(text.calibration) == 3
