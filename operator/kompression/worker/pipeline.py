"""The worker's one pipeline, for every step kind and model kind: load, run the steps (or search
over them), publish the chosen trial."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kompression.api.constants import ExitCode
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import ArtifactKind, CompressionJob, MemoryPlan
from kompression.worker import distributed, lazy, memory, tuning
from kompression.worker.errors import GateFailed, WorkerError
from kompression.worker.formats import safetensors_weights
from kompression.worker.measure import gates
from kompression.worker.model import CheckpointFolder, TorchModel
from kompression.worker.report import files
from kompression.worker.report.live import Reporter
from kompression.worker.step_cache import StepRecord
from kompression.worker.storage import objects, publish
from kompression.worker.techniques import Techniques
from kompression.worker.trial import (
    Checkpoints,
    Loaded,
    Trial,
    default_techniques,
    job_device,
    load,
    run_steps,
    score_trial,
)

# Under torchrun the LLM techniques calibrate on every rank, but only rank 0 loads, scores and
# publishes: the others join the group and wait for its plan (worker/llm/ranks.py).
LLM_RANKS = "kompression.worker.llm.compress:join_ranks"

# --------------------------------------------------------------------------------------------
# the whole run


@dataclass
class RunOptions:
    output: str | None = None  # overrides spec.output.uri
    techniques: Techniques | None = None
    seed: int = 0
    workdir: Path | None = None


def run(job: CompressionJob, options: RunOptions, reporter: Reporter) -> tuple[WorkerReport, list[files.Row]]:
    """Run the job to completion. Raises a WorkerError (GateFailed after publishing under rejected/)."""
    prefix = options.output or job.spec.output.uri
    if distributed.world_size() > 1 and job.spec.image == "worker-llm":
        objects.parse_uri(prefix)  # an unusable output URI fails on every rank before any work
        if not lazy.resolve(LLM_RANKS)(job_device(job), options.workdir):
            return reporter.report, []  # this rank calibrated its share; rank 0 publishes
    reporter.set_environment(files.environment())
    planned = memory.plan(job)
    if planned is not None:
        # Before the weights are fetched: a pod too small for the job fails in seconds, not at OOM.
        reporter.set_memory_plan(MemoryPlan.model_validate(planned.to_wire()))
        memory.check(job, planned)
    with tempfile.TemporaryDirectory(prefix="kompression-", dir=options.workdir) as tmp:
        loaded = load(job, prefix, Path(tmp), reporter)
        techniques = options.techniques if options.techniques is not None else default_techniques()
        try:
            if job.spec.acceptance is not None and job.spec.acceptance.strategy == "Auto":
                trial = tuning.search(loaded, techniques, reporter, options.seed)
            else:
                records = run_steps(loaded, job.spec.steps, techniques, reporter, options.seed)
                trial = score_trial(loaded, job.spec.steps, records)
        except WorkerError as exc:
            if exc.exit_code in ExitCode.PERMANENT and distributed.is_leader():
                Checkpoints(prefix, job.spec.steps).clear()  # a permanent failure: nothing to resume
            raise
        reporter.set_result(trial.result)
        rows = rows_for(loaded, trial)
        if distributed.is_leader():
            cache = None if loaded.cache is None else loaded.cache.summary()
            publish_trial(
                job, prefix, trial, rows=rows, folder=Path(tmp) / "publish", reporter=reporter, step_cache=cache
            )
        return reporter.report, rows


def publish_trial(
    job: CompressionJob,
    prefix: str,
    trial: Trial,
    *,
    rows: list[files.Row],
    folder: Path,
    reporter: Reporter,
    step_cache: dict[str, Any] | None = None,
) -> None:
    """Publish the trial: under the output prefix when it passed every gate, else under rejected/ and
    raise GateFailed. step_cache: what the job took from spec.stepCache and ran itself, for the report."""
    target = prefix if trial.passed else objects.join(prefix, publish.REJECTED)
    folder.mkdir()
    publisher = publish.Publisher(target)
    final = trial.records[-1]
    for path, kind, name in _model_files(final, folder):
        publisher.add(path, final.step.name, kind, name)
    for record in trial.records:
        for name, kind, path in record.extra:
            publisher.add(path, name, kind, f"{record.step.name}/{path.name}")
    # The worker-llm image has no matplotlib: a checkpoint folder's report is its tables.
    plots = [] if isinstance(final.model, CheckpointFolder) else files.plot(rows, folder)
    for p in plots:
        publisher.add(p, p.stem, "Plot")
    # The report lists the model artifacts; the report files themselves are in the manifest.
    reporter.set_artifacts(list(publisher.artifacts))
    snapshot = reporter.report.model_copy(deep=True)
    snapshot.phase = "Succeeded" if trial.passed else "Failed"
    name = job.metadata.name or "compressionjob"
    report_json = files.write_json(snapshot, rows, publisher.run_id, folder / "report.json", step_cache=step_cache)
    publisher.add(report_json, "report", "Report")
    markdown = files.write_markdown(snapshot, rows, plots, name, folder / "report.md", step_cache=step_cache)
    publisher.add(markdown, "report", "Report")
    manifest = publisher.commit(
        {"job": name, "namespace": job.metadata.namespace, "passed": trial.passed, "result": trial.result.to_wire()}
    )
    reporter.set_artifacts([*publisher.artifacts, manifest])
    Checkpoints(prefix, trial.steps).clear()
    reporter.phase_done("Publish")
    if not trial.passed:
        raise GateFailed(
            f"{gates.describe_failures(trial.result)}. The best model found is kept under {target}/ "
            "for inspection; nothing was published as the result"
        )


def _model_files(final: StepRecord, folder: Path) -> list[tuple[Path, ArtifactKind, str | None]]:
    """The final model's files, their kinds and their names under the run: a checkpoint folder's
    files under model/, as servers load them; a graph's file as model.<suffix>, with its weights as
    model.safetensors beside a TorchExport archive."""
    if isinstance(final.model, CheckpointFolder):
        return [
            (
                path,
                "SafeTensors" if path.suffix == ".safetensors" else "HuggingFaceFile",
                f"model/{path.relative_to(final.artifact).as_posix()}",
            )
            for path in sorted(p for p in final.artifact.rglob("*") if p.is_file())
        ]
    files: list[tuple[Path, ArtifactKind, str | None]] = [
        (final.artifact, final.kind, f"model{''.join(final.artifact.suffixes)}")
    ]
    if isinstance(final.model, TorchModel) and final.kind == "TorchExport":
        files.append(
            (
                safetensors_weights.save_safetensors(final.model.module, folder / "model.safetensors"),
                "SafeTensors",
                None,
            )
        )
    return files


def rows_for(loaded: Loaded, trial: Trial) -> list[files.Row]:
    baseline = loaded.baseline
    rows = [files.Row("original", baseline.metrics, baseline.latency_ms, None, baseline.notes or None)]
    for r in trial.records:
        rows.append(files.Row(r.step.name, r.measured.metrics, r.measured.latency_ms, round(r.seconds, 3), r.notes))
    return rows
