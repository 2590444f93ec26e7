"""The CompressionJob API, kompression.dev/v1alpha1: the single source of truth.

The CRD in ``crds/`` is generated from these models (``kompression crd``), and the CLI, the operator
and the worker all parse manifests with them. Every field carries a description: it is what
``kubectl explain`` shows. Cross-field rules live in each model's ``__rules__`` (see rules.py).

Spelling of enum values, as Kubernetes' API conventions write them (``TCP``, ``IPv4``, ``projectID``):

- Values are CamelCase words: ``DynamicInt8``, ``Float16``, ``BFloat16``, ``L1Structured``.
- Acronyms and initialisms keep their capitals, as the libraries users come from write them
  (TensorRT's ``BuilderFlag.FP16`` and ``trtexec --fp16``, ModelOpt's ``FP8``): ``FP32``, ``FP16``,
  ``INT8``, ``FP8``, ``ONNX``. New values follow the same rule: ``NVFP4``, ``MXFP4``, ``W4A16``.
  A precision on its own is written ``FP8``, never ``Fp8``; inside a word-like name it reads as
  part of the word and stays as it is (``DynamicInt8``, ``BFloat16``).

Options a method does not use are refused, not ignored. Such an option has no schema default
(the API server would fill it in, and a rule could no longer tell it from one the user set): it
is optional, its description says what unset means, the model's ``*_or_default`` properties apply
that, and a rule naming the methods that use it refuses it elsewhere.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from kompression.api.rules import Rule
from kompression.api.uris import URI_DOT_SEGMENT_HINT, URI_DOT_SEGMENT_PATTERN, URI_HINT, URI_PATTERN

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
IMPORT_REF_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
MAX_STEPS = 16
# Bounds no real job reaches, so that a manifest cannot make the worker allocate without limit.
MAX_DIMENSION = 1_048_576  # one tensor dimension (inputs, TensorRT profiles)
MAX_SEQUENCE_LENGTH = 131_072  # tokens per text sample
MAX_INPUT_ELEMENTS = 2**28  # one example input: 1 GiB of float32, above a 512^3 volume or a 64-frame 512x512 video

StorageUri = Annotated[str, StringConstraints(max_length=2048)]
StepName = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)]
ShortString = Annotated[str, StringConstraints(max_length=253)]
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=32)]
Timestamp = Annotated[str, StringConstraints(max_length=64)]


def uri_rules(*, optional: bool = False) -> tuple[Rule, Rule]:
    """The checks of a `uri`: rules, not a field pattern, so that the API server and `kompression
    validate` both name the accepted schemes in words instead of quoting a regex. The second refuses
    `.`, `..` and empty path segments."""
    guard = "!has(self.uri) || " if optional else ""
    return (
        Rule(cel=f"{guard}self.uri.matches('{URI_PATTERN}')", message=URI_HINT, field_path=".uri"),
        Rule(
            cel=f"{guard}!self.uri.matches('{URI_DOT_SEGMENT_PATTERN}')",
            message=URI_DOT_SEGMENT_HINT,
            field_path=".uri",
        ),
    )


# A module name or name pattern (a Kubernetes-style 253-character bound), as the layer lists of
# lowRank, llmQuantize and llmSparsify take them.
ModulePattern = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=False,
    )
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------------------------
# spec.model


def _shape_elements_cel(shape: str) -> str:
    """CEL: the number of elements of a shape (at most 8 dimensions), each -1 counted as 1, in
    double arithmetic, which cannot overflow as int64 would."""
    dims = (f"double(({shape}.size() <= {i} || {shape}[{i}] < 1) ? 1 : {shape}[{i}])" for i in range(8))
    return " * ".join(dims)


class ModelInput(ApiModel):
    """One input tensor of the model."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=63)] = Field(
        description="Name of the input, used for the ONNX and TensorRT input bindings."
    )
    shape: list[Annotated[int, Field(ge=-1, le=MAX_DIMENSION)]] = Field(
        min_length=1,
        max_length=8,
        description=(
            f"Shape of the input; -1 marks a dynamic dimension such as the batch size. A dimension is at "
            f"most {MAX_DIMENSION} (2^20, above a minute of 16 kHz audio samples), and the shape at most "
            f"{MAX_INPUT_ELEMENTS} (2^28) elements with each -1 counted as 1."
        ),
    )
    dtype: Literal["float32", "float16", "bfloat16", "int64", "int32"] = Field(
        "float32", description="Element type of the input tensor."
    )

    __rules__ = (
        Rule(
            cel="self.shape.all(d, d != 0)",
            message="shape dimensions must be positive, or -1 for a dynamic dimension; 0 is not allowed",
            field_path=".shape",
        ),
        Rule(
            cel=f"{_shape_elements_cel('self.shape')} <= {float(MAX_INPUT_ELEMENTS)}",
            message=(
                f"the shape holds more than {MAX_INPUT_ELEMENTS} (2^28) elements with each -1 counted as 1; "
                "the worker builds example inputs of this shape"
            ),
            field_path=".shape",
        ),
    )


ModelFormat = Literal["TorchExport", "TorchScript", "ONNX", "HuggingFace", "SafeTensors"]


