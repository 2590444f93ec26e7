"""The prepared GPU check runs rarely (only when a task is lent a GPU), so its code paths are run
here on CPU with tiny sizes: a renamed helper or a changed signature fails now, not on the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_check_dry_run_runs_every_section(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "gpu_check.py", "--dry-run-cpu"],
        cwd=BENCHMARKS,
        env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["environment"]["dry_run"] is True
    sections = {row["section"].split()[0] for row in result["rows"]}
    assert {"precision", "structured", "sparse24", "int8", "fp8", "distill"} <= sections
    assert not [row for row in result["rows"] if str(row.get("note", "")).startswith(("error", "skipped"))]
    assert "Dry run on CPU" in (tmp_path / "gpu.md").read_text()


def test_gpu_check_without_a_gpu_says_so() -> None:
    proc = subprocess.run(
        [sys.executable, "gpu_check.py"],
        cwd=BENCHMARKS,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
