"""One trial: load the original and its data, run a list of steps on it, measure after each, score the gates.

The pipeline runs one trial (or the tuning search runs several) and publishes the chosen one.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kompression.api.v1alpha1 import (
    ArtifactKind,
    CompressionJob,
    MeasuredDevice,
    Metrics,
    ModelInput,
    Result,
    Step,
    reads_weights_only,
    unmet,
)
from kompression.worker import evaluation
from kompression.worker.data import arrays as data_io
from kompression.worker.errors import ModelError, RuntimeMissing, WorkerError
from kompression.worker.formats import loader, safetensors_weights, size, torch_export
from kompression.worker.measure import gates, graphs
from kompression.worker.model import CheckpointFolder, DataSets, EngineModel, Model, OnnxModel, TorchModel
from kompression.worker.report.live import Reporter
from kompression.worker.step_cache import StepCache, StepRecord, open_cache
from kompression.worker.storage import objects
from kompression.worker.techniques import TECHNIQUES, StepContext, Techniques


@dataclass
class Loaded:
    """What every trial starts from."""

    job: CompressionJob
    prefix: str
    model: Model
    model_path: Path
    data: DataSets
    baseline: graphs.Measured
    workdir: Path
    device: str
    evaluate: evaluation.Evaluator  # how a step's output is scored: the evaluator of the model's kind
    # The original re-measured on another device than the job's, for a like-for-like speedup.
    remeasured: dict[MeasuredDevice, Metrics] = field(default_factory=dict)
    cache: StepCache | None = None  # spec.stepCache: step prefixes other jobs ran

    def baseline_elsewhere(self, device: MeasuredDevice) -> Metrics:
        """The original's size, parameters and latency on another device than the job's (measured once)."""
        if device not in self.remeasured:
            spec = self.job.spec
            self.remeasured[device] = graphs.measure(
                self.model,
                self.model_path,
                spec.model.inputs,
                spec.measurement,
                None,
                "",
                None,
                graphs.torch_device(device),
                data_io.first_sample(self.data),
            ).metrics
        return self.remeasured[device]


@dataclass
class Trial:
    steps: list[Step]
    records: list[StepRecord]
    result: Result

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.result.gates)


def default_techniques() -> Techniques:
    return TECHNIQUES


# --------------------------------------------------------------------------------------------
# loading


def job_device(job: CompressionJob) -> str:
    """The device the job runs on; a step that needs a GPU fails here without one, before any work."""
    gpus = job.spec.resources.gpus
    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    for step in job.spec.steps:
        if device == "cpu" and step.needs.gpu:
            why = "resources.gpus is 0" if gpus == 0 else "this worker sees no CUDA device"
            raise RuntimeMissing(f"step {step.name}: {unmet(step.kind, step.config, 'gpu')}; {why}")
    return device


def load(job: CompressionJob, prefix: str, workdir: Path, reporter: Reporter) -> Loaded:
    spec = job.spec
    objects.parse_uri(prefix)  # an unusable output URI fails before any work
    device = job_device(job)
    model_path = objects.source(spec.model.uri, workdir / "model", ModelError, "spec.model.uri")

    def fetch_sibling(name: str) -> Path:
        uri = spec.model.uri.rsplit("/", 1)[0] + "/" + name
        return objects.source(uri, model_path.parent, ModelError, "ONNX external data", dest=model_path.parent / name)

    model = loader.load_model(
        spec.model,
        model_path,
        fetch_sibling if not objects.parse_uri(spec.model.uri).is_local else None,
        checkpoint=job.spec.image == "worker-llm",  # the LLM techniques work on the folder itself
        any_architecture=reads_weights_only(s.config for s in spec.steps),  # no model class is built
    )
    prepared = evaluation.prepare(job, model, model_path, workdir, device)
    cache = open_cache(job, model_path, prepared.data, device, workdir)
    baseline = cache.baseline() if cache is not None else None
    if baseline is None:
        baseline = prepared.evaluate(prepared.model, model_path, None)
        if cache is not None:
            cache.store_baseline(baseline)
    reporter.phase_done("Baseline")
    return Loaded(
        job,
        prefix,
        prepared.model,
        model_path,
        prepared.data,
        baseline,
        workdir,
        device,
        prepared.evaluate,
        cache=cache,
    )


# --------------------------------------------------------------------------------------------
# steps


def serialize(model: Model, folder: Path, declared: Sequence[ModelInput] = ()) -> tuple[Path, ArtifactKind]:
    """The model's file on disk: its size is the step's size, and it is what gets published."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, CheckpointFolder):
        return model.path, "HuggingFaceFile"  # published file by file (pipeline.publish_trial)
    if isinstance(model, OnnxModel):
        return model.path, "ONNXModel"
    if isinstance(model, EngineModel):
        return model.path, "TensorRTEngine"
    try:
        return torch_export.save_torch_export(model, folder / "model.pt2", declared), "TorchExport"
    except ModelError:
        raise
    except Exception:
        # Some graphs (e.g. eager quantized modules) cannot be exported: keep the weights instead.
        return safetensors_weights.save_safetensors(model.module, folder / "model.safetensors"), "SafeTensors"