class ModelSource(ApiModel):
    """The model to compress and how to load it."""

    uri: StorageUri = Field(
        description=(
            "Where the model is stored: s3://BUCKET/PATH, gs://BUCKET/PATH, az://CONTAINER/PATH, "
            "pvc://CLAIM/PATH (a PersistentVolumeClaim in the job's namespace, mounted read-only) or "
            "file://PATH (local runs); the path names the file, or the folder for HuggingFace."
        )
    )
    format: ModelFormat = Field(
        description=(
            "How the model is serialized. TorchExport is a torch.export .pt2 archive, TorchScript a "
            "scripted or traced module, ONNX an .onnx file, HuggingFace a transformers model folder, "
            "and SafeTensors a state dict in safetensors format loaded into `architecture`."
        )
    )
    architecture: Annotated[str, StringConstraints(pattern=IMPORT_REF_PATTERN, max_length=253)] | None = Field(
        None,
        description=(
            "For SafeTensors only: the class or factory to build before loading the weights, as "
            "`module.path:Name`, for example `torchvision.models:resnet18`. It must be a model builder "
            "under a module the cluster allows (Helm value worker.architectureModules): in transformers a "
            "model class (FooModel, FooForTask, the Auto*Model* classes), in torchvision.models and timm a "
            "model factory or class, never a loader, registry, config or tokenizer."
        ),
    )
    architectureArguments: dict[str, Any] | None = Field(
        None,
        description=(
            "Keyword arguments passed to `architecture` when it is called, for example {num_classes: 10}. "
            "Arguments that fetch weights or code (pretrained, weights, weights_backbone, checkpoint_path, "
            "pretrained_cfg, trust_remote_code, ...) are refused unless null or false: the weights come "
            "from `uri`."
        ),
    )
    inputs: list[ModelInput] = Field(
        min_length=1, max_length=8, description="The model's inputs, in the order its forward() takes them."
    )
    output: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$", max_length=63)] | None = Field(
        None,
        description=(
            "For HuggingFace only: which field of the model's output object the pipeline compresses and "
            "measures, for example `logits`, `last_hidden_state` or `pooler_output`. Unset means `logits` "
            "for a model with a task head (sequence or image classification) and `last_hidden_state` for a "
            "bare encoder (BERT-class, ViT). A name the model does not return is refused with the list of "
            "names it does."
        ),
    )
    trustTorchScriptCode: bool = Field(
        False,
        description=(
            "Required, and only allowed, with format TorchScript. A TorchScript archive is a program: "
            "its scripted forward() runs in the worker, next to the job's credentials, and can read "
            "files (torch.from_file). Set true only for archives you would run as code, as with "
            "transformers' trust_remote_code; prefer TorchExport, whose archives the worker vets."
        ),
    )

    __rules__ = (
        *uri_rules(),
        Rule(
            cel="self.format != 'TorchScript' || (has(self.trustTorchScriptCode) && self.trustTorchScriptCode)",
            message="format TorchScript runs the archive's code in the worker: set trustTorchScriptCode: true "
            "if you trust it as code, or save the model with torch.export.save (format TorchExport)",
            field_path=".trustTorchScriptCode",
        ),
        Rule(
            cel="!has(self.trustTorchScriptCode) || !self.trustTorchScriptCode || self.format == 'TorchScript'",
            message="trustTorchScriptCode only applies to format TorchScript; remove it for other formats",
            field_path=".trustTorchScriptCode",
        ),
        Rule(
            cel="self.format != 'SafeTensors' || has(self.architecture)",
            message="format SafeTensors needs `architecture` (module.path:Name) to build the model the weights load into",
            field_path=".architecture",
        ),
        Rule(
            cel="!has(self.architecture) || self.format == 'SafeTensors'",
            message="`architecture` is only used with format SafeTensors; remove it for other formats",
            field_path=".architecture",
        ),
        Rule(
            cel="!has(self.output) || self.format == 'HuggingFace'",
            message="`output` is only used with format HuggingFace, whose models return several named outputs; "
            "other formats return one tensor, so remove it",
            field_path=".output",
        ),
        Rule(
            cel="!has(self.architectureArguments) || has(self.architecture)",
            message="`architectureArguments` needs `architecture`",
            field_path=".architectureArguments",
        ),
    )


# --------------------------------------------------------------------------------------------
# spec.data


TEXT_SUFFIXES = (".jsonl", ".txt")
DEFAULT_PADDING = "MaxLength"
DEFAULT_TRUNCATION = True


def _is_text_cel(source: str) -> str:
    """CEL: the data source at `source` is a text set (its uri ends in .jsonl or .txt)."""
    ends = " || ".join(f"{source}.uri.endsWith('{suffix}')" for suffix in TEXT_SUFFIXES)
    return f"(has({source}.uri) && ({ends}))"


_TEXT_ONLY = "is only used by text data (a uri ending in .jsonl or .txt); remove it for .npz and builtin data"


class DataSource(ApiModel):
    """A data set: a file in object storage, or a built-in reference set."""

    uri: StorageUri | None = Field(
        None,
        description=(
            "Where the data set is stored: an .npz file with one array (N, ...) per model input, named as "
            "in spec.model.inputs (`inputs` is the shorthand for a single-input model) and, for labelled "
            "data, an integer `labels` array (N,); or text for a HuggingFace model, tokenized with the "
            "model folder's own tokenizer: .jsonl (one object per line with a `text` string and an "
            "optional integer `label`) or .txt (one sample per line)."
        ),
    )
    builtin: Literal["Digits"] | None = Field(
        None,
        description=(
            "A reference data set shipped with the worker instead of `uri`. Digits is scikit-learn's "
            "8x8 handwritten digits, split deterministically: training and calibration read the "
            "training split, evaluation the held-out split."
        ),
    )
    samples: int | None = Field(
        None, ge=1, le=10_000_000, description="Use at most this many samples; unset uses them all."
    )
    batchSize: int = Field(32, ge=1, le=65536, description="Batch size used when reading this data set.")
    maxLength: int | None = Field(
        None,
        ge=1,
        le=MAX_SEQUENCE_LENGTH,
        description=(
            "Text data: tokens per sample after tokenizing. Unset: the model input's declared sequence "
            "length when it is fixed, else the tokenizer's own limit (capped at 2048 for llmQuantize steps). "
            f"At most {MAX_SEQUENCE_LENGTH} (128Ki), the longest context of today's open models; every "
            "sample may be padded to it, so a larger value would only exhaust the worker's memory."
        ),
    )
    padding: Literal["MaxLength", "Longest"] | None = Field(
        None,
        description=(
            "Text data: pad every sample to maxLength (MaxLength, the default) or to the longest sample "
            "of the data set (Longest)."
        ),
    )
    truncation: bool | None = Field(
        None, description="Text data: cut samples longer than maxLength (default true); false refuses them."
    )

    __rules__ = (
        *uri_rules(optional=True),
        Rule(
            cel="has(self.uri) != has(self.builtin)",
            message="set exactly one of `uri` or `builtin`",
        ),
        *(
            Rule(
                cel=f"!has(self.{name}) || {_is_text_cel('self')}",
                message=f"`{name}` {_TEXT_ONLY}",
                field_path=f".{name}",
            )
            for name in ("maxLength", "padding", "truncation")
        ),
    )

    @property
    def is_text(self) -> bool:
        return self.uri is not None and self.uri.endswith(TEXT_SUFFIXES)

    @property
    def padding_or_default(self) -> str:
        return DEFAULT_PADDING if self.padding is None else self.padding

    @property
    def truncation_or_default(self) -> bool:
        return DEFAULT_TRUNCATION if self.truncation is None else self.truncation


