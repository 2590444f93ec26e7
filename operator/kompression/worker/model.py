"""The model as it flows between steps: eager PyTorch, an ONNX file, or a TensorRT engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kompression.api.v1alpha1 import DataSource

# A data set read without a batch size (a test's, a notebook's) is batched as the API's default.
DEFAULT_BATCH_SIZE: int = DataSource.model_fields["batchSize"].default


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


@dataclass
class Dataset:
    """In-memory data: inputs (N, ...) float32 or int64, labels (N,) int64 or None, and the batch
    size it is read in (spec.data.<role>.batchSize)."""

    inputs: np.ndarray
    labels: np.ndarray | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class DataSets:
    calibration: Dataset | None = None
    evaluation: Dataset | None = None
    training: Dataset | None = None
