"""The export techniques: onnx and tensorrt."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kompression.api.rules import Rule
from kompression.api.v1alpha1.base import MAX_DIMENSION, MAX_INPUT_ELEMENTS, ApiModel, shape_elements_cel
from kompression.api.v1alpha1.needs import ALWAYS, Requires, TechniqueConfig, When


class OnnxStep(TechniqueConfig):
    """Export to ONNX and check onnxruntime's outputs against torch."""

    opset: int = Field(18, ge=13, le=23, description="ONNX opset version.")
    tolerance: float = Field(
        1e-3, gt=0, le=1, description="Largest allowed absolute difference between onnxruntime and torch outputs."
    )
    dynamicBatch: bool = Field(True, description="Keep the batch dimension dynamic in the exported graph.")

    __needs__ = Requires()


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
            cel=f"{shape_elements_cel('self.max')} <= {float(MAX_INPUT_ELEMENTS)}",
            message=f"the largest shape holds more than {MAX_INPUT_ELEMENTS} (2^28) elements",
            field_path=".max",
        ),
    )


class TensorRTStep(TechniqueConfig):
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

    __needs__ = Requires(
        calibration=When("precision", ("INT8",)),
        gpu=ALWAYS,
        advice={
            "calibration": "add a calibration data set or use FP16",
            "gpu": "set resources.gpus to at least 1 (TensorRT builds the engine on an NVIDIA GPU)",
        },
    )