class EvaluationData(DataSource):
    """The data set that scores the model before and after every step."""

    metric: Literal["Top1Accuracy", "OutputAgreement", "CosineSimilarity"] = Field(
        "Top1Accuracy",
        description=(
            "How to score. Top1Accuracy needs labels; OutputAgreement (same arg-max as the original "
            "model) and CosineSimilarity (of the outputs; per-token outputs are first mean-pooled over the "
            "`attention_mask` input when the model has one) compare with the original model and need none."
        ),
    )


DATA_ROLES = ("calibration", "evaluation", "training")
MAX_TASKS = 16


class TaskData(ApiModel):
    """A multiple-choice task scored by lm-eval-harness on a local file: nothing is downloaded."""

    name: StepName = Field(description="The task's name in the report (a DNS label, unique among data.tasks).")
    uri: StorageUri = Field(
        description=(
            "Where the task's .jsonl file is stored (the schemes of spec.model.uri). Each line is one question: "
            '{"question": "...", "choices": ["...", "..."], "answer": 0}, where `answer` indexes the correct '
            "choice. The model scores each choice's log-likelihood as the continuation of the question; the "
            "most likely one is its answer."
        )
    )
    samples: int | None = Field(
        None, ge=1, le=10_000_000, description="Score at most this many questions, the file's first; unset scores all."
    )
    fewShot: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "Solved questions from the same file put before each question (never the question itself); "
            "0 asks each question alone."
        ),
    )

    __rules__ = (
        *uri_rules(),
        Rule(
            cel="self.uri.endsWith('.jsonl')",
            message='a task is a .jsonl file, one {"question": str, "choices": [str, ...], "answer": int} per line',
            field_path=".uri",
        ),
    )


class DataSpec(ApiModel):
    """The data the steps use."""

    calibration: DataSource | None = Field(
        None, description="Representative inputs for static quantization ranges (StaticInt8, TensorRT INT8)."
    )
    evaluation: EvaluationData | None = Field(
        None, description="Held-out data that measures accuracy for the acceptance gates."
    )
    training: DataSource | None = Field(None, description="Labelled data for fine-tuning and distillation.")
    tasks: list[TaskData] | None = Field(
        None,
        min_length=1,
        max_length=MAX_TASKS,
        description=(
            "llmQuantize only: multiple-choice tasks scored with lm-eval-harness on the original and the "
            "quantized model; their mean `acc` is the job's accuracy, which acceptance.maxAccuracyDrop gates."
        ),
    )

    __rules__ = (
        Rule(
            cel="!has(self.tasks) || self.tasks.all(t, self.tasks.exists_one(u, u.name == t.name))",
            message="task names must be unique",
            field_path=".tasks",
        ),
    )


# --------------------------------------------------------------------------------------------
# spec.steps


class FineTune(ApiModel):
    """Training after pruning that recovers accuracy."""

    epochs: int = Field(1, ge=1, le=1000, description="Passes over the training data.")
    learningRate: float = Field(1e-3, gt=0, le=10, description="Learning rate of the Adam optimizer.")
    batchSize: int = Field(64, ge=1, le=65536, description="Training batch size.")


def _relaxation(factor: float) -> float:
    """A step's `relaxed` factor, checked: 1 keeps the step as written, towards 0 it removes ever less."""
    if not 0 < factor <= 1:
        raise ValueError(f"a relaxation factor is in (0, 1], not {factor}")
    return factor


PruneMethod = Literal["L1Unstructured", "GlobalMagnitude", "L1Structured", "TaylorStructured", "SemiStructured24"]
STRUCTURED_PRUNE_METHODS = ("L1Structured", "TaylorStructured")


class PruneStep(ApiModel):
    """Remove weights. Structured methods delete whole channels, so the model gets faster on any hardware."""

    method: PruneMethod = Field(
        description=(
            "L1Unstructured (per layer) and GlobalMagnitude (across layers) zero single weights, made "
            "permanent. L1Structured and TaylorStructured physically remove channels and filters, "
            "ranked by L1 norm or by a first-order Taylor estimate of their importance. "
            "SemiStructured24 keeps 2 of every 4 weights, the pattern sparse tensor cores accelerate."
        )
    )
    sparsity: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Fraction of weights (unstructured) or channels (structured) to remove, in (0, 1).",
    )
    ignoreLayers: list[Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=list,
        max_length=64,
        description="Names of modules to leave untouched; the final classifier is always kept whole.",
    )
    fineTune: FineTune | None = Field(None, description="Train after pruning to recover accuracy; needs data.training.")

    __rules__ = (
        Rule(
            cel="self.method != 'SemiStructured24' || self.sparsity == 0.5",
            message="`sparsity` other than 0.5 is only used by methods L1Unstructured, GlobalMagnitude, L1Structured "
            "and TaylorStructured; SemiStructured24 removes exactly 2 of every 4 weights, so leave it unset or 0.5",
            field_path=".sparsity",
        ),
    )

    def relaxed(self, factor: float) -> PruneStep:
        """This prune removing `factor` of its sparsity (1: as written, smaller: removes less), as
        acceptance.strategy Auto tries it; SemiStructured24's fixed 2:4 pattern has nothing to relax."""
        factor = _relaxation(factor)
        if self.method == "SemiStructured24":
            return self
        return self.model_copy(update={"sparsity": round(self.sparsity * factor, 4)})


LowRankMethod = Literal["SVD", "Tucker2"]


