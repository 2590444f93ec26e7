"""The LLM techniques, llmQuantize and llmSparsify: each runs on the previous step's checkpoint
folder and writes its own, which transformers, vLLM or TensorRT-LLM load as they are.

- llm-compressor (llmQuantize's default backend, and llmSparsify): oneshot with the step's recipe,
  saved as compressed-tensors; under torchrun every rank calibrates a share of the samples
  (ranks.py), and rank 0 alone goes on.
- Model Optimizer (llmQuantize backend ModelOpt): its unified HF checkpoint, which no runtime here
  loads, so the step reports the figures it measured in memory before export.
- llm-compressor's model_free_ptq (llmQuantize method ModelFree, model_free.py): the safetensors
  rounded to nearest with no model class, for architectures transformers does not have.

They run in the worker-llm environment (llm-compressor, its torch and transformers); the pipeline
imports them by name when such a step runs (techniques.TECHNIQUES).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from llmcompressor import oneshot

from kompression.api.v1alpha1 import LLMQuantizeStep, LLMSparsifyStep
from kompression.worker.errors import StepInvalid
from kompression.worker.formats import hf_folder
from kompression.worker.formats.hf_folder import MODEL_URI
from kompression.worker.formats.size import model_size
from kompression.worker.llm import model_free, modelopt_backend, moe, ranks, recipe, resume, sparsity
from kompression.worker.llm.phases import Phases
from kompression.worker.model import CheckpointFolder, Model
from kompression.worker.techniques import StepContext, StepResult

BACKENDS = ("llmcompressor", "compressed-tensors", "transformers", "torch")


def backend_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in BACKENDS}


def llm_quantize(model: Model, ctx: StepContext[LLMQuantizeStep]) -> StepResult:
    source = _folder(model, ctx)
    cfg = ctx.config
    out = ctx.workdir / "out"
    sharing = ranks.world()  # the ranks part after the first step's save
    calibration = ctx.data.calibration_text.samples if ctx.data.calibration_text else None
    if cfg.method_or_default == "ModelFree":
        return _model_free(source, out, ctx)
    if cfg.backend_or_default == "ModelOpt":
        # Scored in memory: no runtime here loads its checkpoint (the API keeps it alone in its job).
        evaluation = ctx.data.evaluation_text.samples if ctx.data.evaluation_text else None
        with ranks.peak_memory(ctx.device) as box:
            metrics = modelopt_backend.quantize(
                source, out, cfg, calibration=calibration, evaluation=evaluation, device=ctx.device
            )
        notes = modelopt_backend.describe(cfg)
        folder = hf_folder.written(out, source, MODEL_URI)
        return StepResult(
            folder,
            _notes(notes, folder, source, ctx, peak=box[0], sharing=sharing),
            metrics=metrics,
            summary=f"{cfg.scheme} {notes['algorithm']}",
        )
    layers = _layers(ctx, source, calibration, sharing)
    peak, seconds = calibrate(cfg, source, out, ranks.share(source, cfg, calibration), layers=layers)
    notes = {**recipe.describe(cfg), **resume.report(layers)}
    folder = hf_folder.written(out, source, MODEL_URI)
    return StepResult(
        folder,
        _notes(notes, folder, source, ctx, peak=peak, sharing=sharing, seconds=seconds),
        summary=f"{cfg.scheme} {notes['algorithm']}",
    )


def _model_free(source: CheckpointFolder, out: Path, ctx: StepContext[LLMQuantizeStep]) -> StepResult:
    """method ModelFree (model_free.py): rank 0 alone rounds the weights, spreading the shards over
    every GPU of the pod; the other ranks of a torchrun group only take the plan and leave."""
    cfg = ctx.config
    ranks.share(source, cfg, None)
    ranks.disband()
    phases = Phases()
    with ranks.peak_memory(ctx.device) as box, phases("quantize"):
        notes = model_free.quantize(source, out, cfg, ctx.device)
    folder = hf_folder.written(out, source, MODEL_URI)
    return StepResult(
        folder,
        _notes(notes, folder, source, ctx, peak=box[0], sharing=1, seconds=phases.seconds),
        summary=f"{cfg.scheme} {notes['algorithm']} model-free",
    )


def llm_sparsify(model: Model, ctx: StepContext[LLMSparsifyStep]) -> StepResult:
    source = _folder(model, ctx)
    cfg = ctx.config
    out = ctx.workdir / "out"
    sharing = ranks.world()
    calibration = ctx.data.calibration_text.samples if ctx.data.calibration_text else None
    layers = None  # Model Optimizer's SparseGPT runs in one call: nothing to resume layer by layer
    if cfg.backend_or_default == "ModelOpt":
        phases = Phases()  # one process (the API keeps ModelOpt jobs to one GPU)
        with ranks.peak_memory(ctx.device) as box, phases("calibrate"):
            modelopt_backend.sparsify(source, out, cfg, calibration=calibration or [], device=ctx.device)
        peak, seconds = box[0], phases.seconds
    else:
        layers = _layers(ctx, source, calibration, sharing)
        peak, seconds = calibrate(cfg, source, out, ranks.share(source, cfg, calibration), layers=layers)
    folder = replace(hf_folder.written(out, source, MODEL_URI), sparsified=cfg)
    method = {**sparsity.describe(cfg), **resume.report(layers)}
    return StepResult(
        folder,
        _notes(method, folder, source, ctx, peak=peak, sharing=sharing, seconds=seconds),
        summary=f"{cfg.pattern} {cfg.method}",
    )


def _layers(
    ctx: StepContext[Any], source: CheckpointFolder, calibration: list[list[int]] | None, sharing: int
) -> resume.Layers | None:
    """The step's layer checkpoints (resume.py), for a calibration one process runs."""
    if calibration is None or sharing > 1:
        return None
    key = resume.content_key(source, calibration, ctx.config.to_wire(), backend_versions())
    return resume.Layers(key, len(calibration), ctx.save_checkpoint, ctx.load_checkpoint, ctx.report_progress)


