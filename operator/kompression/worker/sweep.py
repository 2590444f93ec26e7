"""`kompression sweep`: a CompressionSweep's trials run on this machine, and the sweep's report.

The trials are the ones `api.sweep_plan` plans (the controller's): each is a CompressionJob run by the
one pipeline (`pipeline.run`), in this process one after another, or in N worker processes at once.
Every trial shares one step cache (the template's `stepCache`, else `step-cache/` under the
template's output), so trials that agree on their first steps run them once and the original is
measured once. The template's gates apply to each trial: one that misses a gate is Rejected (its
model kept under its own rejected/), one that fails otherwise is Failed, and once more than
`maxFailedTrials` have failed no new trial starts and the sweep ends Failed. Each trial publishes
its own report under `<output>/<trial>/`; the sweep publishes report.json (the sweep's status as
the controller writes it, plus what the step cache saved), report.md (a table of trials) and
pareto.png (the first two objectives, the Pareto front marked) under `<output>/`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, ParamSpec, TextIO, TypeVar

import torch

from kompression.api import sweep_plan
from kompression.api.constants import API_VERSION
from kompression.api.v1alpha1 import (
    CompressionJob,
    CompressionSweep,
    CompressionSweepStatus,
    ObjectMeta,
    StepCache,
    TrialCounts,
    TrialStatus,
)
from kompression.worker import pipeline
from kompression.worker.errors import GateFailed, WorkerError
from kompression.worker.report import files
from kompression.worker.report.live import Reporter
from kompression.worker.storage import objects, publish

DEFAULT_CACHE = "step-cache"
PARETO_PLOT = "pareto.png"

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class SweepOptions:
    workers: int = 1  # trials at once: 1 runs them in this process, more in as many worker processes
    seed: int = 0  # every trial's seed: trials that share steps must share it to share their results
    workdir: Path | None = None
    stream: TextIO | None = None  # one line per finished trial


@dataclass
class TrialOutcome:
    """A finished trial, as the sweep's report records it."""

    status: TrialStatus
    output: str  # the prefix its report is published under (its rejected/ when it missed a gate)
    step_cache: dict[str, Any] | None
    seconds: float


@dataclass
class SweepResult:
    sweep: CompressionSweep
    status: CompressionSweepStatus
    outcomes: list[TrialOutcome]
    cache: str
    seconds: float
    published: list[str] = field(default_factory=list)  # the report's files, relative to the output

    @property
    def reused(self) -> int:
        return sum((o.step_cache or {}).get("reusedSteps", 0) for o in self.outcomes)

    @property
    def executed(self) -> int:
        return sum((o.step_cache or {}).get("executedSteps", 0) for o in self.outcomes)


def cache_uri(sweep: CompressionSweep) -> str:
    """The step cache every trial shares: the template's, else one under the template's output."""
    template = sweep.spec.template
    return (
        template.stepCache.uri if template.stepCache is not None else objects.join(template.output.uri, DEFAULT_CACHE)
    )


def trial_job(sweep: CompressionSweep, planned: sweep_plan.PlannedTrial, cache: str) -> CompressionJob:
    """The CompressionJob of one planned trial, named `<sweep>-<trial>`, with the sweep's step cache."""
    spec = planned.spec
    if spec.stepCache is None:
        spec = spec.model_copy(update={"stepCache": StepCache(uri=cache)})
    name = f"{sweep.metadata.name or 'sweep'}-{planned.suffix}"
    meta = ObjectMeta(name=name, namespace=sweep.metadata.namespace)
    return CompressionJob(apiVersion=API_VERSION, kind="CompressionJob", metadata=meta, spec=spec)


# --------------------------------------------------------------------------------------------
# one trial (in this process, or in a worker process: arguments and result are plain data)


def run_trial(
    job_wire: dict[str, Any], status_wire: dict[str, Any], seed: int, workdir: str | None, threads: int
) -> TrialOutcome:
    """Run one trial's job through the pipeline; its phase from how it ended, never an exception."""
    if threads:
        torch.set_num_threads(threads)  # N trials at once share the cores instead of each taking all
    job = CompressionJob.model_validate(job_wire)
    status = TrialStatus.model_validate(status_wire)
    reporter = Reporter(job, "quiet")
    started = time.monotonic()
    output = job.spec.output.uri
    options = pipeline.RunOptions(seed=seed, workdir=Path(workdir) if workdir else None)
    try:
        pipeline.run(job, options, reporter)
        status.phase = "Succeeded"
    except GateFailed as exc:
        status.phase, status.message = "Rejected", exc.message[:1024]
        output = objects.join(output, publish.REJECTED)
    except WorkerError as exc:
        status.phase, status.message = "Failed", f"{exc.reason}: {exc.message}"[:1024]
    except Exception as exc:  # a bug in one trial ends that trial, not the sweep
        status.phase, status.message = "Failed", f"{type(exc).__name__}: {exc}"[:1024]
    status.metrics = sweep_plan.metrics_from_result(reporter.report.result) if status.phase != "Failed" else None
    report = _published_report(output, workdir) if status.phase != "Failed" else None
    cache = None if report is None else report.get("details", {}).get("stepCache")
    return TrialOutcome(status, output, cache, round(time.monotonic() - started, 3))


