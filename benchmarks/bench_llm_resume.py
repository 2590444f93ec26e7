"""Benchmark (i3): what resuming a killed llmQuantize calibration saves. On the tiny Llama of
benchmark (i), side by side in each round: an uninterrupted `kompression run` (GPTQ W4A16), and the
same job SIGKILLed as it starts its last decoder layer, then run again, which resumes from the
layer checkpoints (worker/llm/resume.py). A restart from scratch, what a killed job did before,
is the killed attempt plus one uninterrupted run. Runs in the worker-llm environment
(`make setup-llm`; run_all.py starts it with .venv-llm's python), reusing bench_llm's job writer.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_llm import cpu, environment, timed  # puts tests/llm on the path, for llm_jobs
from common import THREADS, markdown_table, write_report
from kompression.worker.llm.tiny_llama import paragraphs

from llm_jobs import Texts, job_yaml, write_job  # isort: skip

ROUNDS = 2
STEP = "{scheme: W4A16, algorithm: GPTQ}"
LAYERS = 3  # the fixture's decoder layers
KILL_AT = f"layer {LAYERS} of {LAYERS}"


def command(job: Path) -> list[str]:
    return [sys.executable, "-m", "kompression", "run", str(job), "--progress", "json"]


def run(work: Path, name: str, text: Texts) -> dict[str, Any]:
    """`kompression run` of the tests' job (tests/llm/llm_jobs.py) for the step, in work/name: its
    wall seconds and the step's notes."""
    job = write_job(work / name, job_yaml(text, STEP))
    _, wall, _ = timed(command(job), environment(work), work / f"{name}.log")
    out = work / name / "out"
    report = json.loads(
        (out / "runs" / json.loads((out / "manifest.json").read_text())["runId"] / "report.json").read_text()
    )
    return {"seconds": wall, "notes": report["details"]["models"][-1]["notes"]}


def killed(work: Path, name: str, text: Texts) -> float:
    """The same job, SIGKILLed as it reports KILL_AT; its wall seconds until then."""
    started = time.monotonic()
    proc = subprocess.Popen(
        command(write_job(work / name, job_yaml(text, STEP))),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment(work),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{") and (json.loads(line).get("message") or "").startswith(KILL_AT):
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    if proc.wait() != -signal.SIGKILL:
        raise SystemExit(f"{name}: the run ended before {KILL_AT!r}")
    return time.monotonic() - started


def weights_digest(work: Path, name: str) -> str:
    out = work / name / "out"
    run = json.loads((out / "manifest.json").read_text())["runId"]
    return hashlib.sha256((out / "runs" / run / "model" / "model.safetensors").read_bytes()).hexdigest()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="kompression-bench-llm-resume-"))
    everything = paragraphs()  # the fixture model's split of its text, as tests/llm/conftest.py makes it
    (work / "train.txt").write_text("\n".join(t for i, t in enumerate(everything) if i % 10) + "\n")
    (work / "eval.txt").write_text("\n".join(everything[::10]) + "\n")
    text = Texts(work / "train.txt", work / "eval.txt", work / "eval.jsonl")
    whole: list[dict[str, Any]] = []
    kills: list[float] = []
    resumed: list[dict[str, Any]] = []
    for r in range(ROUNDS):
        whole.append(run(work, f"whole{r}", text))
        kills.append(killed(work, f"resumed{r}", text))
        resumed.append(run(work, f"resumed{r}", text))
        if weights_digest(work, f"resumed{r}") != weights_digest(work, f"whole{r}"):
            raise SystemExit("the resumed run published other weights than the uninterrupted one")

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def calib(runs: list[dict[str, Any]]) -> float:
        return med([x["notes"]["stepSeconds"]["calibrate"] for x in runs])

    kill, full, again = med(kills), med([x["seconds"] for x in whole]), med([x["seconds"] for x in resumed])
    notes = resumed[0]["notes"]
    rows = [
        ["uninterrupted", 1, LAYERS, f"{calib(whole):.1f}", f"{full:.1f}"],
        [
            f"killed at {KILL_AT}, restarted from scratch",
            2,
            f"{LAYERS - 1} + {LAYERS}",
            f"{calib(whole):.1f}",
            f"{kill:.1f} + {full:.1f} = {kill + full:.1f}",
        ],
        [
            f"killed at {KILL_AT}, resumed ({notes['resumedLayers']} layers from checkpoints)",
            2,
            f"{LAYERS - 1} + {notes['calibratedLayers']}",
            f"{calib(resumed):.1f}",
            f"{kill:.1f} + {again:.1f} = {kill + again:.1f}",
        ],
    ]
    versions = ", ".join(f"{n} {importlib.metadata.version(n)}" for n in ("llmcompressor", "transformers", "torch"))
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# (i3) Resuming a killed LLM calibration, layer by layer",
        "",
        f"Machine: {cpu()}; {versions}; python {platform.python_version()}, {THREADS} threads, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Command: `.venv-llm/bin/python "
        "benchmarks/bench_llm_resume.py`.",
        "",
        *markdown_table(
            ["run", "attempts", "layers calibrated", "calibrate s (last attempt)", "wall s, all attempts"],
            rows,
        ),
        "",
        f"tests/llm/fixtures/tiny-llama ({LAYERS} decoder layers), GPTQ W4A16, the LLM tests' job "
        f"(tests/llm/llm_jobs.py: 32 calibration and 40 evaluation paragraphs of at most 128 tokens); medians of {ROUNDS} rounds, each round running the three side "
        "by side (uninterrupted, killed, resumed). The killed attempt is `kompression run` SIGKILLed as its "
        "progress reports the last layer; the resumed attempt is the same command again, which loads the first "
        f"{LAYERS - 1} layers and the activations at the third from the job's output folder. Calibrate s is the "
        "step's `stepSeconds.calibrate` (the oneshot call, checkpoint writes included); wall s is each "
        "`kompression run` from start to exit (model load, scoring the original and the result, publishing), "
        "which on this model dominates: the saving is the calibration of the resumed layers, and grows with "
        "the model (a 70B calibration runs for hours, its load for minutes). Every resumed run published "
        "byte-identical weights to its round's uninterrupted run (checked). The machine is shared with other "
        f"jobs (load average at the end: {load}), so only figures of one round compare.",
        "",
    ]
    write_report("llm_resume", "\n".join(lines))


if __name__ == "__main__":
    main()
