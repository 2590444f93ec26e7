"""The model as it flows between steps: eager PyTorch, an ONNX file, a TensorRT engine, or a
HuggingFace causal-LM checkpoint folder (the LLM techniques' model)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kompression.api.v1alpha1 import DataSource, LLMSparsifyStep

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


@dataclass(frozen=True)
class CheckpointFolder:
    """A HuggingFace causal-LM checkpoint folder on local disk (config.json, safetensors weights, the
    tokenizer), as servers load it. The job's own folder is vetted once, by the loader
    (hf_folder.vet); a step's output is a folder the step wrote from it. Loading from a
    CheckpointFolder rather than a path keeps a folder to that one vetting."""

    path: Path
    config: dict[str, Any]
    architecture: type | None  # the class config.json's `architectures` names (None: unnamed)
    # The llmSparsify step whose N:M zeros the weights hold: later steps keep them, and each step
    # measures how its output still follows the pattern.
    sparsified: LLMSparsifyStep | None = None


Model = TorchModel | OnnxModel | EngineModel | CheckpointFolder


@dataclass
class Dataset:
    """In-memory data: one array (N, ...) per model input, keyed by spec.model.inputs[].name in
    declared order (float32 features, int64 ids and masks side by side), labels (N,) int64 or None,
    and the batch size it is read in (spec.data.<role>.batchSize)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 0

    def rows(self, index: slice | np.ndarray) -> list[np.ndarray]:
        """The selected samples of every input, in declared order (contiguous, ready to feed)."""
        return [np.ascontiguousarray(a[index]) for a in self.inputs.values()]

    def head(self, n: int) -> Dataset:
        """The first n samples."""
        return replace(
            self,
            inputs={k: a[:n] for k, a in self.inputs.items()},
            labels=None if self.labels is None else self.labels[:n],
        )


@dataclass
class TokenTexts:
    """A text data set tokenized for a checkpoint folder: one list of token ids per sample (their
    lengths differ), and what report.json records about the set."""

    samples: list[list[int]]
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSets:
    """A job's data, as its model kind reads it: arrays for graphs, token ids for checkpoint folders."""

    calibration: Dataset | None = None
    evaluation: Dataset | None = None
    training: Dataset | None = None
    calibration_text: TokenTexts | None = None
    evaluation_text: TokenTexts | None = None
