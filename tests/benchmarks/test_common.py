"""benchmarks/common's report helpers, which every benchmark's results go through (the benchmarks
themselves are too slow to run here): a section is written where run_all.py gathers RESULTS.md from,
and printed; and every benchmark still imports, so a renamed helper fails here, not in `make bench`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import common
import run_all

BENCHMARKS = Path(common.__file__).parent


def test_a_written_report_is_printed_and_gathered_into_results_md(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(run_all, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    operator = common.write_report("operator", "## Operator\n\nmeasured\n")
    pruning = common.write_report(
        "pruning", common.table_section("(a) Pruning", ["model", "ms"], [["dense", 1.5]], "x")
    )
    assert operator == tmp_path / "results" / "operator.md"
    assert operator.read_text() == "## Operator\n\nmeasured\n"
    assert capsys.readouterr().out == operator.read_text() + "\n" + pruning.read_text() + "\n"
    run_all.collect()
    gathered = (tmp_path / "RESULTS.md").read_text()
    assert gathered.index("# (a) Pruning") < gathered.index("## Operator")  # run_all's order, not the writing order


def test_a_table_section_has_its_title_the_machine_one_table_and_its_notes() -> None:
    text = common.table_section("(z) Title", ["model", "ms"], [["dense", 2.0], ["pruned", "1.0"]], "\n  How.  \n")
    lines = text.split("\n")
    assert lines[:2] == ["# (z) Title", ""]
    assert lines[2].startswith("Machine: ") and f"{common.THREADS} threads" in lines[2]
    assert lines[3:] == ["", "| model | ms |", "|---|---|", "| dense | 2.0 |", "| pruned | 1.0 |", "", "How.", ""]


@pytest.mark.timeout(300)
def test_every_benchmark_imports() -> None:
    names = sorted(p.stem for p in BENCHMARKS.glob("*.py"))
    proc = subprocess.run(
        [sys.executable, "-c", "import importlib, sys\nfor n in sys.argv[1:]: importlib.import_module(n)", *names],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_interleaved_medians_count_the_calling_threads_cpu_apart_from_the_wall_clock() -> None:
    def busy() -> None:  # 5 ms of this thread's own CPU
        until = time.thread_time() + 0.005
        while time.thread_time() < until:
            pass

    medians = common.interleaved_medians({"sleep": lambda: time.sleep(0.02), "busy": busy}, 3, inner=2, warmup=1)

    assert medians["sleep"].wall_ms >= 20
    assert medians["sleep"].thread_cpu_ms < 5
    assert medians["busy"].thread_cpu_ms >= 5
    assert common.interleaved_ms({"sleep": lambda: time.sleep(0.02)}, 2, inner=1, warmup=0)["sleep"] >= 20
