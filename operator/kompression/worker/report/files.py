"""The run's written report: report.json (a WorkerReport plus details), report.md and its PNG plots."""

from __future__ import annotations

import importlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import Environment, Metrics, Result

PLOTS = (
    ("size.png", "sizeBytes", "Size on disk (KiB)", 1 / 1024),
    ("accuracy.png", "accuracy", "Evaluation metric", 1.0),
    ("latency.png", "latencyMs", "Median latency (ms)", 1.0),
)


@dataclass
class Row:
    """One line of the per-step table: the original model or a step's output."""

    name: str
    metrics: Metrics
    latency_ms: dict[int, tuple[float, float]]
    seconds: float | None = None
    notes: dict[str, Any] | None = None


def environment() -> Environment:
    """Versions and hardware; engines are only valid where these match. Each runtime is recorded
    where this worker has it: the worker-llm image has no onnx or onnxruntime, only NVIDIA images
    have TensorRT."""
    import torch  # slow to import: only once a job runs, never for the CLI alone

    env = Environment(torch=torch.__version__, cpu=cpu_model())
    if torch.cuda.is_available():
        env.cuda = torch.version.cuda
        env.gpu = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        env.computeCapability = f"{major}.{minor}"
    for name in ("onnx", "onnxruntime", "tensorrt"):
        try:
            # By name: which of these a worker has depends on its image, and each is slow to import.
            module = importlib.import_module(name)
        except ImportError:
            continue
        setattr(env, name, module.__version__)
    return env


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def write_json(
    report: WorkerReport, rows: list[Row], run_id: str, path: Path, *, step_cache: dict[str, Any] | None = None
) -> Path:
    """report.json: every WorkerReport field, plus `details` (per-batch latency, notes, seconds, and with
    spec.stepCache what the job reused from it)."""
    body = report.model_dump(by_alias=True, exclude_none=True, mode="json")
    body["details"] = {
        "runId": run_id,
        "models": [
            {
                "name": r.name,
                "seconds": r.seconds,
                "latencyMs": {
                    str(bs): {"p50": round(p50, 4), "p95": round(p95, 4)} for bs, (p50, p95) in r.latency_ms.items()
                },
                "notes": r.notes or {},
            }
            for r in rows
        ],
    }
    if step_cache is not None:
        body["details"]["stepCache"] = step_cache
    path.write_text(json.dumps(body, indent=2, sort_keys=True))
    return path


