"""Benchmark (i2): every llmQuantize method a CPU can run, side by side on the tiny Llama of benchmark
(i): perplexity, published weights and decode tokens/s of each folder as `kompression run` publishes
and scores it (transformers on the CPU, compressed-tensors). Runs in the worker-llm environment
(`make setup-llm`; run_all.py starts it with .venv-llm's python), reusing bench_llm's job writer.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from bench_llm import CALIBRATION_SAMPLES, EVAL_SAMPLES, MAX_LENGTH, cpu, kompression, texts
from common import THREADS, markdown_table, write_report

METHODS = {
    "W4A16 RTN, symmetric": "{scheme: W4A16, algorithm: RTN}",
    "W4A16 RTN, zero points": "{scheme: W4A16, algorithm: RTN, symmetric: false}",
    "W4A16 GPTQ, symmetric": "{scheme: W4A16, algorithm: GPTQ}",
    "W4A16 AWQ, zero points (its default)": "{scheme: W4A16, algorithm: AWQ}",
    "W4A16 AWQ, symmetric": "{scheme: W4A16, algorithm: AWQ, symmetric: true}",
    "W4A16 AutoRound, symmetric (200 iterations, its default)": "{scheme: W4A16, algorithm: AutoRound}",
    "W4A16 RTN + FP8 KV cache": "{scheme: W4A16, algorithm: RTN, kvCache: FP8}",
    "FP8Dynamic (per-token activations)": "{scheme: FP8Dynamic}",
    "FP8 (static per-tensor activations)": "{scheme: FP8}",
    "FP8 + FP8 KV cache": "{scheme: FP8, kvCache: FP8}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only the rows whose name contains this (repeatable); their table goes to "
        "results/llm_methods_selected.md, so the full table's rows, measured side by side, stay as they were",
    )
    args = parser.parse_args()
    methods = {n: s for n, s in METHODS.items() if not args.only or any(o in n for o in args.only)}
    work = Path(tempfile.mkdtemp(prefix="kompression-bench-llm-methods-"))
    calibration, evaluation = texts(work)
    runs: dict[str, dict[str, Any]] = {
        name: kompression(work, f"m{i}", step, calibration, evaluation)
        for i, (name, step) in enumerate(methods.items())
    }
    base = next(iter(runs.values()))["result"]["baseline"]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())

    def row(name: str, m: dict[str, Any], seconds: float | None) -> list[str]:
        return [
            name,
            f"{m['perplexity']:.3f}",
            f"{m['perplexity'] / base['perplexity'] - 1:+.3%}",
            f"{m['sizeBytes'] / 1024:.0f}",
            f"{m['tokensPerSecond']:.1f}",
            "-" if seconds is None else f"{seconds:.0f}",
        ]

    header = ["model", "perplexity", "vs original", "weights KiB", "decode tok/s", "seconds"]
    versions = ", ".join(
        f"{n} {importlib.metadata.version(n)}" for n in ("llmcompressor", "compressed-tensors", "transformers", "torch")
    )
    lines = [
        "# (i2) LLM methods on a CPU: RTN, GPTQ, AWQ, AutoRound, FP8 (dynamic and static) and the FP8 KV cache"
        + (" (selected rows)" if args.only else ""),
        "",
        f"Machine: {cpu()}; {versions}; python {platform.python_version()}, {THREADS} threads, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Command: `.venv-llm/bin/python "
        f"benchmarks/bench_llm_methods.py{''.join(f' --only {o!r}' for o in args.only)}`.",
        "",
        *markdown_table(
            header,
            [
                row("original (bf16 weights, run in fp32)", base, None),
                *(row(name, r["result"]["final"], r["seconds"]) for name, r in runs.items()),
            ],
        ),
        "",
        f"Model and text as in (i): tests/llm/fixtures/tiny-llama, {CALIBRATION_SAMPLES} calibration paragraphs, "
        f"{EVAL_SAMPLES} held-out paragraphs for perplexity, at most {MAX_LENGTH} tokens each. Each row is one "
        "`kompression run`; its figures are the report's, measured on the published folder loaded back by "
        "transformers. Decode tok/s is the report's `tokensPerSecond`: greedy generation of 16 tokens at batch 1 "
        "after a warm-up run, median of three, tokens after the first over the time after it, on the CPU as "
        "transformers runs the folder (it unpacks int4 and simulates FP8 in every forward pass; a server's GPU "
        "kernels are timed by benchmarks/gpu_check.py). This machine is shared, so tok/s moves several-fold "
        f"with other jobs' load (load average at the end: {load}) and ranks nothing here; perplexities are "
        "deterministic. The "
        "int4 rows share one grid (group 128), so RTN against AWQ with zero points, and RTN, GPTQ and AutoRound "
        "symmetric, are the like-for-like sets. Seconds are each run's wall time (load, score the original, "
        "calibrate, save, score), side by side in one run; AutoRound tunes without torch.compile on a CPU.",
        "",
    ]
    write_report("llm_methods_selected" if args.only else "llm_methods", "\n".join(lines))


if __name__ == "__main__":
    main()
