"""A checkpoint folder's evaluator: perplexity on the job's evaluation text, accuracy on its task
suites (lm-evaluation-harness) and decode tokens/s, of the folder loaded by transformers as a server
loads it: float32 on a CPU, the folder's dtype on a GPU. Also the job's text, tokenized once for
the folder's steps (calibration) and for scoring (evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM

from kompression.api.v1alpha1 import CompressionJob, DataSource, DataSpec, Metrics
from kompression.worker.data.texts import read_texts
from kompression.worker.errors import DataError, ModelError
from kompression.worker.evaluation import Prepared
from kompression.worker.formats import hf_folder
from kompression.worker.formats.hf_folder import MODEL_URI
from kompression.worker.formats.size import model_size
from kompression.worker.llm import model_free, tasks, throughput, token_ids
from kompression.worker.llm.perplexity import perplexity
from kompression.worker.llm.phases import Phases
from kompression.worker.measure.graphs import Measured, api_device
from kompression.worker.model import CheckpointFolder, DataSets, Model, TokenTexts
from kompression.worker.storage import objects


def prepare_folder(job: CompressionJob, model: Model, model_path: Path, workdir: Path, device: str) -> Prepared:
    """The job's text, tokenized by the folder's tokenizer, and the folder's evaluator."""
    assert isinstance(model, CheckpointFolder)  # evaluation.PREPARE picks this for folders only
    data = job.spec.data
    runs = hf_folder.runnable(model, AutoModelForCausalLM)
    if not runs:
        _refuse_scores(model, data)
    tokenizer = hf_folder.tokenizer(model.path, MODEL_URI)
    calibration = evaluation = suite = None
    if job.spec.needs.calibration:
        assert data is not None and data.calibration is not None  # the API requires it
        calibration = _text(data.calibration, workdir, tokenizer, "spec.data.calibration")
    if data is not None and data.evaluation is not None:
        evaluation = _text(data.evaluation, workdir, tokenizer, "spec.data.evaluation")
    if data is not None and data.tasks:
        suite = tasks.prepare(data.tasks, workdir)
    sequences = evaluation.samples if evaluation is not None else None
    evaluate = FolderEvaluator(sequences, suite, device) if runs else SizeEvaluator(device)
    return Prepared(model, DataSets(calibration_text=calibration, evaluation_text=evaluation), evaluate)


def _refuse_scores(model: CheckpointFolder, data: DataSpec | None) -> None:
    """A folder no transformers class runs (a job of llmQuantize method ModelFree only) has no
    perplexity, task accuracy or speed to measure: a job that asks for them fails before any work,
    never publishing figures it did not measure."""
    asked = [name for name in ("evaluation", "tasks") if data is not None and getattr(data, name)]
    if asked:
        raise ModelError(
            f"{MODEL_URI}: transformers {transformers.__version__} has no model class for this folder "
            f"(architectures {model.config.get('architectures')}, model_type {model.config.get('model_type')!r}), "
            f"so {' and '.join('spec.data.' + n for n in asked)} cannot be scored on it; llmQuantize method "
            "ModelFree quantizes such a folder, and the job then measures sizes only: remove "
            f"{' and '.join('data.' + n for n in asked)} (and acceptance.maxPerplexityIncrease and maxAccuracyDrop)"
        )


def _text(source: DataSource, workdir: Path, tokenizer: Any, where: str) -> TokenTexts:
    assert source.uri is not None  # the API refuses builtin data for an LLM job's text
    path = objects.source(source.uri, workdir / "data", DataError, where)
    samples = token_ids.tokenize(tokenizer, read_texts(path, where, tokenizer).texts[: source.samples], source, where)
    notes = {
        "uri": source.uri,
        "sha256": objects.sha256_file(path),
        "samples": len(samples),
        "tokens": sum(len(x) for x in samples),
    }
    return TokenTexts(samples, notes)


def load(folder: CheckpointFolder, dtype: Any, device_map: str | None = None, *, original: bool = False) -> Any:
    """The folder's causal LM; the job's own model (`original`) must hold every weight it expects,
    where a step's output is a checkpoint compressed-tensors reshapes as it loads."""
    with hf_folder.loading(MODEL_URI, "a causal LM"):
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            folder.path,
            dtype=dtype,
            device_map=device_map,
            output_loading_info=True,
            **hf_folder.load_options(folder, AutoModelForCausalLM),
        )
    model, info = loaded
    if original:
        hf_folder.check_complete(info, model, MODEL_URI)
    if isinstance(dtype, torch.dtype):
        _unquantized_to(model, dtype)
    return model


