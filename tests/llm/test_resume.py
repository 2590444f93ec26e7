"""Resume after preemption (worker/llm/resume.py): `kompression run` on the tiny Llama is killed
with SIGKILL mid-calibration, the same job runs again, starts at the first unfinished layer, and
publishes the same bytes an uninterrupted run does (llm-compressor's calibration is deterministic
on a CPU with one thread, and the resumed layers see the very tensors the killed run saved)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from llm_jobs import Run, Texts, job_yaml, kompression_run, write_job

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

pytestmark = pytest.mark.slow

GPTQ = "{scheme: W4A16, algorithm: GPTQ}"


def killed_at(job: Path, message: str) -> list[str]:
    """Run `kompression run job` as the pod does and SIGKILL it as soon as it reports `message`
    (the step's progress: "layer 2 of 3"); return the progress messages it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kompression", "run", str(job), "--progress", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "StepProgress":
            seen.append(event["message"])
            if event["message"].startswith(message):
                proc.send_signal(signal.SIGKILL)
                break
    proc.stdout.close()
    assert proc.wait(timeout=600) == -signal.SIGKILL, f"the run ended before {message!r}: {seen}"
    return seen


def progress(proc: subprocess.CompletedProcess[str]) -> list[str]:
    events = (json.loads(line) for line in proc.stdout.splitlines())
    return [e["message"] for e in events if e["event"] == "StepProgress"]


def published(run: Run) -> dict[str, str]:
    folder = run.folder / "model"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def checkpoints(output: Path) -> list[Path]:
    return sorted((output / "checkpoints").rglob("*.pt")) if (output / "checkpoints").exists() else []


def run_whole(texts: Texts, folder: Path, step: str) -> Run:
    proc = kompression_run(write_job(folder, job_yaml(texts, step)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Run(proc, folder / "out")


@pytest.fixture(scope="module")
def uninterrupted(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_whole(texts, tmp_path_factory.mktemp("whole"), GPTQ)


def test_a_killed_calibration_resumes_at_its_first_unfinished_layer_and_publishes_the_same_bytes(
    uninterrupted: Run, texts: Texts, tmp_path: Path
) -> None:
    job = write_job(tmp_path, job_yaml(texts, GPTQ))
    first = killed_at(job, "layer 2 of 3")
    assert first[0].startswith("layer 1 of 3")
    assert not (tmp_path / "out" / "manifest.json").exists()
    names = {p.name.split("-", 1)[1] for p in checkpoints(tmp_path / "out")}
    assert names == {"p0-s0.pt", "p0-s1.pt", "boundary.pt"}  # the embeddings, layer 1, where to go on

    proc = kompression_run(job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = Run(proc, tmp_path / "out")
    assert progress(proc)[0].startswith("layer 2 of 3")  # not layer 1: resumed, not restarted
    notes, whole = again.notes(), uninterrupted.notes()
    assert (notes["layers"], notes["resumedLayers"], notes["calibratedLayers"]) == (3, 1, 2)
    assert (whole["resumedLayers"], whole["calibratedLayers"]) == (0, 3)
    assert published(again) == published(uninterrupted)
    assert checkpoints(tmp_path / "out") == []  # published: nothing left to resume


def test_a_two_pass_recipe_resumes_in_its_second_pass_and_publishes_the_same_bytes(
    texts: Texts, tmp_path: Path
) -> None:
    """W8A8 with GPTQ calibrates twice (SmoothQuant's pass, then GPTQ's): killed in the second,
    the next attempt skips the first pass and the finished layers of the second."""
    w8a8 = "{scheme: W8A8, algorithm: GPTQ}"
    job = write_job(tmp_path / "killed", job_yaml(texts, w8a8))
    with ThreadPoolExecutor(max_workers=1) as pool:
        whole = pool.submit(run_whole, texts, tmp_path / "whole", w8a8)
        killed_at(job, "pass 2 of 2, layer 2 of 3")
        proc = kompression_run(job)
        assert proc.returncode == 0, proc.stderr[-3000:]
        again, reference = Run(proc, tmp_path / "killed" / "out"), whole.result()
    assert progress(proc)[0].startswith("pass 2 of 2, layer 2 of 3")
    notes = again.notes()
    assert (notes["calibrationPasses"], notes["resumedLayers"], notes["calibratedLayers"]) == (2, 4, 2)
    assert reference.notes()["calibratedLayers"] == 6
    assert published(again) == published(reference)


def test_a_checkpoint_that_does_not_fit_the_model_is_discarded_and_calibration_starts_over(
    uninterrupted: Run, texts: Texts, tmp_path: Path
) -> None:
    job = write_job(tmp_path, job_yaml(texts, GPTQ))
    killed_at(job, "layer 2 of 3")
    layer = next(p for p in checkpoints(tmp_path / "out") if p.name.endswith("-p0-s1.pt"))
    state = torch.load(layer, weights_only=True)
    name = next(iter(state["tensors"]))
    state["tensors"][name] = torch.zeros(7)  # another model's layer, or a tampered file
    torch.save(state, layer)

    proc = kompression_run(job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = Run(proc, tmp_path / "out")
    notes = again.notes()
    assert (notes["resumedLayers"], notes["calibratedLayers"]) == (0, 3)
    assert "subgraph 1" in notes["checkpointNote"] and "shape" in notes["checkpointNote"]
    assert published(again) == published(uninterrupted)


def test_other_calibration_text_never_picks_up_the_checkpoints_of_a_killed_run(texts: Texts, tmp_path: Path) -> None:
    """Checkpoints are named by model, data and recipe: the same steps killed on 32 samples and
    run again on 24 calibrate every layer again."""
    killed_at(write_job(tmp_path, job_yaml(texts, GPTQ)), "layer 2 of 3")
    assert checkpoints(tmp_path / "out")
    proc = kompression_run(write_job(tmp_path, job_yaml(texts, GPTQ).replace("samples: 32", "samples: 24")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = Run(proc, tmp_path / "out").notes()
    assert (notes["resumedLayers"], notes["calibratedLayers"]) == (0, 3)
    assert "checkpointNote" not in notes
