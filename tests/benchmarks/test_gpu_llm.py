"""gpu_check's llm section on a CPU without llm-compressor and vllm (the main environment, and the
lent GPU machine's image): each missing piece is a row saying so, never a figure, and what can run
(transformers on the original) is measured."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_llm

pytest.importorskip("transformers")


def test_the_llm_section_records_what_is_missing_and_measures_what_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gpu_llm.LLM_PYTHON_ENV, sys.executable)
    if gpu_llm.missing_llmcompressor(sys.executable) is None:
        pytest.skip("this environment has llm-compressor: tests/llm/test_llm_gpu_check.py runs the section here")
    rows = gpu_llm.llm("cpu")
    by_candidate = {row["candidate"]: row for row in rows}
    quantize = by_candidate["llmQuantize {scheme: W4A16, algorithm: RTN}"]
    assert quantize["note"].startswith("not run: llm-compressor is not importable by")
    vllm = by_candidate["original bf16 (vLLM)"]
    if "vllm not installed" in vllm["note"]:
        assert "tokens_per_s" not in vllm
    transformers = by_candidate["original bf16 (transformers)"]
    assert transformers["tokens_per_s"] > 0 and transformers["speedup"] == 1.0
    assert len(rows) == 3  # nothing was quantized, so nothing else is measured
