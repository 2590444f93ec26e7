"""The quantize technique (onnxruntime and torch kernels) and the methods' capability facts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from kompression.api.rules import Rule
from kompression.api.v1alpha1.needs import Requires, TechniqueConfig, When

QuantizeMethod = Literal["DynamicInt8", "StaticInt8", "Float16", "BFloat16", "FP8"]
Calibrator = Literal["MinMax", "Percentile", "Entropy"]
INT8_METHODS = ("StaticInt8", "DynamicInt8")
EXCLUDE_LAYER_METHODS = ("StaticInt8", "DynamicInt8", "FP8")
DEFAULT_CALIBRATOR: Calibrator = "MinMax"
DEFAULT_PERCENTILE = 99.999
DEFAULT_PER_CHANNEL = True


class QuantizeStep(TechniqueConfig):
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
            "on the job's calibration (else evaluation) data, stands out, when keeping them float at least "
            "halves the model's output error; setting it replaces that choice. "
            "Float16 and BFloat16 convert the whole model."
        ),
    )

    __needs__ = Requires(
        calibration=When("method", ("StaticInt8",)),
        gpu=When("method", ("FP8",)),
        advice={
            "calibration": "add a calibration data set or use DynamicInt8",
            "gpu": "set resources.gpus to at least 1 on a node with FP8 tensor cores (Ada, Hopper or newer)",
        },
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
