"""gpu_check's llm section in the worker-llm environment, on a CPU: the fixture is quantized through
`kompression run` (W4A16 round-to-nearest), and transformers generates with the original and with
the published compressed-tensors folder; vLLM, absent here, is recorded as missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_llm


def test_the_llm_section_quantizes_through_kompression_run_and_measures_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gpu_llm.LLM_PYTHON_ENV, sys.executable)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = {row["candidate"]: row for row in gpu_llm.llm("cpu")}
    step = "{scheme: W4A16, algorithm: RTN}"
    assert rows[f"llmQuantize {step}"]["note"].startswith("kompression run"), rows
    for name in ("original bf16", step):
        measured = rows[f"{name} (transformers)"]
        assert measured["tokens_per_s"] > 0, measured
        assert "transformers generate, cpu float32" in measured["note"]
        vllm = rows[f"{name} (vLLM)"]
        assert "tokens_per_s" in vllm or vllm["note"] == "vllm not installed"
