"""Benchmark (i3): the memory plan (api/memory_plan.py) against the peak each `kompression run`
measured, on the tiny Llama of benchmark (i). The worker plans the pod's peak host memory from
config.json, the safetensors headers, the recipe and the calibration data before loading anything
and records it in report.json (memoryPlan); the step's notes record the resident peak of
calibration (peakMemoryBytes, VmHWM). Runs in the worker-llm environment (run_all.py starts it with
.venv-llm's python), reusing bench_llm's job writer.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_llm import CALIBRATION_SAMPLES, MAX_LENGTH, cpu, kompression, texts
from common import THREADS, load_average, markdown_table, write_report

MiB = 1 << 20
# Each job's flow mapping of its llmQuantize step, or its steps' YAML.
RUNS = {
    "llmQuantize W4A16 RTN": ("{scheme: W4A16, algorithm: RTN}", None),
    "llmQuantize W4A16 GPTQ": ("{scheme: W4A16, algorithm: GPTQ}", None),
    "llmSparsify SparseGPT + llmQuantize FP8, backend ModelOpt": (
        "",
        "- {name: sparse24, llmSparsify: {method: SparseGPT, backend: ModelOpt}}\n"
        "  - {name: quantize, llmQuantize: {scheme: FP8, backend: ModelOpt}}",
    ),
}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="kompression-bench-llm-memory-"))
    calibration, evaluation = texts(work)

    def one(i: int, step: str, steps: str | None) -> tuple[int, int]:
        kompression(work, f"m{i}", step, calibration, evaluation, steps=steps)
        manifest = json.loads((work / f"m{i}" / "manifest.json").read_text())
        report = json.loads((work / f"m{i}" / "runs" / manifest["runId"] / "report.json").read_text())
        peaks = [m["notes"]["peakMemoryBytes"] for m in report["details"]["models"] if "peakMemoryBytes" in m["notes"]]
        return report["memoryPlan"]["hostBytes"], max(peaks)

    # Side by side, two at a time: each figure is one process's own resident peak, which the other
    # process does not change (the machine has two cores).
    with ThreadPoolExecutor(max_workers=2) as pool:
        figures = list(pool.map(lambda a: one(*a), ((i, *v) for i, v in enumerate(RUNS.values()))))
    rows, errors = [], []
    for name, (planned, measured) in zip(RUNS, figures, strict=True):
        error = planned / measured - 1
        errors.append(abs(error))
        rows.append([name, f"{planned / MiB:.0f}", f"{measured / MiB:.0f}", f"{error:+.1%}"])
    versions = ", ".join(f"{n} {importlib.metadata.version(n)}" for n in ("llmcompressor", "nvidia-modelopt", "torch"))
    lines = [
        "# (i3) LLM memory plan against the measured peak",
        "",
        f"Machine: {cpu()}; {versions}; python {platform.python_version()}, {THREADS} threads, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Command: `.venv-llm/bin/python "
        "benchmarks/bench_llm_memory.py`.",
        "",
        *markdown_table(["job", "planned host MiB", "measured peak MiB", "error"], rows),
        "",
        f"Largest error {max(errors):.1%} (the aim: within 25%). Model and text as in (i): "
        f"tests/llm/fixtures/tiny-llama (3.7 MB of bf16 weights), {CALIBRATION_SAMPLES} calibration paragraphs of at "
        f"most {MAX_LENGTH} tokens, on the CPU. Planned: report.json's memoryPlan.hostBytes, written before the "
        "weights are read (the largest over the job's steps). Measured: the largest peakMemoryBytes of its "
        "steps, the worker's resident peak (VmHWM) over loading, calibrating and saving. On a model this small the worker's runtime (torch, transformers, "
        "llm-compressor: the plan's fixed 1000 MiB) is nearly all of the peak, so these rows test that constant "
        "more than the terms that scale with the weights and the calibration cache; tests/api/test_memory_plan.py "
        "checks those terms on a 7B Llama's shapes, and no GPU figure is measured here. Memory figures do not "
        f"depend on the machine's load (load average at the end: {load_average()}); the machine was shared.",
    ]
    write_report("llm_memory", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
