"""spec.stepCache: the results of step prefixes, published once and reused by every job that shares them.

A trial's state after its first k steps is a function of the model (its source and its bytes), the
data (the spec and the arrays read), the measurement settings, the device, the seed, the worker's
version and those k steps with all their options. The digest of these names a folder under the
cache, ``<cache>/<digest>/``, published like an output prefix (``storage/publish``: the files under
``runs/<id>/``, then ``manifest.json`` as the commit point, so a reader sees a whole entry or none,
and several jobs may publish the same entry at once). An entry holds the k-th step's model and its
measurements (``step.json``); the baseline measurement of the original is the entry of the empty
prefix (``baseline.json``, and the reference outputs later steps are scored against).

A job starts after the longest prefix of its steps whose every entry is there. What it reads is
vetted as any input is: the manifest's digests and sizes on download, the model by its format's
loader. An entry that fails those checks is not used (the steps run again and publish it anew).

Only a model a loader reads back is kept: a TorchExport archive or a single-file ONNX model. After a
step whose model is kept otherwise (a TensorRT engine, weights without an architecture, a checkpoint
folder), nothing further is published for that trial, and later trials run from there again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from kompression import __version__
from kompression.api.v1alpha1 import ArtifactKind, CompressionJob, Metrics, ModelSource, Step
from kompression.worker import distributed
from kompression.worker.errors import WorkerError
from kompression.worker.formats import loader
from kompression.worker.measure import graphs
from kompression.worker.model import DataSets, Model, TorchModel
from kompression.worker.storage import objects, publish

log = logging.getLogger(__name__)

# Part of every digest: a worker that changes how an entry is written or read changes this.
CACHE_FORMAT = 1
STEP_FILE = "step.json"
BASELINE_FILE = "baseline.json"
OUTPUTS_FILE = "outputs.npy"
# The kinds a loader reads back as the model the next step takes.
REUSABLE: dict[ArtifactKind, Literal["TorchExport", "ONNX"]] = {"TorchExport": "TorchExport", "ONNXModel": "ONNX"}


@dataclass
class StepRecord:
    """One step's output in a trial: its model and published file, its measurements and notes."""

    step: Step
    model: Model
    artifact: Path
    kind: ArtifactKind
    measured: graphs.Measured
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)
    extra: list[tuple[str, ArtifactKind, Path]] = field(default_factory=list)


