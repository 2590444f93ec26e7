"""spec.steps[]: one step names exactly one technique."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import Field

from kompression.api.rules import Rule
from kompression.api.v1alpha1.base import ApiModel, StepName
from kompression.api.v1alpha1.export import OnnxStep, TensorRTStep
from kompression.api.v1alpha1.graph import DistillStep, LowRankStep, PruneStep
from kompression.api.v1alpha1.llm import LLMQuantizeStep, LLMSparsifyStep
from kompression.api.v1alpha1.needs import Needs, TechniqueConfig
from kompression.api.v1alpha1.quantize import QuantizeStep


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

    @property
    def kind(self) -> str:
        """Which technique this step runs."""
        for kind in TECHNIQUE_FIELDS:
            if getattr(self, kind) is not None:
                return kind
        raise ValueError(f"step {self.name} has no technique")

    @property
    def config(self) -> TechniqueConfig:
        """The technique's typed configuration."""
        cfg = getattr(self, self.kind)
        assert isinstance(cfg, TechniqueConfig)
        return cfg

    @property
    def needs(self) -> Needs:
        """What this step needs: calibration and training data, a tokenizer, a GPU, and its worker image."""
        return self.config.needs


def _technique(annotation: Any) -> type[TechniqueConfig]:
    """The config class of a technique field, `FooStep | None`."""
    (cls,) = (arg for arg in typing.get_args(annotation) if arg is not type(None))
    if not (isinstance(cls, type) and issubclass(cls, TechniqueConfig)):
        raise TypeError(f"a Step technique field holds a TechniqueConfig, not {annotation}")
    return cls


# Each technique field of a step and its config class, which declares what the technique needs: read
# off Step, so that the field name is the step kind, spelled nowhere else.
TECHNIQUES: dict[str, type[TechniqueConfig]] = {
    name: _technique(info.annotation) for name, info in Step.model_fields.items() if name != "name"
}
TECHNIQUE_FIELDS = tuple(TECHNIQUES)
Step.__rules__ = (
    Rule(
        cel="[" + ", ".join(f"has(self.{kind})" for kind in TECHNIQUE_FIELDS) + "].filter(x, x).size() == 1",
        message="each step needs exactly one technique: one of "
        + ", ".join(TECHNIQUE_FIELDS[:-1])
        + f" or {TECHNIQUE_FIELDS[-1]}",
    ),
)
