"""The CompressionJob: its spec (acceptance, output, resources, runPolicy, worker, measurement and the
job-level rules) and the object itself."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from kompression.api.memory_plan import HEADROOM
from kompression.api.rules import Rule
from kompression.api.v1alpha1.base import DNS_SUBDOMAIN_PATTERN, MAX_STEPS, ApiModel, Quantity, StorageUri, uri_rules
from kompression.api.v1alpha1.data import DATA_ROLES, DataSpec, is_text_cel
from kompression.api.v1alpha1.llm import LLM_ALGORITHM_SCHEMES
from kompression.api.v1alpha1.model import ModelSource
from kompression.api.v1alpha1.needs import Needs, WorkerImage, image_cel, job_needs, job_rules
from kompression.api.v1alpha1.status import CompressionJobStatus
from kompression.api.v1alpha1.step import TECHNIQUES, Step

DEFAULT_MAX_TRIALS = 8


class Acceptance(ApiModel):
    """Gates the final model must pass. A model that fails one is kept under rejected/, not published."""

    maxAccuracyDrop: float | None = Field(
        None, ge=0, le=1, description="Largest allowed drop in the evaluation metric, absolute (0.01 = 1 point)."
    )
    minCompressionRatio: float | None = Field(
        None, ge=1, le=10_000, description="Smallest allowed ratio of original to final size on disk."
    )
    minSpeedup: float | None = Field(
        None, gt=0, le=10_000, description="Smallest allowed ratio of original to final latency (p50, batch 1)."
    )
    maxPerplexityIncrease: float | None = Field(
        None,
        ge=0,
        le=100,
        description=(
            "llmQuantize and llmSparsify only: largest allowed perplexity on data.evaluation's text, relative to the "
            "original's (0.05 = at most 5% higher)."
        ),
    )
    strategy: Literal["Fixed", "Auto"] = Field(
        "Fixed",
        description=(
            "Fixed runs the steps as written. Auto searches, within maxTrials and timeoutSeconds, "
            "lower sparsities, higher lowRank energies or rank ratios, and float fallback of sensitive "
            "layers, and keeps the most compressed model that passes every gate."
        ),
    )
    maxTrials: int | None = Field(
        None,
        ge=1,
        le=100,
        description=f"Strategy Auto only: the most pipelines to try; unset means {DEFAULT_MAX_TRIALS}.",
    )
    timeoutSeconds: int | None = Field(
        None,
        ge=1,
        le=604_800,
        description="Strategy Auto only: stop searching after this many seconds; unset: no limit.",
    )

    __rules__ = (
        Rule(
            cel="!has(self.maxTrials) || self.strategy == 'Auto'",
            message="`maxTrials` is only used by strategy Auto; remove it or set strategy: Auto",
            field_path=".maxTrials",
        ),
        Rule(
            cel="!has(self.timeoutSeconds) || self.strategy == 'Auto'",
            message="`timeoutSeconds` is only used by strategy Auto; remove it or set strategy: Auto",
            field_path=".timeoutSeconds",
        ),
    )

    @property
    def max_trials_or_default(self) -> int:
        """The most pipelines strategy Auto tries."""
        return DEFAULT_MAX_TRIALS if self.maxTrials is None else self.maxTrials


class SecretRef(ApiModel):
    """A Secret in the CompressionJob's own namespace."""

    secretName: Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)] = Field(
        description=(
            "Name of a Secret in the same namespace. Its keys become the worker's environment "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION, "
            "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_CONNECTION_STRING, ...). Other "
            "namespaces cannot be named, by design."
        )
    )


class Output(ApiModel):
    """Where results are published."""

    uri: StorageUri = Field(
        description=(
            "Prefix under which the artifacts, report.json and report.md are written, e.g. s3://bucket/path/ "
            "or pvc://claim/path/ (the claim is mounted read-write)."
        )
    )
    credentials: SecretRef | None = Field(
        None,
        description="Credentials for every URI of this job (model, data and output); unset uses the worker's ambient ones.",
    )
    retrySeconds: int | None = Field(
        None,
        ge=0,
        le=3600,
        description=(
            "How long one storage operation keeps retrying transient faults (connection errors, timeouts, "
            "5xx, throttling) with jittered backoff before the attempt fails and the Job's backoffLimit takes "
            "over; 0 retries nothing. Refusals (404, 403, a bad bucket name) fail at once. Unset uses the "
            "operator's worker.storageRetrySeconds (60 by default)."
        ),
    )

    __rules__ = uri_rules()