class LowRankStep(ApiModel):
    """Replace weight tensors with thin factors of low rank: fewer parameters and MACs, dense kernels."""

    method: LowRankMethod = Field(
        description=(
            "SVD factorizes Linear layers and 1x1 convolutions into two thin layers (W = U S V^T, "
            "the bias kept on the second). Tucker2 decomposes the channel modes of kxk convolutions "
            "into a 1x1 -> kxk (core) -> 1x1 sequence."
        )
    )
    rankRatio: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Rank of each factorized layer as a fraction of its full rank (per channel mode for Tucker2).",
    )
    energy: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "Choose each layer's rank as the smallest that keeps this fraction of the squared singular "
            "values (of each channel mode's unfolding for Tucker2), e.g. 0.9."
        ),
    )
    includeLayers: list[ModulePattern] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Module name patterns (shell-style: `*` and `?`, e.g. `encoder.layer.*.intermediate.dense`) "
            "of the layers to factorize; empty means every layer the method applies to."
        ),
    )
    excludeLayers: list[ModulePattern] = Field(
        default_factory=list, max_length=64, description="Module name patterns of layers to leave whole."
    )
    fineTune: FineTune | None = Field(
        None, description="Train after factorizing to recover accuracy; needs data.training."
    )

    __rules__ = (
        Rule(
            cel="has(self.rankRatio) != has(self.energy)",
            message="set exactly one of `rankRatio` (a fraction of full rank) or `energy` (a fraction of the "
            "squared singular values kept) to choose the ranks",
        ),
    )

    def relaxed(self, factor: float) -> LowRankStep:
        """This factorization discarding `factor` of what it discards (1 - energy, or 1 - rankRatio; 1: as
        written, smaller: keeps more), as acceptance.strategy Auto tries it."""
        field = "energy" if self.energy is not None else "rankRatio"
        kept = getattr(self, field)
        return self.model_copy(update={field: round(1 - (1 - kept) * _relaxation(factor), 4)})


class StudentRef(ApiModel):
    """The student model: the output of an earlier step, or a fresh architecture."""

    fromStep: StepName | None = Field(None, description="Name of an earlier step whose output model is the student.")
    architecture: Annotated[str, StringConstraints(pattern=IMPORT_REF_PATTERN, max_length=253)] | None = Field(
        None,
        description=(
            "A class or factory (module.path:Name) that builds a fresh student, e.g. "
            "`torchvision.models:resnet18`; the rules of spec.model.architecture apply."
        ),
    )
    architectureArguments: dict[str, Any] | None = Field(
        None,
        description=(
            "Keyword arguments for `architecture`; only with `architecture`. As for spec.model, arguments "
            "that fetch weights or code (pretrained, weights, checkpoint_path, ...) must be null or false."
        ),
    )

    __rules__ = (
        Rule(
            cel="has(self.fromStep) != has(self.architecture)",
            message="set exactly one of `fromStep` or `architecture`",
        ),
        Rule(
            cel="!has(self.architectureArguments) || has(self.architecture)",
            message="`architectureArguments` is only used with `architecture`; remove it when the student "
            "comes from `fromStep`",
            field_path=".architectureArguments",
        ),
    )


class DistillStep(ApiModel):
    """Train a student to match the original model (the teacher): KL on softened outputs plus cross-entropy."""

    student: StudentRef = Field(description="The model to train.")
    epochs: int = Field(5, ge=1, le=1000, description="Passes over the training data.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature for the distillation loss.")
    alpha: float = Field(
        0.7, ge=0, le=1, description="Weight of the distillation loss; 1 - alpha weights the hard-label loss."
    )
    learningRate: float = Field(1e-3, gt=0, le=10, description="Learning rate of the Adam optimizer.")
    batchSize: int = Field(64, ge=1, le=65536, description="Training batch size.")


QuantizeMethod = Literal["DynamicInt8", "StaticInt8", "Float16", "BFloat16", "FP8"]
Calibrator = Literal["MinMax", "Percentile", "Entropy"]
INT8_METHODS = ("StaticInt8", "DynamicInt8")
EXCLUDE_LAYER_METHODS = ("StaticInt8", "DynamicInt8", "FP8")
DEFAULT_CALIBRATOR: Calibrator = "MinMax"
DEFAULT_PERCENTILE = 99.999
DEFAULT_PER_CHANNEL = True


class QuantizeStep(ApiModel):
    """Store and compute with fewer bits. The result runs quantized kernels, not fake-quantized floats."""

    method: QuantizeMethod = Field(
        description=(
            "DynamicInt8 quantizes weights ahead of time and activations on the fly; StaticInt8 also "
            "fixes activation ranges from calibration data (fastest, needs data.calibration); Float16 "
            "and BFloat16 halve the weights; FP8 needs a GPU with FP8 tensor cores (Ada, Hopper or newer)."
        )
    )
    calibrator: Calibrator | None = Field(
        None,
        description=(
            f"StaticInt8 only: how activation ranges are picked from calibration data; unset means "
            f"{DEFAULT_CALIBRATOR}."
        ),
    )
    percentile: float | None = Field(
        None,
        gt=90,
        le=100,
        description=(
            f"StaticInt8 with calibrator Percentile only: the percentile of |activation| kept; unset means "
            f"{DEFAULT_PERCENTILE}."
        ),
    )
    perChannel: bool | None = Field(
        None,
        description=(
            "StaticInt8 and DynamicInt8 only: quantize weights per output channel (true) or per tensor "
            f"(false); unset means {str(DEFAULT_PER_CHANNEL).lower()}. FP8 scales per tensor."
        ),
    )
    excludeLayers: list[Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "StaticInt8, DynamicInt8 and FP8 only: names of layers to keep in floating point (sensitive "
            "layers). Unset, StaticInt8 and DynamicInt8 keep float the few layers whose int8 error, measured "
            "on the job's calibration (else evaluation) data, stands out; setting it replaces that choice. "
            "Float16 and BFloat16 convert the whole model."
        ),
    )

    __rules__ = (
        Rule(
            cel="!has(self.calibrator) || self.method == 'StaticInt8'",
            message="`calibrator` is only used by method StaticInt8; remove it for DynamicInt8, Float16, "
            "BFloat16 and FP8",
            field_path=".calibrator",
        ),
        Rule(
            cel="!has(self.percentile) || (self.method == 'StaticInt8' && has(self.calibrator) && "
            "self.calibrator == 'Percentile')",
            message="`percentile` is only used by method StaticInt8 with calibrator Percentile; set "
            "calibrator: Percentile or remove it",
            field_path=".percentile",
        ),
        Rule(
            cel="!has(self.perChannel) || self.method in " + str(list(INT8_METHODS)),
            message="`perChannel` is only used by methods StaticInt8 and DynamicInt8; remove it for Float16, "
            "BFloat16 and FP8 (FP8 scales per tensor)",
            field_path=".perChannel",
        ),
        Rule(
            cel="!has(self.excludeLayers) || size(self.excludeLayers) == 0 || self.method in "
            + str(list(EXCLUDE_LAYER_METHODS)),
            message="`excludeLayers` is only used by methods StaticInt8, DynamicInt8 and FP8; Float16 and "
            "BFloat16 convert the whole model, so remove it",
            field_path=".excludeLayers",
        ),
    )

    @property
    def calibrator_or_default(self) -> Calibrator:
        """The calibrator StaticInt8 uses."""
        return self.calibrator or DEFAULT_CALIBRATOR

    @property
    def percentile_or_default(self) -> float:
        """The percentile calibrator Percentile keeps."""
        return DEFAULT_PERCENTILE if self.percentile is None else self.percentile

    @property
    def per_channel_or_default(self) -> bool:
        """Whether int8 weights get one scale per output channel."""
        return DEFAULT_PER_CHANNEL if self.perChannel is None else self.perChannel

    @property
    def float_fallbacks(self) -> int:
        """How many layers beyond the step's own float choice acceptance.strategy Auto's trials may keep
        float: the int8 methods measure every layer's int8 error, so a trial adds the next worst, up to 2."""
        return 2 if self.method in INT8_METHODS else 0