class _Entry(BaseModel):
    """step.json or baseline.json: a measurement, read back as strictly as it was written."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    metrics: Metrics
    latencyMs: dict[int, tuple[float, float]]
    notes: dict[str, Any]
    seconds: float = 0.0
    kind: ArtifactKind | None = None  # a step's model kind
    model: str | None = None  # a step's model file, relative to its run
    extra: list[tuple[str, ArtifactKind, str]] = []  # a step's extra files: name, kind, relative path


def _sha256_tree(path: Path) -> str:
    """A file's sha256, or a folder's: of its files' relative paths and digests."""
    if path.is_file():
        return objects.sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{objects.sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _data_digest(data: DataSets) -> str:
    """The arrays and token ids the job read, whatever file or builtin they came from."""
    digest = hashlib.sha256()
    for role in ("calibration", "evaluation", "training"):
        ds = getattr(data, role)
        if ds is None:
            continue
        digest.update(f"{role}:{ds.batch_size}\n".encode())
        arrays = [*ds.inputs.items(), *([("labels", ds.labels)] if ds.labels is not None else [])]
        for name, array in arrays:
            contiguous = np.ascontiguousarray(array)
            digest.update(f"{name}:{contiguous.dtype.str}:{contiguous.shape}\n".encode())
            digest.update(contiguous.tobytes())
    for role in ("calibration_text", "evaluation_text"):
        texts = getattr(data, role)
        if texts is not None:
            digest.update(f"{role}:{json.dumps(texts.samples)}\n".encode())
    return digest.hexdigest()


def identity(job: CompressionJob, model_path: Path, data: DataSets, device: str) -> dict[str, Any]:
    """What every prefix of this job's steps starts from, as the digests spell it."""
    spec = job.spec
    return {
        "format": CACHE_FORMAT,
        "kompression": __version__,
        "torch": torch.__version__,
        "model": spec.model.to_wire(),
        "modelSha256": _sha256_tree(model_path),
        "data": spec.data.to_wire() if spec.data is not None else None,
        "dataSha256": _data_digest(data),
        "measurement": spec.measurement.to_wire(),
        "device": device,
    }


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class StepCache:
    """The cache of one job: where it is, what the job starts from, and what it reused."""

    root: str
    identity: dict[str, Any]
    source: ModelSource  # spec.model: a cached model is read back with its inputs declaration
    workdir: Path
    baseline_reused: bool = False
    reused: int = 0  # step executions taken from the cache
    executed: int = 0  # step executions run here
    unusable: set[str] = field(default_factory=set)  # entries that failed a check: published anew

    def prefix_uri(self, steps: list[Step], seed: int, extra_float_layers: int) -> str:
        body = {
            "start": self.identity,
            "seed": seed,
            "extraFloatLayers": extra_float_layers,
            "steps": [s.to_wire() for s in steps],
        }
        return objects.join(self.root, _digest(body))

    def baseline_uri(self) -> str:
        return objects.join(self.root, _digest({"start": self.identity, "baseline": True}))

    def summary(self) -> dict[str, Any]:
        """What report.json records under details.stepCache."""
        return {
            "uri": self.root,
            "baselineReused": self.baseline_reused,
            "reusedSteps": self.reused,
            "executedSteps": self.executed,
        }

    # ----------------------------------------------------------------------------------------
    # reading

    def _fetch(self, uri: str, name: str) -> tuple[_Entry, dict[str, Path]] | None:
        """An entry's measurement (file `name`) and files, verified against its manifest; None when it
        is absent or fails a check (then it is computed again and published anew)."""
        try:
            if publish.read_manifest(uri) is None:
                return None
            files = publish.fetch_published(uri, Path(tempfile.mkdtemp(prefix="entry-", dir=self.workdir)))
            return _Entry.model_validate_json(files[name].read_bytes()), files
        except objects.ObjectNotFound:
            return None
        except (WorkerError, ValidationError, KeyError) as exc:
            log.warning("step cache entry %s is not usable, running its steps again: %s", uri, exc)
            self.unusable.add(uri)
            return None

    def baseline(self) -> graphs.Measured | None:
        """The original's measurement, when an earlier job published it."""
        fetched = self._fetch(self.baseline_uri(), BASELINE_FILE)
        if fetched is None:
            return None
        entry, files = fetched
        outputs = np.load(files[OUTPUTS_FILE], allow_pickle=False) if OUTPUTS_FILE in files else None
        self.baseline_reused = True
        return graphs.Measured(entry.metrics, dict(entry.latencyMs), outputs, entry.notes)

    def longest_prefix(self, steps: list[Step], seed: int, extra_float_layers: int, like: Model) -> list[StepRecord]:
        """The records of the longest run of leading steps the cache holds; `like` is the job's own
        model, whose example inputs (a real sample of the data) a read-back TorchModel takes."""
        records: list[StepRecord] = []
        for k in range(1, len(steps) + 1):
            uri = self.prefix_uri(steps[:k], seed, extra_float_layers)
            fetched = self._fetch(uri, STEP_FILE)
            if fetched is None:
                break
            entry, files = fetched
            model = self._model(uri, entry, files, like)
            if model is None or entry.kind is None or entry.model is None:
                break
            records.append(
                StepRecord(
                    steps[k - 1],
                    model,
                    files[entry.model],
                    entry.kind,
                    graphs.Measured(entry.metrics, dict(entry.latencyMs)),
                    entry.seconds,
                    {**entry.notes, "stepCache": "reused"},
                    [(name, kind, files[path]) for name, kind, path in entry.extra],
                )
            )
        self.reused += len(records)
        return records

    def _model(self, uri: str, entry: _Entry, files: dict[str, Path], like: Model) -> Model | None:
        """The entry's model, read and vetted by its format's loader."""
        if entry.kind not in REUSABLE or entry.model not in files:
            self.unusable.add(uri)
            return None
        path = files[entry.model]
        source = self.source.model_copy(update={"uri": objects.join(uri, entry.model), "format": REUSABLE[entry.kind]})
        try:
            model = loader.load_model(source, path)
        except WorkerError as exc:
            log.warning("step cache entry %s is not usable, running its step again: %s", uri, exc)
            self.unusable.add(uri)
            return None
        if isinstance(model, TorchModel) and isinstance(like, TorchModel):
            return TorchModel(model.module, like.example_inputs)
        return model

    # ----------------------------------------------------------------------------------------
    # writing

    def store_baseline(self, measured: graphs.Measured) -> None:
        """Publish the original's measurement for the jobs after this one."""
        folder = Path(tempfile.mkdtemp(prefix="baseline-", dir=self.workdir))
        files: list[tuple[Path, ArtifactKind, str]] = []
        if measured.outputs is not None:
            np.save(folder / OUTPUTS_FILE, measured.outputs, allow_pickle=False)
            files.append((folder / OUTPUTS_FILE, "Report", OUTPUTS_FILE))
        entry = _Entry(version=1, metrics=measured.metrics, latencyMs=measured.latency_ms, notes=measured.notes)
        self._publish(self.baseline_uri(), "baseline", entry, folder / BASELINE_FILE, files)

    def store(self, steps: list[Step], seed: int, extra_float_layers: int, record: StepRecord) -> None:
        """Publish the model after the last of `steps`, unless the cache has it or cannot read it back."""
        self.executed += 1
        if record.kind not in REUSABLE:
            return
        uri = self.prefix_uri(steps, seed, extra_float_layers)
        if uri not in self.unusable and publish.read_manifest(uri) is not None:
            return  # another trial published this prefix while this one ran it
        model = f"model{''.join(record.artifact.suffixes)}"
        files: list[tuple[Path, ArtifactKind, str]] = [(record.artifact, record.kind, model)]
        files += [(path, kind, f"extra/{path.name}") for _, kind, path in record.extra]
        entry = _Entry(
            version=1,
            metrics=record.measured.metrics,
            latencyMs=record.measured.latency_ms,
            notes=record.notes,
            seconds=record.seconds,
            kind=record.kind,
            model=model,
            extra=[(name, kind, f"extra/{path.name}") for name, kind, path in record.extra],
        )
        folder = Path(tempfile.mkdtemp(prefix="step-", dir=self.workdir))
        self._publish(uri, record.step.name, entry, folder / STEP_FILE, files)

    def _publish(
        self, uri: str, name: str, entry: _Entry, body: Path, files: list[tuple[Path, ArtifactKind, str]]
    ) -> None:
        try:
            body.write_text(entry.model_dump_json())
        except ValueError as exc:  # a note no JSON spells: the entry is not kept
            log.warning("step cache: %s is not kept: %s", name, exc)
            return
        publisher = publish.Publisher(uri)
        for path, kind, relative in files:
            publisher.add(path, name, kind, relative)
        publisher.add(body, name, "Report")
        publisher.commit({"stepCache": {"name": name}})


def open_cache(job: CompressionJob, model_path: Path, data: DataSets, device: str, workdir: Path) -> StepCache | None:
    """The job's step cache, or None when spec.stepCache is unset or the job runs on several ranks:
    torchrun's ranks would each decide which prefix to reuse, and one entry published between two
    ranks' reads would set them on different steps (one training with DDP, the others not)."""
    if job.spec.stepCache is None or distributed.world_size() > 1:
        return None
    objects.parse_uri(job.spec.stepCache.uri)  # an unusable cache URI fails before any work
    folder = workdir / "step-cache"
    folder.mkdir(parents=True, exist_ok=True)
    return StepCache(job.spec.stepCache.uri, identity(job, model_path, data, device), job.spec.model, folder)
