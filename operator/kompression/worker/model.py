"""The model as it flows between steps: eager PyTorch, an ONNX file, or a TensorRT engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class TorchModel:
    """An eager nn.Module plus example inputs (batch of 1) in the spec's input order."""

    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]


@dataclass
class OnnxModel:
    """An ONNX file on local disk (QDQ-quantized or float), run by onnxruntime."""

    path: Path
    input_names: list[str] = field(default_factory=list)


@dataclass
class EngineModel:
    """A serialized TensorRT engine on local disk, valid only for its TensorRT version and GPU."""

    path: Path
    tensorrt_version: str
    compute_capability: str


Model = TorchModel | OnnxModel | EngineModel
