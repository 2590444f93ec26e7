"""`kompression run --nproc-per-node N`: torchrun ranks, DDP distillation, one publisher, and the
worker's own exit code preserved for the Job's podFailurePolicy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factories import job, save_tiny, write_job
from kompression.api.constants import ExitCode

pytestmark = pytest.mark.slow


def _run(job_file: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kompression", "run", str(job_file), "--progress", "json", "--nproc-per-node", "2"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        check=False,
    )


def test_two_ranks_distill_with_ddp_and_publish_once(tmp_path: Path) -> None:
    model = save_tiny(tmp_path / "tiny.pt2")
    steps = [
        {"name": "prune", "prune": {"method": "L1Structured", "sparsity": 0.5}},
        {"name": "distill", "distill": {"student": {"fromStep": "prune"}, "epochs": 1, "batchSize": 128}},
    ]
    body = job(f"file://{model}", f"file://{tmp_path}/out/", steps)
    body["spec"]["data"]["training"] = {"builtin": "Digits"}
    proc = _run(write_job(tmp_path / "job.yaml", body), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["phase"] for e in events if e["event"] == "Finished"] == ["Succeeded"]  # rank 0 alone speaks
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 1
    report_uri = next(a["uri"] for a in manifest["artifacts"] if a["name"] == "report" and a["uri"].endswith(".json"))
    report = json.loads(Path(report_uri.removeprefix("file://")).read_text())
    distill = next(s for s in report["steps"] if s["name"] == "distill")
    assert "worldSize=2" in distill["message"]


def test_a_permanent_error_keeps_its_exit_code_through_torchrun(tmp_path: Path) -> None:
    body = job(f"file://{tmp_path}/missing.pt2", f"file://{tmp_path}/out/")
    proc = _run(write_job(tmp_path / "job.yaml", body), tmp_path)
    assert proc.returncode == ExitCode.MODEL_ERROR, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_every_rank_takes_rank_zeros_timed_choice(tmp_path: Path) -> None:
    # Each rank times the memory layouts for itself; had they kept their own answers, DDP would
    # refuse the student (its parameters' strides must match across ranks). agree() hands every
    # rank rank 0's value, here made to differ on purpose.
    # Each rank writes its own file: two processes printing to one pipe can interleave their lines.
    script = tmp_path / "agree.py"
    script.write_text(
        "import os, pathlib, sys\n"
        "from kompression.worker import distributed\n"
        "rank = os.environ['RANK']\n"
        "mine = 'rank' + rank\n"
        "chosen = distributed.agree(mine, 'cpu')\n"
        "pathlib.Path(sys.argv[1], 'rank' + rank + '.txt').write_text(f'{rank} {mine} {chosen}')\n"
        "distributed.leave_group()\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(script),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / f"rank{rank}.txt").read_text().split() for rank in (0, 1))
    assert results == [["0", "rank0", "rank0"], ["1", "rank1", "rank0"]]
