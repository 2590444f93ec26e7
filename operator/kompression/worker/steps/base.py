"""The one interface every technique implements: model + context -> model + notes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kompression.api.v1alpha1 import ArtifactKind, CompressionJob, Step
from kompression.worker.model import DataSets, Model, TorchModel


@dataclass
class StepContext:
    """Everything a technique may read besides its own config."""

    job: CompressionJob
    step: Step
    teacher: TorchModel | None  # the original model (None when the original is ONNX)
    outputs: Mapping[str, Model]  # earlier steps' output models, by step name
    data: DataSets
    device: str  # "cpu" or "cuda"
    workdir: Path  # scratch folder for this step's files
    report_progress: Callable[[float, str], None]  # fraction of this step done, in [0, 1]
    # Durable per-step checkpoints under the output prefix (checkpoints/<step>/<name>), so an
    # evicted pod resumes training instead of restarting. load returns None when absent.
    save_checkpoint: Callable[[str, dict[str, Any]], None]
    load_checkpoint: Callable[[str], dict[str, Any] | None]
    seed: int = 0


@dataclass
class StepResult:
    model: Model
    # Technique-specific facts for the report (e.g. {"removedChannels": 812}); measured metrics
    # (size, accuracy, latency, sparsity) are computed by the pipeline, not here.
    notes: dict[str, float | int | str] = field(default_factory=dict)
    # Extra files to publish besides the model (e.g. a TensorRT timing cache).
    extra_artifacts: list[tuple[str, ArtifactKind, Path]] = field(default_factory=list)


class Technique(Protocol):
    def __call__(self, model: Model, ctx: StepContext) -> StepResult: ...


def standalone_context(
    step: Mapping[str, Any],
    workdir: Path,
    data: DataSets,
    input_shape: Sequence[int],
    *,
    teacher: TorchModel | None = None,
    outputs: Mapping[str, Model] | None = None,
    checkpoints: dict[str, dict[str, Any]] | None = None,
    device: str = "cpu",
    seed: int = 0,
    inputs: Sequence[Mapping[str, Any]] | None = None,
) -> StepContext:
    """A context for running one technique outside the pipeline (a notebook, a test, a benchmark):
    the step, as a manifest mapping, wrapped in a minimal CompressionJob, parsed with the same
    model the API server's schema comes from; checkpoints are kept in `checkpoints` (in memory).
    The model takes one float input `x` of `input_shape`, unless `inputs` lists them as a manifest
    would (spec.model.inputs), e.g. a transformer's input_ids and attention_mask."""
    job = CompressionJob.model_validate(
        {
            "apiVersion": "kompression.dev/v1alpha1",
            "kind": "CompressionJob",
            "metadata": {"name": "standalone"},
            "spec": {
                "model": {
                    "uri": "file://model",
                    "format": "TorchExport",
                    "inputs": [dict(i) for i in inputs] if inputs else [{"name": "x", "shape": list(input_shape)}],
                },
                "steps": [dict(step)],
                "output": {"uri": "file://out/"},
            },
        }
    )
    store = checkpoints if checkpoints is not None else {}
    return StepContext(
        job=job,
        step=job.spec.steps[0],
        teacher=teacher,
        outputs=outputs or {},
        data=data,
        device=device,
        workdir=workdir,
        report_progress=lambda fraction, message: None,
        save_checkpoint=store.__setitem__,
        load_checkpoint=store.get,
        seed=seed,
    )
