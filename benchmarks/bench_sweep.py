"""Benchmark (j), local half: a 12-trial sweep on the quickstart's digits model, with prefix sharing,
against 12 independent `kompression run`s of the same trials, in one run.

The sweep is examples/sweep-digits.yaml with three sparsities (3 sparsities x 2 int8 methods x with
and without distillation). Both arms go through the CLI a user runs: `kompression sweep` (trials in
sequence, one step cache), and `kompression run` once per trial on the trial's own CompressionJob
(the one `kompression sweep` would make, without a step cache). Recorded: step executions (the
baseline measurement counted as one) and wall time of each arm, and whether the Pareto front the
sweep reports equals the front computed by brute force from the independent runs' published reports.

    .venv/bin/python benchmarks/bench_sweep.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from common import ROOT, cpu_flags, load_average, machine, markdown_table, write_report
from kompression.api.sweep_plan import parse_sweep, plan

KOMPRESSION = str(Path(sys.executable).parent / "kompression")
SPARSITIES = [0.25, 0.5, 0.75]
# The instruction sets int8 kernels and timings depend on.


def kompression(*args: str, cwd: Path) -> float:
    """Run the CLI; its wall time in seconds."""
    started = time.monotonic()
    done = subprocess.run([KOMPRESSION, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 6):  # 6: a trial missed a gate, and still counts (its report is in rejected/)
        raise SystemExit(f"kompression {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def published(folder: Path) -> dict[str, Any]:
    """The report.json a run published under folder (or its rejected/), read through the manifest."""
    for where in (folder, folder / "rejected"):
        manifest = where / "manifest.json"
        if manifest.exists():
            run = json.loads(manifest.read_text())["runId"]
            body: dict[str, Any] = json.loads((where / "runs" / run / "report.json").read_text())
            return body
    raise SystemExit(f"{folder}: nothing published")


def brute_force_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Trials no other trial beats on both objectives (both maximized), by comparing every pair."""
    front = set()
    for name, (a, b) in points.items():
        beaten = any(x >= a and y >= b and (x > a or y > b) for other, (x, y) in points.items() if other != name)
        if not beaten:
            front.add(name)
    return front


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4, help="the example model's training epochs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    model = "file://.kompression/quickstart/digits-cnn.pt2"
    kompression("example-model", "--output", model, "--epochs", str(args.epochs), cwd=work)

    manifest = yaml.safe_load((ROOT / "examples" / "sweep-digits.yaml").read_text())
    manifest["metadata"]["name"] = "bench"
    manifest["spec"]["template"]["output"]["uri"] = "file://sweep/"
    manifest["spec"]["parameters"][0]["values"] = SPARSITIES
    (work / "sweep.yaml").write_text(yaml.safe_dump(manifest))
    trials = plan(parse_sweep(manifest).spec)
    assert len(trials) == 12, len(trials)

    load_before = load_average()
    # The independent arm: each trial's own CompressionJob, as the sweep makes it, with no step cache.
    independent_s = 0.0
    independent_steps = 0
    points: dict[str, tuple[float, float]] = {}
    passed: dict[str, bool] = {}
    for trial in trials:
        spec = trial.spec.to_wire()
        spec["output"]["uri"] = f"file://independent/{trial.suffix}/"
        spec.pop("stepCache", None)
        job = {"apiVersion": manifest["apiVersion"], "kind": "CompressionJob", "metadata": {"name": trial.suffix}}
        job["spec"] = spec
        path = work / f"{trial.suffix}.yaml"
        path.write_text(yaml.safe_dump(job))
        independent_s += kompression("run", str(path), "--progress", "json", cwd=work)
        independent_steps += 1 + len(spec["steps"])  # the baseline, then each step
        report = published(work / "independent" / trial.suffix)
        result = report["result"]
        points[f"bench-{trial.suffix}"] = (result["final"]["accuracy"], result["compressionRatio"])
        passed[f"bench-{trial.suffix}"] = result["gatesPassed"]
    brute = brute_force_front({k: v for k, v in points.items() if passed[k]})

    sweep_s = kompression("sweep", "sweep.yaml", cwd=work)
    load_after = load_average()
    sweep = published(work / "sweep")
    cache = sweep["stepCache"]
    trials_cache = [t["stepCache"] for t in sweep["trials"]]
    baselines = sum(not c["baselineReused"] for c in trials_cache)
    sweep_steps = cache["executedSteps"] + baselines
    front = set(sweep["status"]["paretoFront"])
    same = front == brute
    measured = {
        t["name"]: (t["metrics"]["accuracy"], t["metrics"]["compressionRatio"]) for t in sweep["status"]["trials"]
    }

    rows = [
        ["12 independent `kompression run`s", independent_steps, f"{independent_s:.0f}", "-"],
        [
            "`kompression sweep` (one step cache)",
            f"{sweep_steps} ({cache['reusedSteps']} steps and {12 - baselines} baselines reused)",
            f"{sweep_s:.0f}",
            f"{independent_s / sweep_s:.2f}x",
        ],
    ]
    trial_rows = [
        [
            name,
            *(f"{v:.4f}" for v in points[name]),
            *(f"{v:.4f}" for v in measured[name]),
            "yes" if name in brute else "",
            "yes" if name in front else "",
        ]
        for name in sorted(points)
    ]
    text = "\n".join(
        [
            "# Benchmark (j): a 12-trial sweep with prefix sharing against 12 independent runs",
            "",
            f"Machine: {machine()}; CPU flags: {cpu_flags()}; {os.cpu_count()} cores, shared with other work "
            f"(load average before {load_before}, after {load_after}).",
            "",
            f"`benchmarks/bench_sweep.py --epochs {args.epochs}`: examples/sweep-digits.yaml with sparsity "
            f"{SPARSITIES} (x DynamicInt8/StaticInt8 x with/without distillation: 12 trials), on the quickstart's "
            f"model trained {args.epochs} epochs. One run of each arm, one after the other (independent first).",
            "",
            *markdown_table(["arm", "step executions", "wall s", "speedup"], rows),
            "",
            *markdown_table(
                [
                    "trial",
                    "independent accuracy",
                    "independent ratio",
                    "sweep accuracy",
                    "sweep ratio",
                    "front (brute force)",
                    "front (sweep)",
                ],
                trial_rows,
            ),
            "",
            f"**Pareto front reported by the sweep {'equals' if same else 'DIFFERS from'} the brute-force front "
            f"of the independent runs**: {sorted(front)} vs {sorted(brute)}.",
            "",
            "Step executions count the baseline measurement of the original as one. The sweep runs its trials "
            "in one process, so its wall time also saves 11 interpreter starts and imports (a few seconds each "
            "here); the step executions are the figure prefix sharing alone decides. The machine was shared "
            "with other work, so the wall times are noisy; the counts and fronts are not.",
            "",
        ]
    )
    write_report("sweep", text)
    if not same:
        raise SystemExit("the sweep's Pareto front differs from the brute-force front")


if __name__ == "__main__":
    main()