class StepCache(ApiModel):
    """Where the worker keeps the results of step prefixes, to reuse them across jobs."""

    uri: StorageUri = Field(
        description=(
            "Prefix under which each finished step prefix is published, content-addressed by a digest of the "
            "model (its source and bytes), the data, the measurement settings, the seed and the first k steps "
            "with all their options; the baseline measurement of the original is kept the same way. A job "
            "whose first steps match a published prefix starts after it and reports its step results as "
            "reused. Several jobs (a sweep's trials) may share one cache; it is read with the job's "
            "output.credentials and, on pvc://, its claim is mounted read-write."
        )
    )

    __rules__ = uri_rules()


# What an unset memory and ephemeralStorage mean where no memory plan fills them in.
DEFAULT_MEMORY = "16Gi"
DEFAULT_EPHEMERAL_STORAGE = "20Gi"


class Resources(ApiModel):
    """What the worker pod asks for."""

    gpus: int = Field(1, ge=0, le=16, description="Number of GPUs (0 runs on CPU).")
    gpuProduct: Annotated[str, StringConstraints(max_length=63, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")] | None = (
        Field(None, description="Required value of the node label nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3.")
    )
    memory: Quantity | None = Field(
        None,
        description=(
            "Memory request and limit, a Kubernetes quantity. Unset: for a job with an LLM step, the host "
            "memory the operator plans for it before the GPU pod is created (from the model folder's "
            "config.json and safetensors headers, the recipe and the data; status.memoryPlan) plus "
            f"{HEADROOM:.0%}; "
            f"otherwise, or where no plan can be made, {DEFAULT_MEMORY}. Set, an LLM job it cannot hold is "
            "refused before its GPU pod is created."
        ),
    )
    cpu: Quantity = Field("4", description="CPU request, a Kubernetes quantity.")
    ephemeralStorage: Quantity | None = Field(
        None,
        description=(
            "Local disk for the worker: the size limit of its /scratch volume and the pod's ephemeral-storage "
            "request and limit, a Kubernetes quantity. The kubelet evicts a pod that writes more. Unset: for a "
            "job with an LLM step, the scratch disk the operator plans for it plus "
            f"{HEADROOM:.0%}; otherwise, or where no "
            f"plan can be made, {DEFAULT_EPHEMERAL_STORAGE}."
        ),
    )

    @property
    def memory_or_default(self) -> str:
        return self.memory or DEFAULT_MEMORY

    @property
    def ephemeral_storage_or_default(self) -> str:
        return self.ephemeralStorage or DEFAULT_EPHEMERAL_STORAGE

    __rules__ = (
        Rule(
            cel="!has(self.gpuProduct) || self.gpus > 0",
            message="gpuProduct needs gpus > 0",
            field_path=".gpuProduct",
        ),
    )


# A day: the longest single-GPU job of the examples takes hours; a worker stuck longer is hung.
DEFAULT_ACTIVE_DEADLINE_SECONDS = 86_400


class RunPolicy(ApiModel):
    """How the worker Job runs, retries and is cleaned up."""

    backoffLimit: int = Field(2, ge=0, le=20, description="Retries after a failure that a retry may fix.")
    activeDeadlineSeconds: int = Field(
        DEFAULT_ACTIVE_DEADLINE_SECONDS,
        ge=1,
        le=2_592_000,
        description=(
            "Fail the job (reason DeadlineExceeded, never retried) after this many seconds of running, "
            "counted from the worker Job's start. The default, 86400 (one day), bounds a worker that hangs "
            "on its input (a model, data or chat template that never finishes) instead of holding a GPU "
            "for ever; raise it for longer jobs, e.g. a large llmQuantize or an Auto search with a long "
            "acceptance.timeoutSeconds."
        ),
    )
    ttlSecondsAfterFinished: int | None = Field(
        None, ge=0, le=31_536_000, description="Delete the finished worker Job after this many seconds."
    )
    suspend: bool = Field(False, description="Suspend the job (stops a running worker); false resumes it.")
    queueName: Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)] | None = Field(
        None,
        description=(
            "Kueue LocalQueue; the Job is created suspended for Kueue to admit, and Kueue's quota, not the "
            "operator's GPU limits, decides when it runs."
        ),
    )
    priorityClassName: Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)] | None = Field(
        None, description="PriorityClass of the worker pod; also orders the operator's own queue."
    )
    workloadPriorityClassName: (
        Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)] | None
    ) = Field(
        None,
        description=(
            "Kueue WorkloadPriorityClass: the job's priority in Kueue's queue and preemption (the label "
            "kueue.x-k8s.io/priority-class on the worker Job). Needs queueName."
        ),
    )

    __rules__ = (
        Rule(
            cel="!has(self.workloadPriorityClassName) || has(self.queueName)",
            message="workloadPriorityClassName needs queueName: only Kueue reads it",
            field_path=".workloadPriorityClassName",
        ),
    )


