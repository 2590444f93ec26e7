"""Benchmark (j), cluster half: bench_sweep.py's 12-trial sweep as a CompressionSweep on a private test
bed (kube-apiserver, kwok GPU nodes, real Kueue, one `kompression operator` process), each trial asking
for 1 GPU through the Kueue LocalQueue `gpu`, whose ClusterQueue holds 2 GPUs. The sweep's parallelism
is 12, so only Kueue's quota bounds how many trials run at once.

No worker runs: kwok pretends to run each trial's pod. Once a trial has been Running for HOLD_S, this
script ends its pod as the worker would (exit 0 and the worker's JSON summary as the termination
message), with the accuracy and compression ratio the local half measured for that trial (parsed from
benchmarks/results/sweep.md). Every ~0.5 s it samples, from the API server, the Kueue Workloads that
hold quota (admitted, not finished) and the trials whose phase is Running.

    .venv/bin/python benchmarks/bench_sweep_cluster.py   # writes benchmarks/results/sweep_cluster.md
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench_sweep import SPARSITIES, brute_force_front
from common import RESULTS, ROOT, cpu_flags, load_average, machine, markdown_table, write_report

sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "controller"), str(ROOT / "operator")]

from kubectl import finish  # noqa: E402
from kueue_queues import GPU, active, holds_quota, queue_objects  # noqa: E402
from operator_process import OperatorProcess, install_crd  # noqa: E402

from kompression.api.constants import API_VERSION, LABEL_SWEEP_NAME  # noqa: E402
from kompression.api.report import WorkerReport  # noqa: E402
from kompression.api.sweep_plan import parse_sweep, plan  # noqa: E402
from kompression.api.v1alpha1 import Metrics, Result  # noqa: E402
from testbed.cluster import Cluster  # noqa: E402
from testbed.kube import Kube  # noqa: E402
from testbed.kueue import KueueManager, manifests_dir  # noqa: E402

SWEEP = "bench"  # the local half's name too, so that its trials are named alike (bench-t00 ...)
QUOTA_GPUS = 2
HOLD_S = 2.0
SAMPLE_S = 0.5
TIMEOUT_S = 600.0
TABLE_EVERY_S = 2.0


@dataclass
class Sample:
    at: float  # seconds since the sweep was applied
    admitted: int  # Kueue Workloads holding quota
    running: int  # trials whose phase is Running
    succeeded: int


def local_figures(path: Path = RESULTS / "sweep.md") -> tuple[dict[str, tuple[float, float]], set[str]]:
    """The local sweep's (accuracy, compression ratio) of each trial, and its Pareto front, from its
    trial table (trial, independent accuracy and ratio, sweep accuracy and ratio, brute-force and
    sweep front)."""
    figures, front = {}, set()
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith(f"{SWEEP}-t") and len(cells) == 7:
            figures[cells[0]] = (float(cells[3]), float(cells[4]))
            if cells[6] == "yes":
                front.add(cells[0])
    if len(figures) != 12:
        raise SystemExit(f"{path}: expected the 12 trials of bench_sweep.py's table, found {sorted(figures)}")
    return figures, front


def sweep_manifest() -> dict[str, Any]:
    """examples/sweep-digits.yaml with bench_sweep.py's axes; each trial asks for 1 GPU through Kueue."""
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "sweep-digits.yaml").read_text())
    manifest["metadata"] = {"name": SWEEP}
    spec = manifest["spec"]
    spec["parameters"][0]["values"] = SPARSITIES
    template = spec["template"]
    template["model"]["uri"] = "s3://models/digits-cnn.pt2"
    template["output"]["uri"] = f"s3://out/{SWEEP}/"
    template["resources"] = GPU
    template["runPolicy"] = {"queueName": "gpu"}
    spec["parallelism"] = 12
    return manifest


