"""The one interface every technique implements (model + context -> model + notes), and the one
registry of techniques, keyed by the config class of the spec's step kind.

Each technique is named by its module path and imported when a step runs it: the LLM techniques'
libraries (llm-compressor, Model Optimizer) exist only in the worker-llm environment, the graph
techniques' (onnxruntime, Torch-Pruning, tensorly) only in the main one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from kompression.api.v1alpha1 import (
    ApiModel,
    ArtifactKind,
    CompressionJob,
    DistillStep,
    LLMQuantizeStep,
    LLMSparsifyStep,
    LowRankStep,
    Measurement,
    Metrics,
    ModelInput,
    OnnxStep,
    PruneStep,
    QuantizeStep,
    TensorRTStep,
)
from kompression.worker import lazy
from kompression.worker.model import DataSets, Model, TorchModel

ConfigT = TypeVar("ConfigT", bound=ApiModel)


@dataclass
class StepContext(Generic[ConfigT]):
    """Everything a technique may read: its own typed config and the facts of the job it needs (never the
    job itself, so that what a technique depends on is written here)."""

    name: str  # the step's name
    kind: str  # the technique's field in the Step (Step.kind), for messages
    config: ConfigT  # the technique's configuration, typed
    field: str  # where the config sits in the manifest (spec.steps[2].distill), for messages
    inputs: Sequence[ModelInput]  # spec.model.inputs, in the model's order
    measurement: Measurement  # spec.measurement: how timing runs (threads)
    teacher: TorchModel | None  # the original model (None when the original is ONNX)
    outputs: Mapping[str, Model]  # earlier steps' output models, by step name
    data: DataSets  # each set knows its batch size (spec.data.<role>.batchSize)
    device: str  # "cpu" or "cuda"
    workdir: Path  # scratch folder for this step's files
    report_progress: Callable[[float, str], None]  # fraction of this step done, in [0, 1]
    # Durable per-step checkpoints under the output prefix (checkpoints/<step>/<name>), so an
    # evicted pod resumes training instead of restarting. load returns None when absent.
    save_checkpoint: Callable[[str, dict[str, Any]], None]
    load_checkpoint: Callable[[str], dict[str, Any] | None]
    seed: int = 0
    # acceptance.strategy Auto: how many layers an int8 quantize step keeps float beyond its own
    # choice, the next most int8-sensitive it measured (QuantizeStep.float_fallbacks bounds it).
    extra_float_layers: int = 0


@dataclass
class StepResult:
    model: Model
    # Technique-specific facts for the report (e.g. {"removedChannels": 812}); measured metrics
    # (size, accuracy, latency, sparsity) are computed by the pipeline, not here.
    notes: dict[str, float | int | str] = field(default_factory=dict)
    # Extra files to publish besides the model (e.g. a TensorRT timing cache).
    extra_artifacts: list[tuple[str, ArtifactKind, Path]] = field(default_factory=list)
    # The figures of a model no runtime here loads (a ModelOpt checkpoint, scored by the technique
    # in memory before export): the pipeline reports these, with the size it measures itself,
    # instead of evaluating the output.
    metrics: Metrics | None = None
    summary: str | None = None  # the step's one-line status message (default: the notes as key=value)


class Technique(Protocol[ConfigT]):
    """A technique for one config class, e.g. Technique[QuantizeStep]; registered in techniques.TECHNIQUES."""

    def __call__(self, model: Model, ctx: StepContext[ConfigT], /) -> StepResult: ...


# The registry's type: a step's technique is the one registered for type(step.config).
Techniques = Mapping[type[ApiModel], Technique[Any]]


class Lazy:
    """A technique named by "package.module:function", imported when a step first runs it."""

    def __init__(self, ref: str) -> None:
        self.ref = ref

    def __call__(self, model: Model, ctx: StepContext[Any], /) -> StepResult:
        technique: Technique[Any] = lazy.resolve(self.ref)
        return technique(model, ctx)

    def __repr__(self) -> str:
        return f"Lazy({self.ref!r})"


# One line per technique: a Step's config (step.config) selects its technique by its class.
TECHNIQUES: Techniques = {
    PruneStep: Lazy("kompression.worker.steps.prune:prune"),
    LowRankStep: Lazy("kompression.worker.steps.lowrank:low_rank"),
    DistillStep: Lazy("kompression.worker.steps.distill:distill"),
    QuantizeStep: Lazy("kompression.worker.steps.quantize:quantize"),
    OnnxStep: Lazy("kompression.worker.steps.onnx_export:onnx_export"),
    TensorRTStep: Lazy("kompression.worker.steps.tensorrt:tensorrt_engine"),
    LLMQuantizeStep: Lazy("kompression.worker.llm.compress:llm_quantize"),
    LLMSparsifyStep: Lazy("kompression.worker.llm.compress:llm_sparsify"),
}


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
) -> StepContext[Any]:
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
    spec = job.spec
    only = spec.steps[0]
    return StepContext(
        name=only.name,
        kind=only.kind,
        config=only.config,
        field=f"spec.steps[0].{only.kind}",
        inputs=spec.model.inputs,
        measurement=spec.measurement,
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
