"""status: what the operator observed, written by the operator only."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from kompression.api.v1alpha1.base import MAX_STEPS, ApiModel, ShortString, StepName, Timestamp

JobPhase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed", "Suspended"]
StepPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]


class Condition(ApiModel):
    """A condition in the Kubernetes API conventions."""

    type: ShortString = Field(description="Type: Ready, Reconciling, Stalled, Succeeded or Failed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Annotated[str, StringConstraints(max_length=1024)] = Field("", description="One CamelCase word saying why.")
    message: Annotated[str, StringConstraints(max_length=32768)] = Field("", description="Human-readable details.")
    observedGeneration: int | None = Field(None, ge=0, description="The generation this condition describes.")
    lastTransitionTime: Timestamp | None = Field(None, description="When status last changed (RFC 3339).")


class Progress(ApiModel):
    """How far the worker is."""

    percentage: int = Field(0, ge=0, le=100, description="Percent done.")
    estimatedRemainingSeconds: int | None = Field(None, ge=0, description="Estimated seconds left.")
    lastUpdateTime: Timestamp | None = Field(None, description="When the worker last reported (RFC 3339).")


class ReportCursor(ApiModel):
    """The newest live report the operator accepted: later ones must come from the same pod with a higher
    sequence, or from a newer pod of the job."""

    podUID: ShortString = Field(description="UID of the worker pod that sent it.")
    sequence: int = Field(ge=0, description="Its sequence number.")


MeasuredDevice = Literal["CPU", "GPU"]
MeasuredProvider = Literal["PyTorch", "CPUExecutionProvider", "CUDAExecutionProvider", "TensorRT"]


class Metrics(ApiModel):
    """Measurements of one model."""

    sizeBytes: int | None = Field(None, ge=0, description="Size of the serialized model on disk.")
    parameters: int | None = Field(
        None, ge=0, description="Number of parameters (non-zero ones for sparse models are in sparsity)."
    )
    accuracy: float | None = Field(
        None,
        description="The evaluation metric (data.evaluation.metric); for llmQuantize jobs, the mean lm-eval `acc` "
        "over data.tasks.",
    )
    perplexity: float | None = Field(
        None, ge=0, description="llmQuantize jobs: perplexity on data.evaluation's text (lower is better)."
    )
    latencyMs: float | None = Field(
        None, ge=0, description="Median latency in milliseconds at the first measured batch size."
    )
    latencyP95Ms: float | None = Field(None, ge=0, description="95th-percentile latency in milliseconds.")
    tokensPerSecond: float | None = Field(
        None,
        ge=0,
        description="LLM jobs: greedy decoding speed in generated tokens per second, batch 1, after a warm-up "
        "(the median of a few runs), measured on `device` as transformers runs the model.",
    )
    sparsity: float | None = Field(None, ge=0, le=1, description="Fraction of weights that are zero.")
    device: MeasuredDevice | None = Field(
        None,
        description="Where the model ran when measured: the job's device (GPU when resources.gpus > 0), except an "
        "ONNX model on a GPU job whose onnxruntime has no CUDAExecutionProvider, which runs on the CPU.",
    )
    provider: MeasuredProvider | None = Field(
        None,
        description="What ran the model: PyTorch, onnxruntime's CPUExecutionProvider or CUDAExecutionProvider, "
        "or TensorRT.",
    )


class StepStatus(ApiModel):
    """The state and results of one step."""

    name: StepName = Field(description="The step's name.")
    phase: StepPhase = Field("Pending", description="Pending, Running, Succeeded, Failed or Skipped.")
    startTime: Timestamp | None = Field(None, description="When the step started.")
    completionTime: Timestamp | None = Field(None, description="When the step finished.")
    metrics: Metrics | None = Field(None, description="Measurements of the step's output model.")
    message: Annotated[str, StringConstraints(max_length=4096)] | None = Field(None, description="Details.")


class GateResult(ApiModel):
    """The verdict of one acceptance gate."""

    name: ShortString = Field(
        description="The gate: maxAccuracyDrop, maxPerplexityIncrease, minCompressionRatio or minSpeedup."
    )
    passed: bool = Field(description="Whether the gate passed.")
    measured: float = Field(description="The measured value.")
    limit: float = Field(description="The limit from spec.acceptance.")


class Result(ApiModel):
    """The outcome of the whole pipeline."""

    baseline: Metrics | None = Field(None, description="The original model's measurements.")
    final: Metrics | None = Field(None, description="The final model's measurements.")
    compressionRatio: float | None = Field(None, description="Original size / final size on disk.")
    accuracyDelta: float | None = Field(None, description="Final minus original evaluation metric.")
    speedup: float | None = Field(
        None,
        description="Original / final median latency, both on the final model's device (see speedupBaseline).",
    )
    speedupBaseline: Metrics | None = Field(
        None,
        description="The original model re-measured on the final model's device, set when that differs from the "
        "job's device (a GPU job whose final ONNX model ran on the CPU): the speedup is computed against it, so "
        "it never compares a CPU with a GPU.",
    )
    gatesPassed: bool | None = Field(None, description="Whether every acceptance gate passed.")
    gates: list[GateResult] = Field(default_factory=list, max_length=16, description="Each gate's verdict.")


ArtifactKind = Literal[
    "TorchExport",
    "TorchScript",
    "SafeTensors",
    "HuggingFaceFile",
    "ONNXModel",
    "TensorRTEngine",
    "TimingCache",
    "Report",
    "Plot",
    "Manifest",
]


class Artifact(ApiModel):
    """A published file."""

    name: ShortString = Field(description="Name of the artifact (usually the step that made it).")
    kind: ArtifactKind = Field(description="What the file is.")
    uri: Annotated[str, StringConstraints(max_length=2048)] = Field(description="Where it is.")
    sha256: Annotated[str, StringConstraints(pattern=r"^[a-f0-9]{64}$")] = Field(description="SHA-256 of the file.")
    sizeBytes: int = Field(ge=0, description="Size of the file.")


class Environment(ApiModel):
    """Software and hardware the worker ran with (engines are only valid on a matching setup)."""

    torch: ShortString | None = Field(None, description="PyTorch version.")
    onnx: ShortString | None = Field(None, description="onnx version.")
    onnxruntime: ShortString | None = Field(None, description="onnxruntime version.")
    tensorrt: ShortString | None = Field(None, description="TensorRT version used to build engines.")
    cuda: ShortString | None = Field(None, description="CUDA version.")
    gpu: ShortString | None = Field(None, description="GPU model.")
    computeCapability: ShortString | None = Field(None, description="GPU compute capability, e.g. 9.0.")
    cpu: ShortString | None = Field(None, description="CPU model.")


class MemoryPlan(ApiModel):
    """What an LLM job's pod was planned to need (api/memory_plan.py), from the model's config and
    safetensors headers, the recipe and the calibration data."""

    hostBytes: int = Field(ge=0, description="Peak host memory, in bytes.")
    gpuBytes: int = Field(ge=0, description="Peak GPU memory per GPU, in bytes; 0 without a GPU.")
    scratchBytes: int = Field(ge=0, description="Scratch disk, in bytes.")
    knob: Annotated[str, StringConstraints(max_length=256)] = Field(
        description="What in the manifest lowers the host memory most."
    )


class CompressionJobStatus(ApiModel):
    """The observed state, written by the operator only."""

    phase: JobPhase | None = Field(None, description="Pending, Queued, Running, Succeeded, Failed or Suspended.")
    observedGeneration: int | None = Field(None, ge=0, description="The generation the operator last acted on.")
    jobName: ShortString | None = Field(None, description="Name of the batch/v1 Job that runs the worker.")
    jobRecreations: int | None = Field(
        None,
        ge=0,
        description="How many times the worker Job was deleted before it finished and made again; past the "
        "operator's limit the job fails with reason RecreateLimitExceeded.",
    )
    queuePosition: int | None = Field(
        None, ge=0, description="Position in the operator's queue while Queued (1 = next)."
    )
    startTime: Timestamp | None = Field(None, description="When the worker started.")
    completionTime: Timestamp | None = Field(None, description="When the job finished.")
    currentStep: ShortString | None = Field(None, description="The step running now.")
    progress: Progress | None = Field(None, description="Percent done and time left.")
    steps: list[StepStatus] = Field(
        default_factory=list, max_length=MAX_STEPS, description="Per-step state and results."
    )
    result: Result | None = Field(None, description="The pipeline's outcome.")
    artifacts: list[Artifact] = Field(default_factory=list, max_length=64, description="Published files with digests.")
    environment: Environment | None = Field(None, description="Versions and hardware the worker used.")
    memoryPlan: MemoryPlan | None = Field(
        None,
        description="An LLM job's planned peak memory and disk, as its planning pod reported it before the worker "
        "Job was made (an unset resources.memory or ephemeralStorage is filled in from it), or its worker before loading.",
    )
    lastReport: ReportCursor | None = Field(
        None,
        description="The newest live report accepted, kept so that an operator restart never accepts an older one.",
    )
    conditions: list[Condition] = Field(default_factory=list, max_length=16, description="Latest observations.")