class Checkpoints:
    """Durable per-step checkpoints under <prefix>/checkpoints/<trial digest>/<step>/<name>.pt.

    Saved with torch.save and read back with weights_only=True: a checkpoint holds tensors and
    plain containers only (state dicts, optimizer state, epoch counters)."""

    def __init__(self, prefix: str, steps: list[Step]) -> None:
        digest = hashlib.sha256(json.dumps([s.to_wire() for s in steps], sort_keys=True).encode()).hexdigest()[:16]
        self.prefix = prefix
        self.root = objects.join(prefix, "checkpoints", digest)

    def save(self, step: str, name: str, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        target = objects.join(self.root, step, f"{name}.pt")
        objects.confine(self.prefix, target)  # a symlinked checkpoints/ must not lead writes elsewhere
        objects.write_bytes(buffer.getvalue(), target)

    def load(self, step: str, name: str) -> dict[str, Any] | None:
        try:
            body = objects.read_bytes(objects.join(self.root, step, f"{name}.pt"))
        except objects.ObjectNotFound:
            return None
        state = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
        return state if isinstance(state, dict) else None

    def clear(self) -> None:
        objects.confine(self.prefix, self.root)
        objects.remove(self.root)
        parent = self.root.rsplit("/", 1)[0]
        if not objects.list_files(parent):
            objects.remove(parent)  # leave no empty checkpoints/ folder behind on local disks


def run_steps(
    loaded: Loaded,
    steps: list[Step],
    techniques: Techniques,
    reporter: Reporter,
    seed: int,
    *,
    extra_float_layers: int = 0,
) -> list[StepRecord]:
    spec = loaded.job.spec
    teacher = loaded.model if isinstance(loaded.model, TorchModel) else None
    # Techniques may modify their input in place (pruning does): the teacher stays pristine.
    current: Model = copy.deepcopy(loaded.model) if teacher is not None else loaded.model
    outputs: dict[str, Model] = {}
    records: list[StepRecord] = []
    cache = loaded.cache
    # The longest prefix of these steps another job published: the loop starts after it.
    for reused in cache.longest_prefix(steps, seed, extra_float_layers, loaded.model) if cache is not None else []:
        reporter.step_started(reused.step.name)
        reporter.step_finished(reused.step.name, reused.measured.metrics, "reused from the step cache")
        records.append(reused)
        outputs[reused.step.name] = current = reused.model
    checkpoints = Checkpoints(loaded.prefix, steps)
    for index, step in enumerate(steps[len(records) :], start=len(records)):
        config = step.config
        technique = techniques.get(type(config))
        if technique is None:
            raise WorkerError(f"step {step.name}: no technique registered for {step.kind!r} in this worker")
        reporter.step_started(step.name)
        started = time.monotonic()
        workdir = loaded.workdir / "steps" / step.name
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = StepContext(
            name=step.name,
            kind=step.kind,
            config=config,
            field=f"spec.steps[{index}].{step.kind}",
            inputs=spec.model.inputs,
            measurement=spec.measurement,
            teacher=teacher,
            outputs=dict(outputs),
            data=loaded.data,
            device=loaded.device,
            workdir=workdir,
            report_progress=partial(reporter.step_progress, step.name),
            save_checkpoint=partial(checkpoints.save, step.name),
            load_checkpoint=partial(checkpoints.load, step.name),
            seed=seed,
            extra_float_layers=extra_float_layers,
        )
        try:
            torch.manual_seed(seed)
            np.random.seed(seed)
            result = technique(current, ctx)
            artifact, kind = serialize(result.model, workdir / "out", spec.model.inputs)
            if result.metrics is None:
                measured = loaded.evaluate(result.model, artifact, loaded.baseline)
            else:  # a model no runtime here loads: the technique scored it itself
                measured = graphs.Measured(result.metrics.model_copy(update={"sizeBytes": size.model_size(artifact)}))
        except WorkerError as exc:
            reporter.step_failed(step.name, exc.message)
            raise
        seconds = time.monotonic() - started
        notes = {**result.notes, **measured.notes}
        summary = result.summary or ", ".join(f"{k}={v}" for k, v in notes.items()) or None
        reporter.step_finished(step.name, measured.metrics, summary)
        record = StepRecord(step, result.model, artifact, kind, measured, seconds, notes, list(result.extra_artifacts))
        records.append(record)
        if cache is not None:
            cache.store(steps[: index + 1], seed, extra_float_layers, record)
        outputs[step.name] = result.model
        current = result.model
    return records


def score_trial(loaded: Loaded, steps: list[Step], records: list[StepRecord]) -> Trial:
    final = records[-1].measured.metrics
    # The final model may have run elsewhere than the job's device (an ONNX model on the CPU of a GPU
    # job without onnxruntime's CUDA provider): the original is then re-timed there, never CPU vs GPU.
    speed_baseline = None
    if final.device is not None and final.device != loaded.baseline.metrics.device:
        speed_baseline = loaded.baseline_elsewhere(final.device)
    result = gates.compute_result(loaded.baseline.metrics, final, speed_baseline)
    result.gates = gates.evaluate(loaded.job.spec.acceptance, result)
    result.gatesPassed = all(g.passed for g in result.gates)
    return Trial(steps, records, result)
