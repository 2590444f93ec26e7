"""The llmSparsify step: llm-compressor's SparseGPT and Wanda pruning to 2:4 (never reimplemented here),
and the measure of how far a published folder's weights follow the pattern.

compressed-tensors 0.19 writes no sparse format (its sparse-24-bitmask compressor is gone), so a
pruned model is saved with its zeros in place: dense weights alone, or inside whatever quantized
format a following llmQuantize step picks. The measure therefore reads the published folder back
(dequantized) and counts zeros, rather than trusting a format label.
"""

from __future__ import annotations

from typing import Any

import torch
from compressed_tensors.utils import match_named_modules
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
from llmcompressor.utils.pytorch.module import infer_sequential_targets
from transformers import AutoModelForCausalLM
from transformers.utils.quantization_config import CompressedTensorsConfig

from kompression.api.v1alpha1 import LLMSparsifyStep
from kompression.worker.formats import hf_folder
from kompression.worker.model import CheckpointFolder

# N:M patterns as the fraction of each group of M weights that is zero.
SPARSITY = {"2:4": 0.5}
ALWAYS_IGNORED = ("re:.*lm_head",)


def ignore_list(cfg: LLMSparsifyStep) -> list[str]:
    return [*ALWAYS_IGNORED, *(x for x in cfg.excludeLayers if x not in ALWAYS_IGNORED)]


def modifiers(cfg: LLMSparsifyStep, model: Any) -> list[Any]:
    """The oneshot recipe: SparseGPT or Wanda at the pattern's sparsity, on the decoder layers' Linears.

    The decoder layers are the targets (rather than "Linear"), so that ignore entries match the
    full module names, as llmQuantize's excludeLayers do; with "Linear" as the target, each layer
    is matched as `NAME.` and neither `lm_head` nor an exact name would ever be ignored."""

    modifier = SparseGPTModifier if cfg.method == "SparseGPT" else WandaPruningModifier
    return [
        modifier(
            sparsity=SPARSITY[cfg.pattern],
            mask_structure=cfg.pattern,
            targets=infer_sequential_targets(model),
            ignore=ignore_list(cfg),
        )
    ]


def describe(cfg: LLMSparsifyStep) -> dict[str, Any]:
    """What report.json records about the method."""
    return {
        "method": cfg.method,
        "pattern": cfg.pattern,
        "sparsity": SPARSITY[cfg.pattern],
        "ignored": ignore_list(cfg),
    }


def measure(folder: CheckpointFolder, cfg: LLMSparsifyStep) -> dict[str, Any]:
    """How the folder's pruned Linear layers, loaded back by transformers (quantized weights
    dequantized), follow the pattern: the fraction of zero weights, the fraction of groups of M
    along the input dimension with at least N zeros, and how many layers conform entirely."""

    n, m = (int(x) for x in cfg.pattern.split(":"))
    quantization = folder.config.get("quantization_config")
    model = AutoModelForCausalLM.from_pretrained(
        folder.path,
        dtype=torch.float32,
        **hf_folder.load_options(folder, AutoModelForCausalLM),
        **({"quantization_config": CompressedTensorsConfig(dequantize=True)} if quantization else {}),
    )
    weights = zeros = groups = conforming = layers = whole = 0
    with torch.no_grad():
        for _, module in match_named_modules(model, ["Linear"], ignore=ignore_list(cfg)):
            weight = module.weight[:, : module.weight.shape[1] // m * m]  # a ragged tail holds no whole group
            grouped = (weight.reshape(weight.shape[0], -1, m) == 0).sum(dim=-1) >= n
            weights += weight.numel()
            zeros += int((weight == 0).sum())
            groups += grouped.numel()
            conforming += int(grouped.sum())
            layers += 1
            whole += bool(grouped.all())
    del model
    return {
        "storedAs": quantization["format"] if quantization else "dense",
        "layers": layers,
        "layersConforming": whole,
        "zeroFraction": round(zeros / max(weights, 1), 4),
        "conformingGroupFraction": round(conforming / max(groups, 1), 4),
    }