class WorkerOverrides(ApiModel):
    """Per-job changes to the worker container."""

    image: Annotated[str, StringConstraints(max_length=512)] = Field(
        "", description="Worker image; empty uses the operator's default."
    )


class Measurement(ApiModel):
    """How latency is measured."""

    batchSizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [1], min_length=1, max_length=8, description="Batch sizes to time."
    )
    warmupIterations: int = Field(5, ge=0, le=10_000, description="Untimed runs before timing.")
    iterations: int = Field(30, ge=1, le=100_000, description="Timed runs; p50 and p95 are reported.")
    threads: int = Field(0, ge=0, le=1024, description="CPU threads for inference; 0 uses every core.")


# --------------------------------------------------------------------------------------------
# spec


_INDICES = str(list(range(MAX_STEPS)))
# A step that runs in the worker-llm image, inside `self.steps.exists(s, ...)`.
_LLM_STEP = image_cel(TECHNIQUES, "worker-llm", "s")
# A step that Model Optimizer runs.
_MODELOPT_STEP = " || ".join(
    f"(has(s.{kind}) && has(s.{kind}.backend) && s.{kind}.backend == 'ModelOpt')"
    for kind in ("llmQuantize", "llmSparsify")
)


class CompressionJobSpec(ApiModel):
    """What to compress, how, and where the results go."""

    model: ModelSource = Field(description="The model to compress.")
    data: DataSpec | None = Field(None, description="Calibration, evaluation and training data.")
    steps: list[Step] = Field(
        min_length=1, max_length=MAX_STEPS, description="The ordered steps; each transforms the previous step's model."
    )
    acceptance: Acceptance | None = Field(None, description="Gates the final model must pass.")
    output: Output = Field(description="Where the artifacts and report go.")
    stepCache: StepCache | None = Field(
        None, description="Reuse step prefixes other jobs already ran (a sweep's trials); unset runs every step."
    )
    resources: Resources = Field(default_factory=Resources, description="Pod resources and GPU selection.")
    runPolicy: RunPolicy = Field(default_factory=RunPolicy, description="Retries, deadlines, cleanup and queueing.")
    worker: WorkerOverrides = Field(default_factory=WorkerOverrides, description="Worker container overrides.")
    measurement: Measurement = Field(default_factory=Measurement, description="How latency is measured.")

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.steps.all(s, self.steps.exists_one(t, t.name == s.name))",
            message="step names must be unique",
            field_path=".steps",
        ),
        *job_rules(TECHNIQUES),
        Rule(
            # Index loops over a constant list keep CEL's estimated cost low; map()/indexOf() inside
            # all() is estimated at over 100x the budget.
            cel=f"{_INDICES}.all(i, i >= size(self.steps) || !has(self.steps[i].distill) || "
            f"!has(self.steps[i].distill.student.fromStep) || {_INDICES}.exists(j, j < i && "
            f"self.steps[j].name == self.steps[i].distill.student.fromStep))",
            message="distill.student.fromStep must name an earlier step",
            field_path=".steps",
        ),
        Rule(
            cel="!has(self.acceptance) || !has(self.acceptance.maxAccuracyDrop) || "
            "(has(self.data) && (has(self.data.evaluation) || has(self.data.tasks)))",
            message="acceptance.maxAccuracyDrop needs data.evaluation to measure accuracy (data.tasks for an "
            "llmQuantize job); add an evaluation data set",
            field_path=".data",
        ),
        Rule(
            cel="self.model.format != 'ONNX' || self.steps.all(s, has(s.quantize) || has(s.tensorrt))",
            message="an ONNX model can only be quantized or built into a TensorRT engine; use a PyTorch format "
            "(TorchExport, SafeTensors, HuggingFace) to prune, factorize (lowRank), distill or export",
            field_path=".steps",
        ),
        Rule(
            cel="self.model.format != 'TorchScript' || !self.steps.exists(s, has(s.prune) || has(s.lowRank) || "
            "(has(s.quantize) && s.quantize.method == 'FP8'))",
            message="a TorchScript model has no nn.Linear or nn.Conv layers left to prune, factorize (lowRank) or "
            "convert to FP8; export it with torch.export.export (format TorchExport) or save its weights with "
            "safetensors (format SafeTensors plus `architecture`)",
            field_path=".steps",
        ),
        Rule(
            cel="self.model.format == 'HuggingFace' || !has(self.data) || !("
            + " || ".join(f"(has(self.data.{r}) && {is_text_cel('self.data.' + r)})" for r in DATA_ROLES)
            + ")",
            message="text data (.jsonl or .txt) is tokenized with the model folder's own tokenizer, so it needs "
            "model.format HuggingFace; for other formats tokenize beforehand into an .npz with one array per input",
            field_path=".data",
        ),
        Rule(
            cel=f"!self.steps.all(s, {_LLM_STEP}) || size(self.steps) == 1 || (size(self.steps) == 2 && "
            "has(self.steps[0].llmSparsify) && has(self.steps[1].llmQuantize))",
            message="the worker-llm image runs one of [llmQuantize], [llmSparsify] or [llmSparsify, llmQuantize] "
            "(prune, then quantize); put other steps in a job of their own",
            field_path=".steps",
        ),
        Rule(
            # GPTQ moves each column's rounding error onto the columns after it, which fills in the zeros
            # llmSparsify made (measured: 75-90% of groups of 4 still 2:4 after W4A16 GPTQ on a 2:4 model);
            # round-to-nearest and SmoothQuant's per-channel scaling keep a zero zero.
            cel="!self.steps.exists(s, has(s.llmSparsify)) || !self.steps.exists(s, has(s.llmQuantize) && "
            "s.llmQuantize.scheme in " + str(list(LLM_ALGORITHM_SCHEMES)) + " && "
            "(!has(s.llmQuantize.algorithm) || s.llmQuantize.algorithm == 'GPTQ'))",
            message="llmQuantize after llmSparsify cannot use algorithm GPTQ (the default of W4A16, W8A16 and W8A8): "
            "its error correction fills in the 2:4 pattern's zeros; set algorithm RTN, or use scheme FP8Dynamic",
            field_path=".steps",
        ),
        Rule(
            cel=f"!self.steps.exists(s, {_LLM_STEP}) || !has(self.data) || ("
            + " && ".join(
                f"(!has(self.data.{d}) || {is_text_cel(f'self.data.{d}')})" for d in ("calibration", "evaluation")
            )
            + ")",
            message="an llmQuantize or llmSparsify job reads text: data.calibration and data.evaluation need a `uri` "
            "ending in .txt (one sample per line) or .jsonl (a `text` field per line), not a builtin data set",
            field_path=".data",
        ),
        Rule(
            cel=f"!self.steps.exists(s, {_LLM_STEP}) || !has(self.data) || ("
            + " && ".join(
                f"(!has(self.data.{d}) || (!has(self.data.{d}.padding) && !has(self.data.{d}.truncation)))"
                for d in ("calibration", "evaluation")
            )
            + ")",
            message="an llmQuantize or llmSparsify job scores each sample unpadded and cuts it at maxLength, so "
            "`padding` and `truncation` do not apply to its data; remove them",
            field_path=".data",
        ),
        Rule(
            cel=f"!self.steps.exists(s, {_MODELOPT_STEP}) || (self.steps.all(s, {_MODELOPT_STEP}) && "
            "self.resources.gpus <= 1 && (!has(self.data) || !has(self.data.tasks)))",
            message="backend ModelOpt calibrates in one process and publishes a checkpoint that only TensorRT-LLM "
            "and vLLM load, so every step of its job uses it (an llmSparsify step with backend ModelOpt may come "
            "before an llmQuantize one), with resources.gpus of at most 1 and no data.tasks (lm-eval scores the "
            "published folder); use backend LLMCompressor for these",
            field_path=".steps",
        ),
        Rule(
            cel="!self.steps.exists(s, has(s.llmSparsify) && has(s.llmSparsify.backend) && "
            "s.llmSparsify.backend == 'ModelOpt') || self.steps.all(s, !has(s.llmQuantize) || "
            "s.llmQuantize.scheme in ['FP8', 'FP8Dynamic'])",
            message="after llmSparsify with backend ModelOpt, llmQuantize takes scheme FP8 or FP8Dynamic (sparse + "
            "FP8, checked 2:4 on the published weights); other schemes pack or move the zeros",
            field_path=".steps",
        ),
        Rule(
            cel="!has(self.acceptance) || !has(self.acceptance.maxPerplexityIncrease) || "
            f"(self.steps.exists(s, {_LLM_STEP}) && has(self.data) && has(self.data.evaluation))",
            message="`maxPerplexityIncrease` gates llmQuantize and llmSparsify steps and needs data.evaluation (a "
            ".txt or .jsonl text file) to measure perplexity; other steps use maxAccuracyDrop",
            field_path=".acceptance.maxPerplexityIncrease",
        ),
        Rule(
            cel=f"!self.steps.exists(s, {_LLM_STEP}) || !has(self.acceptance) || "
            "((!has(self.acceptance.maxAccuracyDrop) || (has(self.data) && has(self.data.tasks))) && "
            "!has(self.acceptance.minSpeedup) && self.acceptance.strategy == 'Fixed')",
            message="an llmQuantize or llmSparsify job is gated by maxPerplexityIncrease, minCompressionRatio and, "
            "with data.tasks (its mean lm-eval accuracy), maxAccuracyDrop; minSpeedup and strategy Auto are not "
            "available for it",
            field_path=".acceptance",
        ),
        Rule(
            cel=f"!has(self.data) || !has(self.data.tasks) || self.steps.exists(s, {_LLM_STEP})",
            message="data.tasks (lm-eval-harness multiple-choice tasks) score causal language models: it is only "
            "used by llmQuantize and llmSparsify jobs; use data.evaluation for other steps",
            field_path=".data.tasks",
        ),
    )

    @property
    def needs(self) -> Needs:
        """What the job needs: any step's data, tokenizer and GPU, and the one worker image its steps run in."""
        return job_needs(step.config for step in self.steps)

    @property
    def image(self) -> WorkerImage:
        """The worker image that runs the job (its steps', which a rule keeps to one)."""
        return self.needs.image