LLMScheme = Literal["W4A16", "W8A16", "W8A8", "FP8Dynamic", "FP8", "NVFP4", "MXFP4"]
LLMAlgorithm = Literal["GPTQ", "AWQ", "RTN"]
LLMKVCache = Literal["FP8"]
LLM_WEIGHT_ONLY_SCHEMES = ("W4A16", "W8A16")
LLM_ALGORITHM_SCHEMES = ("W4A16", "W8A16", "W8A8")
# AWQ scales weight channels by activation saliency before rounding weights alone: weight-only schemes.
LLM_AWQ_SCHEMES = LLM_WEIGHT_ONLY_SCHEMES
# Schemes whose activation scales are learned from calibration text (static, or NVFP4's global scale).
LLM_CALIBRATED_SCHEMES = ("W8A8", "FP8", "NVFP4")
# vLLM serves a calibrated FP8 KV cache (k_scale/v_scale per layer) beside int and FP8 linear layers; the
# 4-bit float formats are left out, since no consumer here can check their pairing.
LLM_KV_CACHE_SCHEMES = ("W4A16", "W8A16", "W8A8", "FP8Dynamic", "FP8")
LLM_GPU_ONLY_SCHEMES = ("NVFP4", "MXFP4")
DEFAULT_LLM_ALGORITHM: LLMAlgorithm = "GPTQ"
DEFAULT_GROUP_SIZE = 128
DEFAULT_SYMMETRIC = True
# AWQ's scale search is made for scales with zero points (llm-compressor's AWQ examples use W4A16_ASYM).
DEFAULT_AWQ_SYMMETRIC = False
DEFAULT_SMOOTHING_STRENGTH = 0.8
LLMBackend = Literal["LLMCompressor", "ModelOpt"]
DEFAULT_LLM_BACKEND: LLMBackend = "LLMCompressor"
# The schemes NVIDIA Model Optimizer quantizes and exports as a unified HF checkpoint (TensorRT-LLM
# reads them from hf_quant_config.json): W4A16 as INT4 AWQ, FP8 as FP8 per tensor, FP8Dynamic as FP8
# per channel with dynamic per-token activations, NVFP4. ("FP8" joins LLMScheme with static FP8.)
MODELOPT_SCHEMES = ("W4A16", "FP8", "FP8Dynamic", "NVFP4")


