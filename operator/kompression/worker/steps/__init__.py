"""The compression techniques, one module each, keyed by the config class of the spec's step kind."""

from __future__ import annotations

from kompression.api.v1alpha1 import (
    DistillStep,
    LowRankStep,
    OnnxStep,
    PruneStep,
    QuantizeStep,
    TensorRTStep,
)
from kompression.worker.steps.base import Techniques
from kompression.worker.steps.distill import distill
from kompression.worker.steps.lowrank import low_rank
from kompression.worker.steps.onnx_export import onnx_export
from kompression.worker.steps.prune import prune
from kompression.worker.steps.quantize import quantize
from kompression.worker.steps.tensorrt import tensorrt_engine

# One line per technique: a Step's config (step.config) selects its technique by its class.
TECHNIQUES: Techniques = {
    PruneStep: prune,
    LowRankStep: low_rank,
    DistillStep: distill,
    QuantizeStep: quantize,
    OnnxStep: onnx_export,
    TensorRTStep: tensorrt_engine,
}

__all__ = ["TECHNIQUES"]