# The spec is immutable except for these runPolicy fields (GitOps tools may toggle them).
MUTABLE_RUN_POLICY_FIELDS = ("suspend", "ttlSecondsAfterFinished")
IMMUTABLE_MESSAGE = (
    "spec is immutable after creation, except runPolicy.suspend and runPolicy.ttlSecondsAfterFinished; "
    "create a new CompressionJob instead"
)


def _immutable_cel() -> str:
    fields = [f for f in CompressionJobSpec.model_fields if f != "runPolicy"]
    fields += [f"runPolicy.{f}" for f in RunPolicy.model_fields if f not in MUTABLE_RUN_POLICY_FIELDS]
    return " && ".join(_unchanged(f) for f in fields)


def _unchanged(field: str) -> str:
    new, old = f"self.{field}", f"oldSelf.{field}"
    if field in ("model", "steps", "output"):  # required: always present on both sides
        return f"{new} == {old}"
    return f"(has({new}) == has({old}) && (!has({new}) || {new} == {old}))"


# Derived from the field list, so that a new spec field is immutable unless listed above.
CompressionJobSpec.__rules__ += (Rule(cel=_immutable_cel(), message=IMMUTABLE_MESSAGE, transition=True),)


class ObjectMeta(ApiModel):
    """The parts of metadata the API model reads; the rest passes through untouched."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    # Their rules (DNS-1123 names, label syntax) are the API server's; validation.metadata_errors mirrors them.
    name: str | None = Field(None, description="Object name.")
    namespace: str | None = Field(None, description="Namespace.")
    generation: int | None = Field(None, description="Generation.")
    uid: str | None = Field(None, description="UID.")
    labels: dict[str, str] | None = Field(None, description="Labels.")
    annotations: dict[str, str] | None = Field(None, description="Annotations.")


class CompressionJob(ApiModel):
    """A CompressionJob turns a model in object storage into a smaller, faster, measured model by
    running ordered compression steps on a GPU node, and checks the result against acceptance gates."""

    apiVersion: Literal["kompression.dev/v1alpha1"] = Field(description="kompression.dev/v1alpha1.")
    kind: Literal["CompressionJob"] = Field(description="CompressionJob.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: CompressionJobSpec = Field(description="What to compress, how, and where the results go.")
    status: CompressionJobStatus | None = Field(None, description="Observed state, written by the operator.")