class LLMQuantizeStep(ApiModel):
    """Quantize a HuggingFace causal language model with llm-compressor's oneshot, saved as a
    compressed-tensors checkpoint that vLLM, SGLang and transformers load. Runs in the worker-llm image."""

    scheme: LLMScheme = Field(
        description=(
            "What is quantized and to what. W4A16 and W8A16 store int4 or int8 weights in groups and "
            "keep 16-bit activations; W8A8 quantizes weights (per channel) and activations (per token, "
            "dynamic) to int8 after SmoothQuant moves activation outliers into the weights; FP8Dynamic "
            "stores FP8 weights per channel with dynamic per-token FP8 activations (no calibration); FP8 "
            "stores FP8 weights per tensor with static per-tensor FP8 activation scales learned from "
            "data.calibration; NVFP4 and MXFP4 are 4-bit floating-point formats that need an NVIDIA GPU at run time."
        )
    )
    algorithm: LLMAlgorithm | None = Field(
        None,
        description=(
            "W4A16, W8A16 and W8A8 only: GPTQ corrects each layer's rounding error with second-order "
            "information from calibration data; AWQ (W4A16 and W8A16) scales the weight channels that "
            "calibration activations show to matter most before rounding to nearest; RTN rounds to nearest "
            f"and needs no data. Unset means {DEFAULT_LLM_ALGORITHM}."
        ),
    )
    groupSize: int | None = Field(
        None,
        ge=8,
        le=4096,
        description=(
            "W4A16 and W8A16 only: weights sharing one scale along the input dimension; it must divide "
            f"every quantized layer's input size. Unset means {DEFAULT_GROUP_SIZE}."
        ),
    )
    symmetric: bool | None = Field(
        None,
        description=(
            "W4A16 and W8A16 only: symmetric scales (true) or scales plus zero points (false); unset means "
            f"{str(DEFAULT_AWQ_SYMMETRIC).lower()} with algorithm AWQ (whose scale search expects zero "
            f"points) and {str(DEFAULT_SYMMETRIC).lower()} otherwise."
        ),
    )
    smoothingStrength: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "W8A8 only: SmoothQuant's migration strength, how much of the activations' range moves into "
            f"the weights; unset means {DEFAULT_SMOOTHING_STRENGTH}."
        ),
    )
    kvCache: LLMKVCache | None = Field(
        None,
        description=(
            "Store the attention key/value cache in FP8 with static per-tensor scales learned from "
            "data.calibration (vLLM reads them as each layer's k_scale and v_scale); schemes W4A16, W8A16, "
            "W8A8, FP8Dynamic and FP8 only. Unset keeps the cache in the model's dtype."
        ),
    )
    excludeLayers: list[ModulePattern] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Modules to keep in their original precision, by name or as `re:REGEX` (llm-compressor's "
            "ignore syntax), e.g. `re:.*mlp.down_proj`. lm_head is always kept."
        ),
    )
    backend: LLMBackend | None = Field(
        None,
        description=(
            "Which library quantizes and in what format the folder is published. LLMCompressor writes "
            "compressed-tensors (vLLM, SGLang, transformers); ModelOpt (NVIDIA Model Optimizer) writes its "
            "unified HF checkpoint with hf_quant_config.json (TensorRT-LLM, vLLM) and serves schemes "
            f"{', '.join(MODELOPT_SCHEMES)}. Unset means {DEFAULT_LLM_BACKEND}."
        ),
    )

    __rules__ = (
        Rule(
            cel="!has(self.algorithm) || self.scheme in " + str(list(LLM_ALGORITHM_SCHEMES)),
            message="`algorithm` is only used by schemes W4A16, W8A16 and W8A8; FP8Dynamic, FP8, NVFP4 and MXFP4 "
            "round to nearest, so remove it",
            field_path=".algorithm",
        ),
        Rule(
            cel="!has(self.algorithm) || self.algorithm != 'AWQ' || self.scheme in " + str(list(LLM_AWQ_SCHEMES)),
            message="`algorithm` AWQ is only used by the weight-only schemes W4A16 and W8A16 (it protects salient "
            "weight channels before rounding them); use GPTQ or RTN with W8A8",
            field_path=".algorithm",
        ),
        Rule(
            cel="!has(self.kvCache) || self.scheme in " + str(list(LLM_KV_CACHE_SCHEMES)),
            message="`kvCache` is only used with schemes W4A16, W8A16, W8A8, FP8Dynamic and FP8, whose "
            "checkpoints vLLM serves with a calibrated FP8 KV cache; remove it for NVFP4 and MXFP4",
            field_path=".kvCache",
        ),
        Rule(
            cel="!has(self.groupSize) || self.scheme in " + str(list(LLM_WEIGHT_ONLY_SCHEMES)),
            message="`groupSize` is only used by schemes W4A16 and W8A16; W8A8 and FP8Dynamic scale per "
            "channel, FP8 per tensor, and NVFP4 and MXFP4 have fixed groups of 16 and 32, so remove it",
            field_path=".groupSize",
        ),
        Rule(
            cel="!has(self.symmetric) || self.scheme in " + str(list(LLM_WEIGHT_ONLY_SCHEMES)),
            message="`symmetric` is only used by schemes W4A16 and W8A16; the other schemes are symmetric, "
            "so remove it",
            field_path=".symmetric",
        ),
        Rule(
            cel="!has(self.smoothingStrength) || self.scheme == 'W8A8'",
            message="`smoothingStrength` is only used by scheme W8A8 (SmoothQuant); remove it",
            field_path=".smoothingStrength",
        ),
        # backend ModelOpt
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || self.scheme in " + str(list(MODELOPT_SCHEMES)),
            message="`backend` ModelOpt serves schemes W4A16 (INT4 AWQ), FP8, FP8Dynamic and NVFP4; use backend "
            "LLMCompressor for the others",
            field_path=".backend",
        ),
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || !has(self.kvCache)",
            message="`kvCache` is written by backend LLMCompressor (compressed-tensors' kv_cache_scheme); with backend "
            "ModelOpt remove it",
            field_path=".kvCache",
        ),
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || !has(self.algorithm)",
            message="backend ModelOpt picks its own algorithm (AWQ for W4A16, round-to-nearest with calibrated "
            "scales for the FP schemes); remove `algorithm`",
            field_path=".algorithm",
        ),
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || !has(self.symmetric) || self.symmetric",
            message="backend ModelOpt's INT4 AWQ checkpoint is symmetric (no zero points); remove `symmetric` "
            "or use backend LLMCompressor",
            field_path=".symmetric",
        ),
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || !has(self.excludeLayers) || "
            "self.excludeLayers.all(x, !x.startsWith('re:'))",
            message="backend ModelOpt names excluded modules by their full name (e.g. model.layers.0.mlp.down_proj), "
            "not by `re:` regular expressions",
            field_path=".excludeLayers",
        ),
    )

    @property
    def algorithm_or_default(self) -> LLMAlgorithm:
        """The weight rounding of the integer schemes."""
        return self.algorithm or DEFAULT_LLM_ALGORITHM

    @property
    def group_size_or_default(self) -> int:
        """Weights per scale of the weight-only schemes."""
        return DEFAULT_GROUP_SIZE if self.groupSize is None else self.groupSize

    @property
    def symmetric_or_default(self) -> bool:
        """Whether the weight-only schemes' scales are symmetric (no zero points)."""
        if self.symmetric is not None:
            return self.symmetric
        return DEFAULT_AWQ_SYMMETRIC if self.algorithm_or_default == "AWQ" else DEFAULT_SYMMETRIC

    @property
    def smoothing_strength_or_default(self) -> float:
        """SmoothQuant's migration strength for W8A8."""
        return DEFAULT_SMOOTHING_STRENGTH if self.smoothingStrength is None else self.smoothingStrength

    @property
    def backend_or_default(self) -> LLMBackend:
        """The library that quantizes and exports."""
        return self.backend or DEFAULT_LLM_BACKEND

    @property
    def needs_calibration(self) -> bool:
        """GPTQ, AWQ, SmoothQuant, static activation scales and the KV cache's scales learn from
        calibration text (the job rule on data.calibration says the same in CEL)."""
        if self.kvCache is not None or self.scheme in LLM_CALIBRATED_SCHEMES:
            return True
        return self.scheme in LLM_WEIGHT_ONLY_SCHEMES and self.algorithm_or_default != "RTN"


LLMSparsifyMethod = Literal["SparseGPT", "Wanda"]