def _published_report(prefix: str, workdir: str | None) -> dict[str, Any] | None:
    """The report.json a trial published, read through its manifest (digest checked)."""
    manifest = publish.read_manifest(prefix)
    if manifest is None:
        return None
    for entry in manifest["artifacts"]:
        if entry["uri"].endswith("/report.json"):
            with tempfile.TemporaryDirectory(dir=workdir) as tmp:
                local = objects.download(entry["uri"], Path(tmp) / "report.json", entry["sha256"])
                body: dict[str, Any] = json.loads(local.read_text())
                return body
    return None


class _InProcess(Executor):
    """Runs each submitted call at once, in this process: the sweep with one worker."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


# --------------------------------------------------------------------------------------------
# the sweep


def run(sweep: CompressionSweep, options: SweepOptions) -> SweepResult:
    """Run every trial the plan makes (or until too many failed), then publish the sweep's report."""
    spec = sweep.spec
    total = sweep_plan.trial_count(spec)
    cache = cache_uri(sweep)
    started = time.monotonic()
    made: list[TrialStatus] = []
    outcomes: dict[int, TrialOutcome] = {}
    threads = max(1, (os.cpu_count() or 1) // options.workers) if options.workers > 1 else 0
    workdir = str(options.workdir) if options.workdir else None
    # Spawned, not forked: a forked copy of a process that has run torch and onnxruntime threads can hang.
    pool: Executor = (
        ProcessPoolExecutor(options.workers, mp_context=get_context("spawn")) if options.workers > 1 else _InProcess()
    )
    running: dict[Future[TrialOutcome], TrialStatus] = {}
    with pool:
        while True:
            failed = sum(t.phase == "Failed" for t in made)
            stopped = spec.maxFailedTrials is not None and failed > spec.maxFailedTrials
            free = 0 if stopped else options.workers - len(running)
            planned = sweep_plan.next_trials(spec, made, free) if free > 0 else []
            for trial in planned:
                job = trial_job(sweep, trial, cache)
                status = TrialStatus(
                    name=job.metadata.name or trial.suffix, index=trial.index, parameters=trial.values, phase="Running"
                )
                made.append(status)
                future = pool.submit(run_trial, job.to_wire(), status.to_wire(), options.seed, workdir, threads)
                running[future] = status
            if planned:
                continue
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                status = running.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    status.phase, status.message = "Failed", f"the trial's process ended: {exc}"[:1024]
                    outcome = TrialOutcome(status, "", None, 0.0)
                made[made.index(status)] = outcome.status
                outcomes[outcome.status.index] = outcome
                _announce(options.stream, outcome, spec.objectives)
    failed = sum(t.phase == "Failed" for t in made)
    phase = "Failed" if spec.maxFailedTrials is not None and failed > spec.maxFailedTrials else "Succeeded"
    result = SweepResult(
        sweep,
        sweep_status(sweep, made, total, phase),
        [outcomes[i] for i in sorted(outcomes)],
        cache,
        round(time.monotonic() - started, 3),
    )
    result.published = publish_report(result, options.workdir)
    return result


def sweep_status(sweep: CompressionSweep, trials: list[TrialStatus], total: int, phase: str) -> CompressionSweepStatus:
    """The sweep's status as the controller writes it: counts, trials, the Pareto front and the best."""
    objectives = sweep.spec.objectives
    counts = sweep_plan.tally(trials, total)
    return CompressionSweepStatus.model_validate(
        {
            "phase": phase,
            "trialsTotal": total,
            "trialsDone": counts.succeeded + counts.rejected + counts.failed,
            "counts": counts,
            "trials": sorted(trials, key=lambda t: t.index),
            "paretoFront": [t.name for t in sweep_plan.pareto_front(trials, objectives)],
            "best": sweep_plan.best_trial(trials, objectives),
        }
    )


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _announce(stream: TextIO | None, outcome: TrialOutcome, objectives: list[Any]) -> None:
    if stream is None:
        return
    status = outcome.status
    metrics = status.metrics
    figures = ", ".join(f"{o.metric} {_figure(getattr(metrics, o.metric))}" for o in objectives) if metrics else ""
    cache = outcome.step_cache
    reused = (
        f"; {cache['reusedSteps']} of {cache['reusedSteps'] + cache['executedSteps']} steps reused" if cache else ""
    )
    values = sweep_plan.describe_values(status.parameters)
    why = f": {status.message}" if status.phase == "Failed" and status.message else ""
    stream.write(f"{status.name} {status.phase} ({values}) {figures}{reused}{why}\n")
    stream.flush()


# --------------------------------------------------------------------------------------------
# the sweep's report


def publish_report(result: SweepResult, workdir: Path | None) -> list[str]:
    """report.json, report.md and pareto.png under the template's output, through the publisher."""
    sweep = result.sweep
    prefix = sweep.spec.template.output.uri
    with tempfile.TemporaryDirectory(prefix="kompression-sweep-", dir=workdir) as tmp:
        folder = Path(tmp)
        plot = pareto_plot(result, folder / PARETO_PLOT)
        report = folder / "report.json"
        report.write_text(json.dumps(report_body(result), indent=2, sort_keys=True))
        markdown = folder / "report.md"
        markdown.write_text(report_markdown(result, plot is not None))
        publisher = publish.Publisher(prefix)
        if plot is not None:
            publisher.add(plot, plot.stem, "Plot")
        publisher.add(report, "report", "Report")
        publisher.add(markdown, "report", "Report")
        publisher.commit({"sweep": sweep.metadata.name, "phase": result.status.phase})
        return [a.uri.rsplit("/", 1)[-1] for a in publisher.artifacts]


def report_body(result: SweepResult) -> dict[str, Any]:
    """report.json: the sweep's status, each trial's report and time, and what the step cache saved."""
    return {
        "sweep": result.sweep.metadata.name,
        "objectives": [o.to_wire() for o in result.sweep.spec.objectives],
        "status": result.status.to_wire(),
        "trials": [
            {"name": o.status.name, "output": o.output, "seconds": o.seconds, "stepCache": o.step_cache}
            for o in result.outcomes
        ],
        "stepCache": {"uri": result.cache, "reusedSteps": result.reused, "executedSteps": result.executed},
        "seconds": result.seconds,
    }


def pareto_plot(result: SweepResult, path: Path) -> Path | None:
    """The trials on the plane of the first two objectives, or None with fewer objectives or points."""
    objectives = result.sweep.spec.objectives
    if len(objectives) < 2:
        return None
    x, y = objectives[0].metric, objectives[1].metric
    front = set(result.status.paretoFront)
    points = [
        files.Point(t.name.rsplit("-", 1)[-1], getattr(t.metrics, x), getattr(t.metrics, y), t.name in front)
        for t in result.status.trials
        if t.metrics is not None and getattr(t.metrics, x) is not None and getattr(t.metrics, y) is not None
    ]
    if not points:
        return None
    return files.pareto_plot(
        points, f"{x} ({objectives[0].direction_or_default})", f"{y} ({objectives[1].direction_or_default})", path
    )


def report_markdown(result: SweepResult, plotted: bool) -> str:
    sweep, status = result.sweep, result.status
    objectives = sweep.spec.objectives
    axes = [p.name for p in sweep.spec.parameters]
    counts = status.counts or TrialCounts()
    front = set(status.paretoFront)
    reused, executed = result.reused, result.executed
    lines = [f"# Sweep report: {sweep.metadata.name}", "", "| figure | value |", "|---|---|"]
    lines.append(
        f"| trials | {status.trialsDone} of {status.trialsTotal} done: {counts.succeeded} succeeded, "
        f"{counts.rejected} rejected (missed a gate), {counts.failed} failed |"
    )
    if status.best is not None:
        best = ", ".join(f"{o.metric} {_figure(getattr(status.best.metrics, o.metric))}" for o in objectives)
        lines.append(f"| best by {objectives[0].metric} | {status.best.name}: {best} |")
    lines.append(f"| Pareto front | {', '.join(status.paretoFront) or 'no trial passed its gates'} |")
    lines.append(f"| step cache | {reused} of {reused + executed} step executions reused ({result.cache}) |")
    lines.append(f"| wall time | {result.seconds:.1f} s |")
    lines += ["", "## Trials", ""]
    header = ["trial", *axes, "phase", *(o.metric for o in objectives), "steps reused", "front"]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    by_index = {o.status.index: o for o in result.outcomes}
    for t in status.trials:
        cache = by_index[t.index].step_cache if t.index in by_index else None
        cells = [
            t.name,
            *(str(t.parameters.get(a, "-")) for a in axes),
            t.phase,
            *(_figure(getattr(t.metrics, o.metric)) if t.metrics else "-" for o in objectives),
            f"{cache['reusedSteps']} of {cache['reusedSteps'] + cache['executedSteps']}" if cache else "-",
            "yes" if t.name in front else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [t for t in status.trials if t.phase in ("Failed", "Rejected") and t.message]
    if failed:
        lines += ["", "## Why trials failed or were rejected", ""] + [f"- {t.name}: {t.message}" for t in failed]
    if plotted:
        lines += ["", f"![Pareto front]({PARETO_PLOT})"]
    lines.append("")
    return "\n".join(lines)
