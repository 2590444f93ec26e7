"""The LLM path's tests run in the worker-llm environment (.venv-llm: llm-compressor with its own
torch): `make test-llm`, which `make test` runs, calls `.venv-llm/bin/pytest tests/llm
--confcutdir=tests/llm`. In the main environment they are skipped, since llm-compressor cannot be
installed there (it pins torch <= 2.14); tests/test_missing_extras.py covers what `kompression run`
says in that environment instead."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ itself, for the helpers both environments' tests share (hostile.py); tests/conftest.py,
# which puts it there for the main suite, is outside --confcutdir.
_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.append(_TESTS_DIR)

from llm_jobs import Texts  # noqa: E402

from kompression.worker.llm.tiny_llama import paragraphs  # noqa: E402


@pytest.fixture(scope="session")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Texts:
    """The fixture model's split of Debian's license texts (example_model.build makes the same one)."""
    folder = tmp_path_factory.mktemp("text")
    everything = paragraphs()
    held_out = everything[::10]
    train = [t for i, t in enumerate(everything) if i % 10]
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "eval.txt").write_text("\n".join(held_out) + "\n")
    (folder / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in held_out))
    return Texts(folder / "train.txt", folder / "eval.txt", folder / "eval.jsonl")


# (report.json, step, planned host bytes, measured peak bytes) of every LLM test's run, for the summary.
MEMORY_PLANS: list[tuple[str, str, int, int]] = []
# A file to which the comparison is also written as JSON lines, when set.
MEMORY_RECORD_ENV = "KOMPRESSION_MEMORY_RECORD"


@pytest.fixture(scope="session", autouse=True)
def memory_plans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the session: every run's memory plan (report.json's memoryPlan, written before the
    weights were read) beside the resident peak its LLM steps measured (their peakMemoryBytes)."""
    yield
    for report_path in sorted(tmp_path_factory.getbasetemp().rglob("runs/*/report.json")):
        report = json.loads(report_path.read_text())
        planned = (report.get("memoryPlan") or {}).get("hostBytes")
        for model in (report.get("details") or {}).get("models", []):
            peak = (model.get("notes") or {}).get("peakMemoryBytes")
            if planned and peak and (model.get("notes") or {}).get("peakMemoryDevice") == "CPU":
                MEMORY_PLANS.append((str(report_path), model["name"], planned, peak))
    record = os.environ.get(MEMORY_RECORD_ENV)
    if record:
        with open(record, "a") as f:
            for path, step, planned, peak in MEMORY_PLANS:
                f.write(json.dumps({"report": path, "step": step, "planned": planned, "measured": peak}) + "\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not MEMORY_PLANS:
        return
    terminalreporter.section("memory plan against the measured peak (host, MiB)")
    for path, step, planned, peak in MEMORY_PLANS:
        terminalreporter.write_line(
            f"{planned / 2**20:8.0f} planned {peak / 2**20:8.0f} measured {planned / peak - 1:+7.1%}  {step}  {path}"
        )
    worst = max(abs(p / m - 1) for _, _, p, m in MEMORY_PLANS)
    terminalreporter.write_line(f"largest error {worst:.1%} over {len(MEMORY_PLANS)} steps (aim: within 25%)")
