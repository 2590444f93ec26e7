"""The compression techniques, one module each, keyed by the config class of the spec's step kind.

Each is named by its module path and imported when a step runs it: the LLM techniques' libraries
(llm-compressor, Model Optimizer) exist only in the worker-llm environment, the others'
(onnxruntime, Torch-Pruning, tensorly) only in the main one.
"""

from __future__ import annotations

from kompression.api.v1alpha1 import (
    DistillStep,
    LLMQuantizeStep,
    LLMSparsifyStep,
    LowRankStep,
    OnnxStep,
    PruneStep,
    QuantizeStep,
    TensorRTStep,
)
from kompression.worker.steps.base import Lazy, Techniques

# One line per technique: a Step's config (step.config) selects its technique by its class.
TECHNIQUES: Techniques = {
    PruneStep: Lazy("kompression.worker.steps.prune:prune"),
    LowRankStep: Lazy("kompression.worker.steps.lowrank:low_rank"),
    DistillStep: Lazy("kompression.worker.steps.distill:distill"),
    QuantizeStep: Lazy("kompression.worker.steps.quantize:quantize"),
    OnnxStep: Lazy("kompression.worker.steps.onnx_export:onnx_export"),
    TensorRTStep: Lazy("kompression.worker.steps.tensorrt:tensorrt_engine"),
    LLMQuantizeStep: Lazy("kompression.worker.llm.techniques:llm_quantize"),
    LLMSparsifyStep: Lazy("kompression.worker.llm.techniques:llm_sparsify"),
}

__all__ = ["TECHNIQUES"]
