"""Progress: termination message size, pushgateway metrics."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from factories import job
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import Artifact, Metrics
from kompression.api.validation import parse_job
from kompression.worker.report.live import Reporter, compact


def test_compact_report_fits_the_termination_limit() -> None:
    artifacts = [
        Artifact(name=f"a{i}", kind="Plot", uri="s3://b/" + "p" * 200, sha256="0" * 64, sizeBytes=1) for i in range(40)
    ]
    report = WorkerReport(phase="Failed", reason="GateFailed", message="m" * 4000, artifacts=artifacts)
    text = compact(report)
    assert len(text.encode()) < 4096
    back = WorkerReport.model_validate_json(text)
    assert back.reason == "GateFailed" and back.message


def test_termination_message_written_on_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMPRESSION_TERMINATION_LOG", str(tmp_path / "log"))
    reporter = Reporter(parse_job(job("file://m.pt2", "file://out/")), mode="quiet")
    reporter.finish("Failed", "ModelError", "spec.model.uri: file://m.pt2 does not exist")
    back = WorkerReport.model_validate_json((tmp_path / "log").read_text())
    assert back.phase == "Failed" and back.reason == "ModelError" and "does not exist" in (back.message or "")


def test_a_running_steps_status_message_says_where_it_is_until_it_finishes() -> None:
    """The LLM steps report "layer i of N, ETA ...": status.steps[].message carries it while the
    step runs, and the step's summary replaces it when it finishes."""
    reporter = Reporter(parse_job(job("file://m.pt2", "file://out/")), mode="quiet")
    name = reporter.steps[0].name
    reporter.step_started(name)
    reporter.step_progress(name, 0.5, "layer 2 of 3, ETA 4s")
    assert reporter.report.steps[0].message == "layer 2 of 3, ETA 4s"
    reporter.step_finished(name, Metrics(sizeBytes=1), "W4A16 GPTQ")
    assert reporter.report.steps[0].message == "W4A16 GPTQ"


def test_step_metrics_reach_the_pushgateway(pushgateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMPRESSION_PUSHGATEWAY_URL", pushgateway.url)
    reporter = Reporter(parse_job(job("file://m.pt2", "file://out/")), mode="quiet")
    reporter.step_started("shrink")
    reporter.step_finished("shrink", Metrics(sizeBytes=1234, accuracy=0.97, latencyMs=0.5, parameters=10))
    with urllib.request.urlopen(f"{pushgateway.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("kompression_step_size_bytes{"))
    assert 'compressionjob="t"' in line and 'namespace="ns"' in line and 'step="shrink"' in line
    assert line.rsplit(" ", 1)[1] in ("1234", "1234.0")
    pushgateway.wipe()


def test_libraries_logged_keeps_the_terminal_for_the_bar(tmp_path: Path) -> None:
    # In bar mode, library output from Python and C++ would tear the bar apart mid-line: it goes to
    # the log, while the bar and Kompression's own errors keep the real stdout and stderr.
    log = tmp_path / "libraries.log"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from kompression.worker.report.live import libraries_logged\n"
        f"with libraries_logged(Path({str(log)!r})) as (out, err):\n"
        "    print('library chatter')\n"
        "    print('library warning', file=sys.stderr)\n"
        "    os.write(1, b'native chatter\\n')\n"
        "    os.write(2, b'native warning\\n')\n"
        "    out.write('[####] 100%\\n')\n"
        "    err.write('error: ours\\n')\n"
        "print('after')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert proc.stdout == "[####] 100%\nafter\n"
    assert proc.stderr == "error: ours\n"
    # Python's buffered stdout reaches the log when the guard flushes it, so order is not asserted.
    assert sorted(log.read_text().splitlines()) == [
        "library chatter",
        "library warning",
        "native chatter",
        "native warning",
    ]


def test_reserved_stdout_keeps_library_prints_out_of_the_json_stream() -> None:
    # onnxruntime's calibrator prints to stdout from Python and C++; a consumer parsing the
    # JSON lines must see none of it.
    script = (
        "import os, sys\n"
        "from kompression.worker.report.live import reserved_stdout\n"
        "with reserved_stdout() as out:\n"
        "    print('library chatter')\n"
        "    os.write(1, b'native chatter\\n')\n"
        '    out.write(\'{"event": "stepStarted"}\\n\')\n'
        "print('after')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert proc.stdout == '{"event": "stepStarted"}\nafter\n'
    assert "library chatter" in proc.stderr
    assert "native chatter" in proc.stderr
