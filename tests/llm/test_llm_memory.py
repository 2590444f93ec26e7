"""The memory plan of an LLM job in the worker-llm environment: `kompression run` refuses a pod too
small for it before reading a weight or a line of text, and a run's plan (report.json's memoryPlan)
is within 25% of the resident peak its calibration measured (the step's peakMemoryBytes).
conftest.py compares the two for every LLM test's run; benchmarks/bench_llm_memory.py records them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from llm_jobs import Run, Texts, job_yaml, kompression_run, write_job

from kompression.api.constants import ExitCode

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")


def test_a_pod_too_small_for_the_plan_is_refused_before_anything_is_read(texts: Texts, tmp_path: Path) -> None:
    doc = yaml.safe_load(job_yaml(texts, "{scheme: W4A16, algorithm: GPTQ}"))
    doc["spec"]["resources"]["memory"] = "256Mi"
    doc["spec"]["data"]["calibration"]["uri"] = f"file://{tmp_path}/no-such-text.txt"
    proc = kompression_run(write_job(tmp_path, doc))
    assert proc.returncode == ExitCode.INVALID_SPEC, proc.stderr
    assert "spec.resources.memory 256Mi is less than the" in proc.stderr
    assert "GiB of host memory planned; raise it, or lower the need with" in proc.stderr
    assert "no-such-text" not in proc.stderr  # refused before the data was read


def test_the_plan_is_within_a_quarter_of_the_measured_peak(texts: Texts, tmp_path: Path) -> None:
    run = Run(
        kompression_run(write_job(tmp_path, job_yaml(texts, "{scheme: W4A16, algorithm: GPTQ}"))), tmp_path / "out"
    )
    assert run.proc.returncode == 0, run.proc.stderr
    planned = run.report["memoryPlan"]
    measured = run.notes()["peakMemoryBytes"]
    assert abs(planned["hostBytes"] / measured - 1) < 0.25, (planned, measured)
    assert planned["gpuBytes"] == 0  # resources.gpus: 0
    assert planned["scratchBytes"] > run.notes()["weightsBytes"]