class LLMSparsifyStep(ApiModel):
    """Prune a HuggingFace causal language model to 2:4 semi-structured sparsity with llm-compressor's
    oneshot (half the weights of every decoder Linear layer become zero). Runs in the worker-llm image;
    an llmQuantize step may follow it."""

    method: LLMSparsifyMethod = Field(
        description=(
            "How the zeros are chosen, from calibration text: SparseGPT prunes each layer with "
            "second-order information and updates the weights it keeps to make up for the pruned ones; "
            "Wanda prunes the weights with the smallest |weight| x input norm and leaves the rest as they are."
        )
    )
    pattern: Literal["2:4"] = Field(
        "2:4",
        description=(
            "The sparsity pattern: 2:4 keeps at most 2 nonzero weights in every group of 4 consecutive "
            "weights along a layer's input dimension, the semi-structured pattern NVIDIA's sparse tensor "
            "cores (Ampere and newer) run."
        ),
    )
    excludeLayers: list[ModulePattern] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Modules to keep dense, by name or as `re:REGEX` (llm-compressor's ignore syntax), e.g. "
            "`re:.*mlp.down_proj`. lm_head is always kept."
        ),
    )


class OnnxStep(ApiModel):
    """Export to ONNX and check onnxruntime's outputs against torch."""

    opset: int = Field(18, ge=13, le=23, description="ONNX opset version.")
    tolerance: float = Field(
        1e-3, gt=0, le=1, description="Largest allowed absolute difference between onnxruntime and torch outputs."
    )
    dynamicBatch: bool = Field(True, description="Keep the batch dimension dynamic in the exported graph.")


class ShapeProfile(ApiModel):
    """One TensorRT optimization profile: the shapes of the first model input. Every other input of
    the same rank whose fixed dimensions agree (an attention mask beside token ids) takes the same
    shapes; any other input takes this batch with its declared dimensions."""

    min: list[Annotated[int, Field(ge=1, le=MAX_DIMENSION)]] = Field(
        min_length=1, max_length=8, description="Smallest shape."
    )
    opt: list[Annotated[int, Field(ge=1, le=MAX_DIMENSION)]] = Field(
        min_length=1, max_length=8, description="Shape to tune for."
    )
    max: list[Annotated[int, Field(ge=1, le=MAX_DIMENSION)]] = Field(
        min_length=1,
        max_length=8,
        description=f"Largest shape; each dimension at most {MAX_DIMENSION}, all of them at most {MAX_INPUT_ELEMENTS} elements.",
    )

    __rules__ = (
        Rule(
            cel="size(self.min) == size(self.opt) && size(self.opt) == size(self.max)",
            message="min, opt and max must have the same number of dimensions",
        ),
        Rule(
            cel="[0, 1, 2, 3, 4, 5, 6, 7].all(i, i >= size(self.min) || i >= size(self.opt) || "
            "i >= size(self.max) || (self.min[i] <= self.opt[i] && self.opt[i] <= self.max[i]))",
            message="each dimension must satisfy min <= opt <= max",
        ),
        Rule(
            cel=f"{_shape_elements_cel('self.max')} <= {float(MAX_INPUT_ELEMENTS)}",
            message=f"the largest shape holds more than {MAX_INPUT_ELEMENTS} (2^28) elements",
            field_path=".max",
        ),
    )


class TensorRTStep(ApiModel):
    """Build a TensorRT engine (needs TensorRT and an NVIDIA GPU at run time)."""

    precision: Literal["FP32", "FP16", "INT8", "FP8"] = Field(
        "FP16",
        description=(
            "Kernel precision the builder may use besides FP32, as TensorRT's builder flags name them; "
            "INT8 needs data.calibration."
        ),
    )
    profiles: list[ShapeProfile] = Field(
        default_factory=list, max_length=8, description="Optimization profiles for dynamic shapes."
    )
    workspaceMiB: int = Field(4096, ge=16, le=1_048_576, description="Builder workspace memory limit in MiB.")
    timingCache: bool = Field(True, description="Reuse and save the builder's timing cache under the output prefix.")


TECHNIQUE_FIELDS = ("prune", "lowRank", "distill", "quantize", "llmQuantize", "llmSparsify", "onnx", "tensorrt")
# The techniques of the LLM path: a job with one runs in the worker-llm image.
LLM_TECHNIQUE_FIELDS = tuple(kind for kind in TECHNIQUE_FIELDS if kind.startswith("llm"))


class Step(ApiModel):
    """One step of the pipeline: a name and exactly one technique."""

    name: StepName = Field(description="Unique name of the step (a DNS label); shown in status.currentStep.")
    prune: PruneStep | None = Field(None, description="Prune weights or channels.")
    lowRank: LowRankStep | None = Field(None, description="Factorize layers into thin, low-rank factors.")
    distill: DistillStep | None = Field(None, description="Distill the teacher into a student.")
    quantize: QuantizeStep | None = Field(None, description="Quantize to fewer bits.")
    llmQuantize: LLMQuantizeStep | None = Field(
        None, description="Quantize a causal language model with llm-compressor (the worker-llm image)."
    )
    llmSparsify: LLMSparsifyStep | None = Field(
        None, description="Prune a causal language model to 2:4 sparsity with llm-compressor (the worker-llm image)."
    )
    onnx: OnnxStep | None = Field(None, description="Export to ONNX.")
    tensorrt: TensorRTStep | None = Field(None, description="Build a TensorRT engine.")

    __rules__ = (
        Rule(
            cel="[" + ", ".join(f"has(self.{kind})" for kind in TECHNIQUE_FIELDS) + "].filter(x, x).size() == 1",
            message="each step needs exactly one technique: one of "
            + ", ".join(TECHNIQUE_FIELDS[:-1])
            + f" or {TECHNIQUE_FIELDS[-1]}",
        ),
    )

    @property
    def kind(self) -> str:
        """Which technique this step runs."""
        for kind in TECHNIQUE_FIELDS:
            if getattr(self, kind) is not None:
                return kind
        raise ValueError(f"step {self.name} has no technique")

    @property
    def config(self) -> ApiModel:
        """The technique's typed configuration."""
        cfg = getattr(self, self.kind)
        assert isinstance(cfg, ApiModel)
        return cfg


# --------------------------------------------------------------------------------------------
# spec.acceptance, output, resources, runPolicy, worker


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