def items(kube: Kube, path: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kube.request("GET", path)["items"]
    return found


def finish_trial(kube: Kube, pod: dict[str, Any], figures: tuple[float, float]) -> None:
    """What the worker leaves when it ends: exit 0 and its summary, with this trial's figures."""
    accuracy, ratio = figures
    result = Result(final=Metrics(accuracy=accuracy), compressionRatio=ratio, gatesPassed=True)
    report = WorkerReport(phase="Succeeded", result=result)
    finish(kube, pod, 0, report.model_dump_json(by_alias=True, exclude_none=True))


def run_sweep(
    kube: Kube, ns: str, figures: dict[str, tuple[float, float]]
) -> tuple[list[Sample], dict[str, Any], dict[str, float], dict[str, float], float]:
    """Apply the sweep, finish each trial HOLD_S after it runs, sample until the sweep ends; returns
    the samples, the sweep's final status, each trial's first Running and Succeeded times, and the
    wall time from apply to the sweep's end."""
    cr = f"/apis/{API_VERSION}/namespaces/{ns}"
    kube.apply(sweep_manifest(), namespace=ns)
    t0 = time.monotonic()
    samples: list[Sample] = []
    running_at: dict[str, float] = {}
    succeeded_at: dict[str, float] = {}
    finished: set[str] = set()
    while True:
        now = time.monotonic() - t0
        if now > TIMEOUT_S:
            raise TimeoutError(f"the sweep did not end within {TIMEOUT_S:.0f} s")
        workloads = items(kube, f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{ns}/workloads")
        trials = items(kube, f"{cr}/compressionjobs?labelSelector={LABEL_SWEEP_NAME}%3D{SWEEP}")
        phases = {t["metadata"]["name"]: (t.get("status") or {}).get("phase") for t in trials}
        for name, phase in phases.items():
            if phase == "Running":
                running_at.setdefault(name, now)
            elif phase == "Succeeded":
                succeeded_at.setdefault(name, now)
        samples.append(
            Sample(
                now,
                sum(holds_quota(w) for w in workloads),
                sum(p == "Running" for p in phases.values()),
                sum(p == "Succeeded" for p in phases.values()),
            )
        )
        due = [n for n, t in running_at.items() if n not in finished and now - t >= HOLD_S]
        if due:
            for pod in items(kube, f"/api/v1/namespaces/{ns}/pods"):
                job = pod["metadata"].get("labels", {}).get("job-name")
                if job in due and pod["status"].get("phase") == "Running":
                    finish_trial(kube, pod, figures[job])
                    finished.add(job)
        status: dict[str, Any] = kube.request("GET", f"{cr}/compressionsweeps/{SWEEP}").get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return samples, status, running_at, succeeded_at, time.monotonic() - t0
        time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - t0 - now)))


def time_weighted_mean(samples: list[Sample], end: float) -> float:
    """Each sample's count held until the next sample (the last until `end`), averaged over the run."""
    total = 0.0
    for sample, after in zip(samples, [*(s.at for s in samples[1:]), end], strict=True):
        total += sample.admitted * (after - sample.at)
    return total / (end - samples[0].at)


