"""Several ranks sharing one model: `kompression run --nproc-per-node 2` (what the operator runs for
resources.gpus: 2) calibrates W4A16 GPTQ with llm-compressor's distributed oneshot, here on two CPU
processes over gloo, and publishes a checkpoint as good as one process's. Both runs go side by side
on the fixture model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from llm_jobs import Run, Texts, job_yaml, kompression_run, write_job

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")


@pytest.fixture(scope="module")
def runs(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Run]:
    """The same W4A16 GPTQ job on one process and on two ranks."""
    jobs: dict[int, Path] = {}
    for nproc in (1, 2):
        folder = tmp_path_factory.mktemp(f"ranks{nproc}")
        jobs[nproc] = write_job(
            folder,
            job_yaml(
                texts,
                "{scheme: W4A16, algorithm: GPTQ}",
                acceptance="acceptance: {maxPerplexityIncrease: 0.05}",
                eval_samples=20,
            ),
        )
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(
            zip(jobs, pool.map(lambda n: kompression_run(jobs[n], "--nproc-per-node", str(n)), jobs), strict=True)
        )
    return {n: Run(procs[n], jobs[n].parent / "out") for n in jobs}


def test_two_ranks_publish_a_checkpoint_as_good_as_one_process(runs: dict[int, Run]) -> None:
    for run in runs.values():
        assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    one, two = runs[1].report["result"], runs[2].report["result"]
    assert one["baseline"]["perplexity"] == two["baseline"]["perplexity"]
    # Each rank saw half the samples; their Hessians are summed, so the result matches up to rounding.
    assert two["final"]["perplexity"] == pytest.approx(one["final"]["perplexity"], rel=0.01)
    assert two["final"]["sizeBytes"] == one["final"]["sizeBytes"]
    assert (runs[1].notes()["ranks"], runs[2].notes()["ranks"]) == (1, 2)
    assert runs[2].notes()["calibration"]["samples"] == 32  # every sample, over both ranks


def test_both_ranks_did_gptq_work(runs: dict[int, Run]) -> None:
    # llm-compressor logs each module it quantizes with the rank that did it.
    log = runs[2].proc.stderr
    assert "[Rank 0]" in log and "[Rank 1]" in log
    assert "Quantizing" in log.split("[Rank 1]", 1)[1]


def test_only_rank_zero_reports_and_publishes(runs: dict[int, Run]) -> None:
    events = [json.loads(line) for line in runs[2].proc.stdout.splitlines() if line.startswith("{")]
    assert [e["phase"] for e in events if e["event"] == "Finished"] == ["Succeeded"]
    assert len(list((runs[2].output / "runs").iterdir())) == 1


def test_the_published_folder_of_two_ranks_loads_and_generates(runs: dict[int, Run]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = runs[2].folder / "model"
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["format"] == "pack-quantized"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    prompt = tokenizer("This License", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8


def test_calibration_peak_memory_is_recorded_against_the_weights(runs: dict[int, Run]) -> None:
    for run in runs.values():
        notes = run.notes()
        assert notes["weightsBytes"] == run.report["result"]["baseline"]["sizeBytes"]
        assert notes["peakMemoryDevice"] == "CPU"
        assert notes["peakMemoryBytes"] > notes["weightsBytes"]  # on a CPU: the process's resident peak
        assert notes["peakMemoryToWeights"] == pytest.approx(notes["peakMemoryBytes"] / notes["weightsBytes"], 1e-3)