def _folder(model: Model, ctx: StepContext[Any]) -> CheckpointFolder:
    if not isinstance(model, CheckpointFolder):
        raise StepInvalid(
            f"{ctx.field}: an LLM technique compresses a HuggingFace causal LM folder (format HuggingFace)"
        )
    return model


def _notes(
    method: dict[str, Any],
    folder: CheckpointFolder,
    source: CheckpointFolder,
    ctx: StepContext[Any],
    *,
    peak: int,
    sharing: int,
    seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What report.json says about the step: its method, how the zeros of an llmSparsify step
    (this one or an earlier one) survive in its output, the calibration text it learned from, the
    libraries, what calibration took against the size of the weights it read, and the seconds of
    each of its phases."""
    calibration = ctx.data.calibration_text
    return {
        **method,
        **({"measuredSparsity": sparsity.measure(folder, folder.sparsified)} if folder.sparsified else {}),
        "calibration": calibration.notes if ctx.config.needs.calibration and calibration else None,
        "backends": backend_versions(),
        **ranks.memory_notes(peak, model_size(source.path), ctx.device, sharing),
        **({"stepSeconds": seconds} if seconds is not None else {}),
    }


def calibrate(
    config: LLMQuantizeStep | LLMSparsifyStep,
    source: CheckpointFolder,
    out: Path,
    calibration: list[list[int]] | None,
    *,
    layers: resume.Layers | None = None,
) -> tuple[int, dict[str, float]]:
    """One llm-compressor step from source into out; returns calibration's peak memory and the
    seconds it spent loading, calibrating and saving. Every rank of a torchrun group runs it
    (ranks.follow); `layers` checkpoints and resumes a single process's calibration."""
    if isinstance(config, LLMQuantizeStep) and config.method_or_default == "ModelFree":
        ranks.disband()  # a rank other than 0: rank 0 rounds the weights alone, with no collective to join
        return 0, {}
    if isinstance(config, LLMSparsifyStep):
        what = f"llmSparsify {config.method} {config.pattern}"
        return _oneshot(source, out, lambda model: sparsity.modifiers(config, model), calibration, what, layers=layers)
    what = f"llmQuantize {config.scheme}"
    return _oneshot(source, out, lambda model: recipe.modifiers(config, model), calibration, what, layers=layers)


def _oneshot(
    source: CheckpointFolder,
    out: Path,
    build: Callable[[Any], list[Any]],
    calibration: list[list[int]] | None,
    what: str,
    *,
    layers: resume.Layers | None,
) -> tuple[int, dict[str, float]]:
    """llm-compressor's oneshot with the recipe build(model) makes, saved as compressed-tensors;
    returns the peak memory of calibration and the seconds of each phase. Under torchrun every rank
    runs it on its share of the samples, and the ranks part after the collective save."""

    dataset = None
    if calibration is not None:
        dataset = Dataset.from_dict({"input_ids": calibration, "attention_mask": [[1] * len(x) for x in calibration]})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    phases = Phases()
    with ranks.peak_memory(device) as peak:
        with phases("load"):
            model = ranks.load(source, out.parent / f"{out.name}-offload")
        modifiers = build(model)
        try:
            with recipe.host_only_safe(), phases("calibrate"), resume.around(layers, modifiers):
                oneshot(
                    model=model,
                    recipe=modifiers,
                    dataset=dataset,
                    num_calibration_samples=len(calibration) if calibration else 0,
                    max_seq_length=max((len(x) for x in calibration), default=1) if calibration else None,
                    shuffle_calibration_samples=False,
                    moe_calibrate_all_experts=moe.CALIBRATE_ALL_EXPERTS,
                )
        except ValueError as exc:  # e.g. a group size that does not divide a layer's input size
            raise StepInvalid(f"{what} cannot apply to this model: {exc}") from None
    with phases("save"):
        moe.checkpoint_names(model)
        model.save_pretrained(out, save_compressed=True)
        ranks.disband()
        if ranks.leads():
            hf_folder.tokenizer(source.path, MODEL_URI).save_pretrained(out)
    return peak[0], phases.seconds


def join_ranks(device: str, workdir: Path | None) -> bool:
    """Under torchrun: join the group. Rank 0 returns True and runs the job; every other rank
    calibrates its share of the first step with rank 0 (their collectives must line up) and
    returns False, publishing nothing."""
    ranks.join(device)
    if ranks.leads():
        return True
    ranks.follow(calibrate, workdir)
    return False