def load_report(path: Path) -> WorkerReport:
    """Read report.json back as a WorkerReport (details dropped)."""
    body = json.loads(path.read_text())
    body.pop("details", None)
    return WorkerReport.model_validate(body)


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only."""
    import matplotlib  # slow to import: only when plots are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    return plt


def plot(rows: list[Row], folder: Path) -> list[Path]:
    """One bar chart per figure of merit, steps in order."""
    plt = _pyplot()
    paths = []
    names = [r.name for r in rows]
    for filename, key, title, scale in PLOTS:
        values = [getattr(r.metrics, key) for r in rows]
        if all(v is None for v in values):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        ax.bar(names, [0 if v is None else v * scale for v in values], color="#3b6ea5")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
        fig.tight_layout()
        path = folder / filename
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


@dataclass
class Point:
    """One trial of a sweep on the plane of its first two objectives."""

    label: str
    x: float
    y: float
    front: bool  # on the Pareto front


def pareto_plot(points: list[Point], x_title: str, y_title: str, path: Path) -> Path:
    """A sweep's trials by their first two objectives, the Pareto front marked and joined."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    rest = [p for p in points if not p.front]
    front = sorted((p for p in points if p.front), key=lambda p: (p.x, p.y))
    ax.scatter([p.x for p in rest], [p.y for p in rest], color="#9aa7b4", label="trial")
    ax.plot([p.x for p in front], [p.y for p in front], "o-", color="#c0392b", label="Pareto front")
    for p in points:
        ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(x_title)
    ax.set_ylabel(y_title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def table(rows: list[Row]) -> str:
    """Plain-text table of size, parameters, accuracy, latency and where it was measured, per step (also used on
    the terminal)."""
    # Perplexity is an LLM job's score: its column only appears where one was measured, and the
    # accuracy column then only where an LLM job also scored tasks (data.tasks).
    scored = any(r.metrics.perplexity is not None for r in rows)
    both = scored and any(r.metrics.accuracy is not None for r in rows)
    scores = ("perplexity", "accuracy") if both else ("perplexity",) if scored else ("accuracy",)
    header: tuple[str, ...] = ("model", "size KiB", "params", *scores, "p50 ms")
    header += ("p95 ms", "sparsity")
    # Decode tokens/s is an LLM job's speed: its column only appears where one was measured.
    decoded = any(r.metrics.tokensPerSecond is not None for r in rows)
    header += (("tok/s",) if decoded else ()) + ("device", "provider")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        m = r.metrics
        figures = [getattr(m, name) for name in scores]
        lines.append(
            (
                r.name,
                "-" if m.sizeBytes is None else f"{m.sizeBytes / 1024:.1f}",
                "-" if m.parameters is None else f"{m.parameters:,}",
                *("-" if f is None else f"{f:.4f}" for f in figures),
                "-" if m.latencyMs is None else f"{m.latencyMs:.3f}",
                "-" if m.latencyP95Ms is None else f"{m.latencyP95Ms:.3f}",
                "-" if m.sparsity is None else f"{m.sparsity:.3f}",
                *((("-" if m.tokensPerSecond is None else f"{m.tokensPerSecond:.1f}"),) if decoded else ()),
                m.device or "-",
                m.provider or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = (0, len(header) - 2, len(header) - 1)  # names left-aligned, figures right-aligned
    out = [
        "  ".join(
            c.ljust(w) if i in text else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _speedup_lines(result: Result) -> list[str]:
    """The speedup and where both sides ran; or why there is none."""
    baseline, final = result.baseline, result.final
    if baseline is None or final is None or (baseline.latencyMs is None and final.latencyMs is None):
        return []  # nothing was timed (an llmQuantize job): no speedup to explain
    reference = result.speedupBaseline or baseline
    where = f"original on {reference.device} with {reference.provider}, final on {final.device} with {final.provider}"
    if result.speedupBaseline is not None:
        where += (
            f" (the final model did not run on the job's {baseline.device}, so the original was re-measured on "
            f"{reference.device}: p50 {reference.latencyMs} ms)"
        )
    if result.speedup is None:
        return [f"| speedup | not comparable: {where} |"]
    return [f"| speedup (p50, first batch size) | {result.speedup:.2f}x, {where} |"]


def write_markdown(
    report: WorkerReport,
    rows: list[Row],
    plots: list[Path],
    job_name: str,
    path: Path,
    *,
    step_cache: dict[str, Any] | None = None,
) -> Path:
    result = report.result
    lines = [f"# Compression report: {job_name}", ""]
    if result is not None:
        lines += ["| figure | value |", "|---|---|"]
        if step_cache is not None:
            reused, executed = step_cache["reusedSteps"], step_cache["executedSteps"]
            baseline = "reused" if step_cache["baselineReused"] else "measured here"
            lines.append(
                f"| step cache | {reused} of {reused + executed} step executions reused, baseline {baseline} |"
            )
        if result.compressionRatio is not None:
            lines.append(f"| compression ratio | {result.compressionRatio:.2f}x |")
        if result.accuracyDelta is not None:
            lines.append(f"| accuracy delta | {result.accuracyDelta:+.4f} |")
        lines += _speedup_lines(result)
        for gate in result.gates:
            lines.append(
                f"| gate {gate.name} | {'passed' if gate.passed else 'FAILED'}: {gate.measured:g} (limit {gate.limit:g}) |"
            )
        lines.append("")
    lines += ["## Per step", "", "```", table(rows), "```", ""]
    batch_sizes = sorted({bs for r in rows for bs in r.latency_ms})
    if len(batch_sizes) > 1:
        lines += [
            "## Latency by batch size (p50 / p95 ms)",
            "",
            "| model | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |",
            "|---" * (len(batch_sizes) + 1) + "|",
        ]
        for r in rows:
            cells = [
                f"{r.latency_ms[b][0]:.3f} / {r.latency_ms[b][1]:.3f}" if b in r.latency_ms else "-"
                for b in batch_sizes
            ]
            lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
        lines.append("")
    env = report.environment
    if env is not None:
        lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in env.to_wire().items()] + [""]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    path.write_text("\n".join(lines))
    return path
