"""The graph techniques that change a PyTorch model's layers: prune, lowRank and distill."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from kompression.api.rules import Rule
from kompression.api.v1alpha1.base import IMPORT_REF_PATTERN, ApiModel, ModulePattern, StepName
from kompression.api.v1alpha1.needs import ALWAYS, Given, Requires, TechniqueConfig, When


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


class PruneStep(TechniqueConfig):
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

    __needs__ = Requires(training=Given("fineTune"))

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
LowRankActivations = Literal["Whiten", "Ignore"]


class LowRankStep(TechniqueConfig):
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
    activations: LowRankActivations | None = Field(
        None,
        description=(
            "SVD only: Whiten truncates each layer's weight times the Cholesky factor of its inputs' second "
            "moment on data.calibration, then folds the factor back (SVD-LLM), so the factors keep what the "
            "layer computes on such inputs rather than the weight itself; needs data.calibration. Ignore "
            "truncates the weight alone. Unset: Whiten when the job has data.calibration, else Ignore."
        ),
    )

    # Unset whitens only when calibration data is there, so it asks for none.
    __needs__ = Requires(
        calibration=When("activations", ("Whiten",), unset="Auto"),
        training=Given("fineTune"),
        advice={
            "calibration": "add a calibration data set, or leave `activations` unset to whiten only when there is one"
        },
    )

    __rules__ = (
        Rule(
            cel="has(self.rankRatio) != has(self.energy)",
            message="set exactly one of `rankRatio` (a fraction of full rank) or `energy` (a fraction of the "
            "squared singular values kept) to choose the ranks",
        ),
        Rule(
            cel="!has(self.activations) || self.method == 'SVD'",
            message="`activations` is only used by method SVD; Tucker2 decomposes the kernel alone, so remove it",
            field_path=".activations",
        ),
    )

    def whitens(self, calibration: bool) -> bool:
        """Whether this step whitens by the activations, in a job with (or without) calibration data."""
        if self.method != "SVD" or self.activations == "Ignore":
            return False
        return self.activations == "Whiten" or calibration

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


class DistillStep(TechniqueConfig):
    """Train a student to match the original model (the teacher): KL on softened outputs plus cross-entropy."""

    student: StudentRef = Field(description="The model to train.")
    epochs: int = Field(5, ge=1, le=1000, description="Passes over the training data.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature for the distillation loss.")
    alpha: float = Field(
        0.7, ge=0, le=1, description="Weight of the distillation loss; 1 - alpha weights the hard-label loss."
    )
    learningRate: float = Field(1e-3, gt=0, le=10, description="Learning rate of the Adam optimizer.")
    batchSize: int = Field(64, ge=1, le=65536, description="Training batch size.")

    __needs__ = Requires(training=ALWAYS)
