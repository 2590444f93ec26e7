"""Benchmark (d): the quickstart pipeline end to end, over several seeds.

For each seed: train the example CNN (`kompression example-model`), run examples/quickstart.yaml
(`kompression run`), read the published report. Reports the median size ratio and accuracy drop
into benchmarks/results/quickstart.md. Target: >= 12x size ratio, <= 1 point accuracy drop.

    .venv/bin/python benchmarks/bench_quickstart.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_report

KOMPRESSION = str(Path(sys.executable).parent / "kompression")


def one_run(seed: int, workdir: Path) -> dict[str, float]:
    model = workdir / ".kompression" / "quickstart" / "digits-cnn.pt2"
    out = workdir / "out"
    started = time.monotonic()
    subprocess.run(
        [KOMPRESSION, "example-model", "--output", str(model), "--seed", str(seed)],
        check=True,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    trained = time.monotonic()
    code = subprocess.run(
        [
            KOMPRESSION,
            "run",
            str(ROOT / "examples" / "quickstart.yaml"),
            "--output",
            f"file://{out}/",
            "--progress",
            "json",
            "--seed",
            str(seed),
        ],
        check=False,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    ).returncode
    finished = time.monotonic()
    if code not in (0, 6):  # 6: a gate failed; the run still counts, read from rejected/
        raise SystemExit(f"seed {seed}: kompression run exited {code}")
    manifest = json.loads((out / ("manifest.json" if code == 0 else "rejected/manifest.json")).read_text())
    result = manifest["result"]
    return {
        "seed": seed,
        "passed": float(code == 0),
        "ratio": result["compressionRatio"],
        "drop_points": -result["accuracyDelta"] * 100,
        "baseline": result["baseline"]["accuracy"],
        "final": result["final"]["accuracy"],
        "speedup": result["speedup"],
        "train_s": trained - started,
        "pipeline_s": finished - trained,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for seed in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp:
            rows.append(one_run(seed, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    ratio = statistics.median(r["ratio"] for r in rows)
    drop = statistics.median(r["drop_points"] for r in rows)
    lines = [
        "# Benchmark (d): the quickstart pipeline",
        "",
        f"`benchmarks/bench_quickstart.py --runs {args.runs}` on {os.cpu_count()} CPU cores (shared machine).",
        "Each run trains the example CNN with its seed, then runs examples/quickstart.yaml",
        "(L1Structured 0.5 + fine-tune -> distill -> StaticInt8 -> onnx). Size ratio = original .pt2 size /",
        "final ONNX size on disk; accuracy on the held-out Digits split (360 images).",
        "",
        "| seed | gates | size ratio | baseline acc | final acc | drop (points) | speedup p50 | train s | pipeline s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {'passed' if r['passed'] else 'failed'} | {r['ratio']:.2f}x | {r['baseline']:.4f} | {r['final']:.4f} | {r['drop_points']:.2f} "
            f"| {r['speedup']:.1f}x | {r['train_s']:.0f} | {r['pipeline_s']:.0f} |"
        )
    lines += [
        "",
        f"**Median size ratio: {ratio:.2f}x** (target >= 12x): {'met' if ratio >= 12 else 'NOT met'}.",
        f"**Median accuracy drop: {drop:.2f} points** (target <= 1): {'met' if drop <= 1 else 'NOT met'}.",
        "",
    ]
    write_report("quickstart", "\n".join(lines))


if __name__ == "__main__":
    main()
