"""The llmSparsify step: llm-compressor's SparseGPT and Wanda pruning to 2:4 (never reimplemented here),
and the measure of how far a published folder's weights follow the pattern.

compressed-tensors 0.19 writes no sparse format (its sparse-24-bitmask compressor is gone), so a
pruned model is saved with its zeros in place: dense weights alone, or inside whatever quantized
format a following llmQuantize step picks; vLLM, which removed its 2:4 kernels, serves it dense.
Backend ModelOpt (modelopt_backend.sparsify) prunes for TensorRT-LLM instead. The measure therefore
reads the published folder back and counts zeros, rather than trusting a format label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.utils import match_named_modules
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
from llmcompressor.utils.pytorch.module import infer_sequential_targets
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.utils.quantization_config import CompressedTensorsConfig

from kompression.api.v1alpha1 import LLMSparsifyStep
from kompression.worker.formats import hf_folder
from kompression.worker.model import CheckpointFolder

# N:M patterns as the fraction of each group of M weights that is zero.
SPARSITY = {"2:4": 0.5}
ALWAYS_IGNORED = ("re:.*lm_head",)
# What a Model Optimizer checkpoint holds beside config.json.
MODELOPT_CONFIG = "hf_quant_config.json"


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
        "backend": "modelopt" if cfg.backend_or_default == "ModelOpt" else "llmcompressor",
        "pattern": cfg.pattern,
        "sparsity": SPARSITY[cfg.pattern],
        "ignored": ignore_list(cfg),
    }


def conforming(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """For each group of m consecutive weights along the input dimension, whether at least n are zero
    (a ragged tail holds no whole group)."""
    weight = weight[:, : weight.shape[1] // m * m]
    return (weight.reshape(weight.shape[0], -1, m) == 0).sum(dim=-1) >= n


def stored_weights(folder: Path, keep: Callable[[str], bool]) -> Iterator[tuple[str, torch.Tensor]]:
    """The folder's safetensors weights that `keep` names, as stored (dense or FP8) and read as float:
    what a server's sparse kernels would see, not a dequantized approximation."""
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                if keep(key):
                    yield key, f.get_tensor(key).float()


def named_by(module: str, names: Sequence[str]) -> bool:
    """Whether a full module name is one of `names` (full names, or their trailing parts), as
    Model Optimizer's excluded modules are given."""
    return any(module == x or module.endswith("." + x) for x in names)


def _decoder_linear(excluded: list[str]) -> Callable[[str], bool]:
    """A decoder layer's weight (under `.layers.N.`) that no exclusion names."""

    def keep(key: str) -> bool:
        return key.endswith(".weight") and ".layers." in key and not named_by(key.removesuffix(".weight"), excluded)

    return keep


def measure(folder: CheckpointFolder, cfg: LLMSparsifyStep) -> dict[str, Any]:
    """How the folder's pruned Linear layers follow the pattern: the fraction of zero weights, the
    fraction of groups of M along the input dimension with at least N zeros, and how many layers
    conform entirely. A compressed-tensors folder is loaded back by transformers (quantized weights
    dequantized); a Model Optimizer checkpoint (hf_quant_config.json), which transformers cannot
    load, is read tensor by tensor as stored."""

    n, m = (int(x) for x in cfg.pattern.split(":"))
    quantization = folder.config.get("quantization_config")
    if (folder.path / MODELOPT_CONFIG).exists():
        keep = _decoder_linear(cfg.excludeLayers)
        weights = [w for _, w in stored_weights(folder.path, keep) if w.dim() == 2]
        return _figures(weights, n, m, f"ModelOpt {quantization.get('quant_algo') if quantization else 'checkpoint'}")
    model = AutoModelForCausalLM.from_pretrained(
        folder.path,
        dtype=torch.float32,
        **hf_folder.load_options(folder, AutoModelForCausalLM),
        **({"quantization_config": CompressedTensorsConfig(dequantize=True)} if quantization else {}),
    )
    with torch.no_grad():
        weights = [module.weight for _, module in match_named_modules(model, ["Linear"], ignore=ignore_list(cfg))]
        figures = _figures(weights, n, m, quantization["format"] if quantization else "dense")
    del model
    return figures


def _figures(weights: list[torch.Tensor], n: int, m: int, stored_as: str) -> dict[str, Any]:
    count = zeros = groups = conforming_groups = whole = 0
    for weight in weights:
        grouped = conforming(weight, n, m)
        count += weight.numel()
        zeros += int((weight == 0).sum())
        groups += grouped.numel()
        conforming_groups += int(grouped.sum())
        whole += bool(grouped.all())
    return {
        "storedAs": stored_as,
        "layers": len(weights),
        "layersConforming": whole,
        "zeroFraction": round(zeros / max(count, 1), 4),
        "conformingGroupFraction": round(conforming_groups / max(groups, 1), 4),
    }
