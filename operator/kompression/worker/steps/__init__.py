"""The compression techniques, one module each, keyed by the spec's step kind."""

from __future__ import annotations

from kompression.worker.steps.base import Technique
from kompression.worker.steps.distill import distill
from kompression.worker.steps.lowrank import low_rank
from kompression.worker.steps.onnx_export import onnx_export
from kompression.worker.steps.prune import prune
from kompression.worker.steps.quantize import quantize
from kompression.worker.steps.tensorrt import tensorrt_engine

TECHNIQUES: dict[str, Technique] = {
    "prune": prune,
    "lowRank": low_rank,
    "distill": distill,
    "quantize": quantize,
    "onnx": onnx_export,
    "tensorrt": tensorrt_engine,
}

__all__ = ["TECHNIQUES"]