def _unquantized_to(model: Any, dtype: torch.dtype) -> None:
    """transformers 5.17 loads every tensor it renames from a pre-quantized folder in the dtype the
    folder stores, whatever dtype was asked for (a Mixtral's router, stored as block_sparse_moe.gate,
    is the model's mlp.gate), and the router then meets hidden states of the other dtype: the
    half-precision tensors of every module that no quantization scheme covers get the asked dtype
    (a quantized module's are its scales, and an FP8 weight is a stored value, not a dtype to widen)."""
    for module in model.modules():
        if getattr(module, "quantization_scheme", None) is None:
            for param in module.parameters(recurse=False):
                if param.dtype in (torch.bfloat16, torch.float16) and param.dtype != dtype:
                    param.data = param.data.to(dtype)


class FolderEvaluator:
    """Scores a checkpoint folder on the job's evaluation text and task suites."""

    def __init__(self, sequences: list[list[int]] | None, suite: tasks.Suite | None, device: str) -> None:
        self.sequences = sequences
        self.suite = suite
        self.device = device

    def __call__(self, model: Model, artifact: Path, reference: Measured | None, /) -> Measured:
        assert isinstance(model, CheckpointFolder)  # evaluation.PREPARE gives folders this evaluator
        # On GPUs accelerate spreads the layers over every GPU the pod has (and the CPU beyond them):
        # a model larger than one GPU is scored too.
        cpu = self.device == "cpu"
        phases = Phases()
        # The folder is loaded back from disk even where the step still holds the model in memory:
        # what is scored is what was written, so a save that dropped or mangled a tensor shows.
        with phases("load"):
            loaded = load(model, torch.float32 if cpu else "auto", None if cpu else "auto", original=reference is None)
        loaded.eval()
        # A loaded compressed-tensors model keeps packed weights as buffers, so only the original's
        # count means anything; no LLM technique removes a weight (pruned ones are zeros, quantized
        # ones packed), so a step's output has the original's.
        parameters = sum(p.numel() for p in loaded.parameters()) if reference is None else reference.metrics.parameters
        value = scores = None
        if self.sequences is not None:
            with phases("perplexity"):
                value = round(perplexity(loaded, self.sequences, self.device).value, 4)
        if self.suite is not None:
            with phases("tasks"):
                scores = tasks.score(loaded, hf_folder.tokenizer(model.path, MODEL_URI), self.suite)
        with phases("decode"):
            speed = throughput.tokens_per_second(loaded, throughput.prompt(loaded, self.sequences), self.device)
        del loaded
        metrics = Metrics(
            sizeBytes=model_size(artifact),
            parameters=parameters,
            accuracy=scores.mean if scores else None,
            perplexity=value,
            tokensPerSecond=round(speed, 2),
            device=api_device(self.device),
            provider="PyTorch",
        )
        notes: dict[str, Any] = {}
        if scores is not None and self.suite is not None:
            # The suites are described once per step; the original's row lists its scores only.
            notes = (
                {"taskScores": scores.per_task}
                if reference is None
                else {"tasks": self.suite.describe(), "taskScores": scores.per_task}
            )
        return Measured(metrics, notes={**notes, "scoreSeconds": phases.seconds})


class SizeEvaluator:
    """A folder no transformers class runs: its size, and its parameters counted from the original's
    safetensors headers; no perplexity, accuracy or speed, and the notes say why."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __call__(self, model: Model, artifact: Path, reference: Measured | None, /) -> Measured:
        assert isinstance(model, CheckpointFolder)  # evaluation.PREPARE gives folders this evaluator
        parameters = model_free.parameter_count(model.path) if reference is None else reference.metrics.parameters
        metrics = Metrics(sizeBytes=model_size(artifact), parameters=parameters, device=api_device(self.device))
        why = (
            f"transformers {transformers.__version__} has no model class for architectures "
            f"{model.config.get('architectures')} (model_type {model.config.get('model_type')!r}): sizes only, "
            "no perplexity, task accuracy or decode speed"
        )
        return Measured(metrics, notes={"notScored": why})