class Resources(ApiModel):
    """What the worker pod asks for."""

    gpus: int = Field(1, ge=0, le=16, description="Number of GPUs (0 runs on CPU).")
    gpuProduct: Annotated[str, StringConstraints(max_length=63, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")] | None = (
        Field(None, description="Required value of the node label nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3.")
    )
    memory: Quantity = Field("16Gi", description="Memory request and limit, a Kubernetes quantity.")
    cpu: Quantity = Field("4", description="CPU request, a Kubernetes quantity.")
    ephemeralStorage: Quantity = Field(
        "20Gi",
        description=(
            "Local disk for the worker: the size limit of its /scratch volume and the pod's ephemeral-storage "
            "request and limit, a Kubernetes quantity. The kubelet evicts a pod that writes more."
        ),
    )

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
        None, description="Kueue LocalQueue; the Job is created suspended for Kueue to admit."
    )
    priorityClassName: Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)] | None = Field(
        None, description="PriorityClass of the worker pod; also orders the operator's own queue."
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
# A step of the LLM path (worker/llm), inside `self.steps.exists(s, ...)`.
_LLM_STEP = "(has(s.llmQuantize) || has(s.llmSparsify))"


class CompressionJobSpec(ApiModel):
    """What to compress, how, and where the results go."""

    model: ModelSource = Field(description="The model to compress.")
    data: DataSpec | None = Field(None, description="Calibration, evaluation and training data.")
    steps: list[Step] = Field(
        min_length=1, max_length=MAX_STEPS, description="The ordered steps; each transforms the previous step's model."
    )
    acceptance: Acceptance | None = Field(None, description="Gates the final model must pass.")
    output: Output = Field(description="Where the artifacts and report go.")
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
        Rule(
            cel="!self.steps.exists(s, has(s.quantize) && s.quantize.method == 'StaticInt8') || "
            "(has(self.data) && has(self.data.calibration))",
            message="quantize method StaticInt8 needs data.calibration; add a calibration data set or use DynamicInt8",
            field_path=".data",
        ),
        Rule(
            cel="!self.steps.exists(s, has(s.tensorrt) && s.tensorrt.precision == 'INT8') || "
            "(has(self.data) && has(self.data.calibration))",
            message="tensorrt precision INT8 needs data.calibration; add a calibration data set or use FP16",
            field_path=".data",
        ),
        Rule(
            cel="!self.steps.exists(s, has(s.distill) || (has(s.prune) && has(s.prune.fineTune)) || "
            "(has(s.lowRank) && has(s.lowRank.fineTune))) || (has(self.data) && has(self.data.training))",
            message="distill, prune.fineTune and lowRank.fineTune need data.training; add a training data set",
            field_path=".data",
        ),
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
            + " || ".join(f"(has(self.data.{r}) && {_is_text_cel('self.data.' + r)})" for r in DATA_ROLES)
            + ")",
            message="text data (.jsonl or .txt) is tokenized with the model folder's own tokenizer, so it needs "
            "model.format HuggingFace; for other formats tokenize beforehand into an .npz with one array per input",
            field_path=".data",
        ),
        Rule(
            cel="!self.steps.exists(s, has(s.quantize) && s.quantize.method == 'FP8') || self.resources.gpus > 0",
            message="quantize method FP8 runs on FP8 tensor cores: resources.gpus must be at least 1",
            field_path=".resources",
        ),
        Rule(
            cel=f"!self.steps.exists(s, {_LLM_STEP}) || size(self.steps) == 1 || (size(self.steps) == 2 && "
            "has(self.steps[0].llmSparsify) && has(self.steps[1].llmQuantize))",
            message="LLM steps run in a job of their own (the worker-llm image has no other technique), as one of "
            "[llmQuantize], [llmSparsify] or [llmSparsify, llmQuantize] (prune, then quantize); put other steps "
            "in a job of their own",
            field_path=".steps",
        ),
        Rule(
            cel=f"!self.steps.exists(s, {_LLM_STEP}) || self.model.format == 'HuggingFace'",
            message="llmQuantize and llmSparsify steps need a causal language model in format HuggingFace (a "
            "transformers folder with safetensors weights)",
            field_path=".model.format",
        ),
        Rule(
            cel="!self.steps.exists(s, has(s.llmSparsify) || (has(s.llmQuantize) && ("
            f"(s.llmQuantize.scheme in {list(LLM_WEIGHT_ONLY_SCHEMES)} && "
            "(!has(s.llmQuantize.algorithm) || s.llmQuantize.algorithm != 'RTN')) || "
            f"s.llmQuantize.scheme in {list(LLM_CALIBRATED_SCHEMES)} || has(s.llmQuantize.kvCache)))) || "
            "(has(self.data) && has(self.data.calibration))",
            message="llmSparsify, and llmQuantize with algorithm GPTQ (the default of W4A16 and W8A16) or AWQ, "
            "scheme W8A8, FP8 or NVFP4, or a kvCache: each needs data.calibration (a .txt or .jsonl text file); add one, "
            "or quantize with algorithm RTN, scheme FP8Dynamic and no kvCache",
            field_path=".data",
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
                f"(!has(self.data.{d}) || {_is_text_cel(f'self.data.{d}')})" for d in ("calibration", "evaluation")
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
            cel="!self.steps.exists(s, has(s.llmQuantize) && has(s.llmQuantize.backend) && "
            "s.llmQuantize.backend == 'ModelOpt') || (size(self.steps) == 1 && self.resources.gpus <= 1 && "
            "(!has(self.data) || !has(self.data.tasks)))",
            message="backend ModelOpt calibrates in one process and publishes a checkpoint that only TensorRT-LLM "
            "and vLLM load, so it runs alone in its job (no llmSparsify before it), with resources.gpus of at most 1 "
            "and no data.tasks (lm-eval scores the published folder); use backend LLMCompressor for these",
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
        Rule(
            cel="!self.steps.exists(s, has(s.tensorrt)) || self.resources.gpus > 0",
            message="a tensorrt step builds on an NVIDIA GPU: resources.gpus must be at least 1",
            field_path=".resources",
        ),
    )

    @property
    def runs_llm(self) -> bool:
        """Whether a step is an LLM technique: the job then runs in the worker-llm image."""
        return any(step.kind in LLM_TECHNIQUE_FIELDS for step in self.steps)


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


# --------------------------------------------------------------------------------------------
# status


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
    lastReport: ReportCursor | None = Field(
        None,
        description="The newest live report accepted, kept so that an operator restart never accepts an older one.",
    )
    conditions: list[Condition] = Field(default_factory=list, max_length=16, description="Latest observations.")


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
