"""spec.steps[]: one step names exactly one technique."""

from __future__ import annotations

from pydantic import Field

from kompression.api.rules import Rule
from kompression.api.v1alpha1.base import ApiModel, StepName
from kompression.api.v1alpha1.export import OnnxStep, TensorRTStep
from kompression.api.v1alpha1.graph import DistillStep, LowRankStep, PruneStep
from kompression.api.v1alpha1.llm import LLMQuantizeStep, LLMSparsifyStep
from kompression.api.v1alpha1.quantize import QuantizeStep

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
