"""llmQuantize method ModelFree: llm-compressor's model_free_ptq, which reads the folder's
safetensors weights tensor by tensor, rounds each to nearest and writes it back as compressed-tensors,
with no model class and no data: for a folder whose architecture transformers does not have yet.

Nothing here imports or builds a transformers model; the folder was vetted as every folder is
(formats/hf_folder.vet), its unknown architecture name only accepted because every step of the job
reads weights alone (api: reads_weights_only).

No class says which tensor is an embedding or a router, so what stays unquantized is found from
names and shapes (llm-compressor's own rule: modules whose names end in `norm` are skipped):
- lm_head, and the step's excludeLayers;
- every 2-D weight with as many rows as the vocabulary (config.json's vocab_size): the token
  embedding and the output head, whatever the architecture calls them (the library would otherwise
  pack an embedding table, which no runtime reads back);
- MoE routers, modules whose names end in `gate` (mlp.gate, block_sparse_moe.gate,
  shared_expert_gate; never gate_proj), kept in full precision as the Oneshot path keeps them;
- 1-D weights (norm scales under names that do not end in `norm`, e.g. ln_1), which are no matrices.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from llmcompressor.entrypoints.model_free import model_free_ptq
from safetensors import safe_open

from kompression.api.v1alpha1 import LLMQuantizeStep
from kompression.worker.errors import ModelError, StepInvalid
from kompression.worker.formats.hf_folder import MODEL_URI
from kompression.worker.llm import recipe
from kompression.worker.model import CheckpointFolder

# Module names ending in "gate": the routers of mixture-of-experts layers.
ROUTERS = "re:.*gate$"
WEIGHT = ".weight"


def quantize(source: CheckpointFolder, out: Path, cfg: LLMQuantizeStep, device: str) -> dict[str, Any]:
    """The folder rounded into out (config.json with its quantization_config, the other files
    copied); returns what report.json says about the method."""
    # The library rounds every .safetensors file under the folder; the vetting read the headers of the
    # top level's (the model's weights) only.
    nested = sorted(p.relative_to(source.path).as_posix() for p in source.path.glob("*/**/*.safetensors"))
    if nested:
        raise ModelError(
            f"{MODEL_URI}: method ModelFree rounds every .safetensors file under the folder, and {nested[0]} is "
            "not one of the model's weight files (those lie at its top level); remove it from the folder"
        )
    found = kept_by_shape(source)
    ignore = [*recipe.ignore_list(cfg), ROUTERS, *found]
    # On GPUs the library spreads the shards over every device the pod has, one thread each.
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    try:
        model_free_ptq(
            source.path,
            out,
            scheme=recipe.scheme(cfg),
            ignore=ignore,
            max_workers=max(1, gpus),
            device=None if gpus else "cpu",
        )
    except ValueError as exc:  # a group size that does not divide a tensor's columns, a tensor not 2-D
        raise StepInvalid(
            f"llmQuantize {cfg.scheme} method ModelFree cannot apply to this model: {exc}; keep that tensor's "
            "module in full precision with excludeLayers"
        ) from None
    return {**recipe.describe(cfg), "method": "ModelFree", "ignored": ignore, "keptByShape": found}


def headers(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in the folder's safetensors files, from their headers alone."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def parameter_count(folder: Path) -> int:
    """The folder's parameters, counted from the safetensors headers (no model class to count them)."""
    return sum(math.prod(shape) for shape in headers(folder).values())


def kept_by_shape(folder: CheckpointFolder) -> list[str]:
    """The modules whose weights stay unquantized for their shape, by exact name: 2-D weights with
    the vocabulary's rows (embeddings, output heads) and 1-D ones the library's `norm` rule misses."""
    vocabulary = _vocab_size(folder.config)
    kept = []
    for name, shape in sorted(headers(folder.path).items()):
        module = name.removesuffix(WEIGHT)
        if module == name:
            continue
        if (len(shape) == 1 and not module.endswith("norm")) or (len(shape) == 2 and shape[0] == vocabulary):
            kept.append(module)
    return kept


def _vocab_size(config: dict[str, Any]) -> int | None:
    """config.json's vocab_size, or its text model's (a composite config nests it in text_config)."""
    for node in (config, config.get("text_config")):
        if isinstance(node, dict) and isinstance(node.get("vocab_size"), int) and node["vocab_size"] > 0:
            return int(node["vocab_size"])
    return None
