"""Each model kind's evaluator, chosen by the kind of the model, never by the job.

- graphs (TorchModel, OnnxModel, EngineModel): accuracy (or agreement, cosine), latency, size,
  parameters and sparsity on the job's arrays (graphs.measure);
- HuggingFace checkpoint folders: perplexity on the job's text, accuracy on its task suites and
  decode tokens/s, the folder loaded as a server loads it (worker/llm/scoring.py).

Every kind sizes its model with formats.size.model_size, so compressionRatio means one thing. Each
kind's evaluator (and the data it reads) is imported when a model of that kind is loaded: the
folder's evaluator needs lm-eval and transformers, which only the worker-llm environment has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from kompression.api.v1alpha1 import CompressionJob, Measurement, ModelInput
from kompression.worker import lazy
from kompression.worker.data import arrays as data_io
from kompression.worker.errors import DataError
from kompression.worker.measure import graphs
from kompression.worker.model import CheckpointFolder, Dataset, DataSets, EngineModel, Model, OnnxModel, TorchModel
from kompression.worker.storage import objects


class Evaluator(Protocol):
    def __call__(self, model: Model, artifact: Path, reference: graphs.Measured | None, /) -> graphs.Measured:
        """Every figure of `model`, whose published form is `artifact`; `reference` is the original's
        measurement (None when this is the original)."""


@dataclass
class Prepared:
    """A loaded model with the job's data, read as its kind reads it, and its kind's evaluator."""

    model: Model
    data: DataSets
    evaluate: Evaluator


# Model kind -> "module:function" making its Prepared(job, model, model_path, workdir, device).
PREPARE: dict[type, str] = {
    TorchModel: "kompression.worker.evaluation:prepare_graph",
    OnnxModel: "kompression.worker.evaluation:prepare_graph",
    EngineModel: "kompression.worker.evaluation:prepare_graph",
    CheckpointFolder: "kompression.worker.llm.scoring:prepare_folder",
}


def prepare(job: CompressionJob, model: Model, model_path: Path, workdir: Path, device: str) -> Prepared:
    """The job's data and the evaluator of the model's kind."""
    made: Prepared = lazy.resolve(PREPARE[type(model)])(job, model, model_path, workdir, device)
    return made


@dataclass
class GraphEvaluator:
    """A graph's figures on the job's evaluation arrays, timed on one real sample."""

    inputs: list[ModelInput]
    measurement: Measurement
    evaluation: Dataset | None
    metric: str
    device: str
    sample: Sequence[np.ndarray] | None

    def __call__(self, model: Model, artifact: Path, reference: graphs.Measured | None, /) -> graphs.Measured:
        outputs = None if reference is None else reference.outputs
        return graphs.measure(
            model,
            artifact,
            self.inputs,
            self.measurement,
            self.evaluation,
            self.metric,
            outputs,
            self.device,
            self.sample,
        )


def prepare_graph(job: CompressionJob, model: Model, model_path: Path, workdir: Path, device: str) -> Prepared:
    spec = job.spec
    datasets = data_io.load_datasets(
        spec.data,
        spec.model.inputs,
        lambda uri: objects.source(uri, workdir / "data", DataError, "spec.data"),
        model_path if spec.model.format == "HuggingFace" else None,
    )
    metric = spec.data.evaluation.metric if spec.data and spec.data.evaluation else "Top1Accuracy"
    sample = data_io.first_sample(datasets)
    evaluate = GraphEvaluator(spec.model.inputs, spec.measurement, datasets.evaluation, metric, device, sample)
    return Prepared(_with_real_examples(model, sample), datasets, evaluate)


def _with_real_examples(model: Model, sample: list[np.ndarray] | None) -> Model:
    """The model's example inputs become one real sample of the data, so that tracing, layout
    timing and export see real token ids, masks and sequence lengths; without data they stay the
    declared shapes."""
    if sample is None or not isinstance(model, TorchModel):
        return model
    dtypes = [t.dtype for t in model.example_inputs]
    return TorchModel(model.module, tuple(torch.from_numpy(a).to(d) for a, d in zip(sample, dtypes, strict=True)))