def timeline_rows(samples: list[Sample]) -> list[list[object]]:
    """The first sample at or after every TABLE_EVERY_S seconds, and the last one."""
    rows: list[list[object]] = []
    mark = 0.0
    for sample in samples:
        if sample.at >= mark or sample is samples[-1]:
            rows.append([f"{sample.at:.1f}", sample.admitted, sample.running, sample.succeeded])
            mark = (sample.at // TABLE_EVERY_S + 1) * TABLE_EVERY_S
    return rows


def bench(workdir: Path) -> str:
    figures, local = local_figures()
    trials = plan(parse_sweep(sweep_manifest()).spec)
    load_before = load_average()
    started = time.monotonic()
    cluster = Cluster(workdir / "cluster")
    kube: Kube | None = None
    kueue: KueueManager | None = None
    operator: OperatorProcess | None = None
    try:
        cluster.up()
        kube = Kube(cluster.kubeconfig)
        install_crd(kube)
        kueue = KueueManager(kube, workdir / "kueue")
        ns = kueue.enroll(kube.create_namespace("sweep"))
        queue = f"{ns}-bench"
        for obj in queue_objects(ns, queue, QUOTA_GPUS):
            kube.apply(obj)
        kube.wait(lambda: active(kube, queue), f"ClusterQueue {queue} to be active", timeout=60)
        operator = OperatorProcess(kube, workdir, verbose=False).start()
        setup_s = time.monotonic() - started
        samples, status, running_at, succeeded_at, wall = run_sweep(kube, ns, figures)
    finally:
        if operator is not None:
            operator.stop()
            shutil.copy(operator.log, ROOT / ".kompression" / "bench-sweep-cluster-operator.log")
        if kueue is not None:
            kueue.stop()
        if kube is not None:
            kube.close()
        cluster.down(quiet=True)
    load_after = load_average()

    counts = status["counts"]
    front = sorted(status.get("paretoFront") or [])
    brute = sorted(brute_force_front(figures))
    local_front = sorted(local)
    peak = max(s.admitted for s in samples)
    mean = time_weighted_mean(samples, wall)
    gaps = [b.at - a.at for a, b in itertools.pairwise(samples)]
    ok = status.get("phase") == "Succeeded" and counts["succeeded"] == 12 and front == brute == local_front

    trial_rows = [
        [
            f"{SWEEP}-{t.suffix}",
            ", ".join(f"{k}={v}" for k, v in t.values.items()),
            *(f"{v:.4f}" for v in figures[f"{SWEEP}-{t.suffix}"]),
            f"{running_at.get(f'{SWEEP}-{t.suffix}', float('nan')):.1f}",
            f"{succeeded_at.get(f'{SWEEP}-{t.suffix}', float('nan')):.1f}",
            "yes" if f"{SWEEP}-{t.suffix}" in front else "",
        ]
        for t in trials
    ]
    text = "\n".join(
        [
            "# Benchmark (j), cluster half: the 12-trial sweep under a 2-GPU Kueue quota",
            "",
            f"Machine: {machine()}; CPU flags: {cpu_flags()}; {os.cpu_count()} cores, shared with other work "
            f"(load average before {load_before}, after {load_after}).",
            "",
            "`benchmarks/bench_sweep_cluster.py`: bench_sweep.py's grid (examples/sweep-digits.yaml with sparsity "
            f"{SPARSITIES} x DynamicInt8/StaticInt8 x with/without distillation: 12 trials) applied as a "
            "CompressionSweep to a private test bed (kube-apiserver, controller-manager, scheduler, kwok with two "
            f"8-GPU H100 nodes, Kueue {manifests_dir().name}, one `kompression operator` process; set up in "
            f"{setup_s:.0f} s). Each trial asks for 1 GPU through the LocalQueue `gpu`, whose ClusterQueue holds "
            f"{QUOTA_GPUS} GPUs; the sweep's parallelism is 12, so only Kueue's quota bounds the trials running at "
            f"once. No worker runs: {HOLD_S:.0f} s after a trial reads Running, this script ends its kwok pod as "
            "the worker would (exit 0, the worker's summary as the termination message) with the accuracy and "
            "compression ratio that trial measured in the local half (benchmarks/results/sweep.md, the sweep's "
            "columns), so the figures are real measurements and the times are the control plane's. One run.",
            "",
            *markdown_table(
                ["what", "measured"],
                [
                    ["wall time, sweep applied to sweep Succeeded", f"{wall:.1f} s"],
                    ["sweep phase, trials succeeded / total", f"{status.get('phase')}, {counts['succeeded']}/12"],
                    ["Kueue-admitted unfinished Workloads, max", f"{peak} (quota {QUOTA_GPUS} GPUs)"],
                    ["Kueue-admitted unfinished Workloads, time-weighted mean", f"{mean:.2f}"],
                    ["share of the quota's GPU-seconds held by admitted trials", f"{mean / QUOTA_GPUS:.0%}"],
                    ["Running trials, max", str(max(s.running for s in samples))],
                    [
                        "samples (interval median / max)",
                        f"{len(samples)} ({statistics.median(gaps):.2f} s / {max(gaps):.2f} s)",
                    ],
                    ["Pareto front reported by the sweep", ", ".join(front)],
                    [
                        "same as the brute-force front of the figures, and as the local sweep's",
                        "yes" if front == brute == local_front else f"**no**: {brute} / {local_front}",
                    ],
                ],
            ),
            "",
            f"Admitted Workloads per sample ({SAMPLE_S} s apart): `{''.join(str(s.admitted) for s in samples)}`",
            "",
            f"Running trials per sample: `{''.join(str(s.running) for s in samples)}`",
            "",
            *markdown_table(
                ["t (s)", "admitted Workloads", "Running trials", "Succeeded trials"], timeline_rows(samples)
            ),
            "",
            *markdown_table(
                ["trial", "values", "accuracy", "compression ratio", "Running at (s)", "Succeeded at (s)", "front"],
                trial_rows,
            ),
            "",
            "Samples are read from the API server (Workloads: Admitted and not Finished; trials: status.phase), "
            "one list call each, so a sample lags the cluster by the calls' latency and a count can read one "
            f"high while a trial ends and the next is admitted. Each trial is held {HOLD_S:.0f} s from the first "
            "sample that sees it Running; the rest of the wall time is the control plane's (Kueue admission, "
            "the Job's unsuspension, kwok's pod, the operator's status), measured on a machine shared with "
            "other work, so the wall time is noisy; the concurrency bound is not.",
            "",
        ]
    )
    write_report("sweep_cluster", text)
    if not ok:
        raise SystemExit("the sweep did not end Succeeded 12/12 with the expected Pareto front")
    return text


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    (ROOT / ".kompression").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-cluster-") as tmp:
        bench(Path(tmp))


if __name__ == "__main__":
    main()
