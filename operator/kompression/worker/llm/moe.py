"""Mixture-of-experts models in llmQuantize: every expert calibrated, the routers kept.

- Experts: transformers fuses a layer's experts into 3-D tensors, which no Linear-targeted scheme
  sees. oneshot linearizes them after loading (ranks.load says why not at load) into one Linear per
  expert projection, and its `moe_calibrate_all_experts` runs every expert on every calibration
  token (the router's weights still decide the output), so an expert the text seldom routes to
  gets the same statistics as the others instead of none.
- Routers: a router's scores pick the experts, and a rounding error there sends tokens to other
  experts, so each MoE block's gates (the router and, where the model has one, the shared
  expert's gate) are ignored by the recipe, by name, whatever the model calls them.
- Publishing: the linearized experts are saved one Linear per expert projection, under the names
  the model's own checkpoint layout gives them (checkpoint_names), so that transformers' conversion
  for the model fuses them back as it loads: a Mixtral's `block_sparse_moe.experts.N.w1/w3/w2`, a
  Qwen3-MoE's `mlp.experts.N.gate_proj/up_proj/down_proj`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from llmcompressor.modeling.moe.linearize import get_linearized_moes, get_non_linearized_moes
from transformers.conversion_mapping import extract_weight_conversions_for_model
from transformers.core_model_loading import WeightConverter, WeightRenaming, WeightTransform

# oneshot's switch for running every expert on every token; passed explicitly so that the recipe
# does not depend on the library's default.
CALIBRATE_ALL_EXPERTS = True

# How llm-compressor's linearization splits each fused expert tensor, in the order of the fused
# tensor's halves (ExpertMLPWithGate copies gate_up_proj's first half into gate_proj).
SPLITS: dict[str, tuple[str, ...]] = {
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
    "up_proj": ("up_proj",),
}


def experts(model: torch.nn.Module) -> list[str]:
    """The names of the model's expert collections, fused or linearized (none: a dense model)."""
    return [name for name, _ in [*get_non_linearized_moes(model), *get_linearized_moes(model)]]


def gates(model: torch.nn.Module) -> list[str]:
    """The gates of every MoE block: the block's own leaf modules with a 2-D weight (the router,
    a shared expert's gate), beside its experts."""
    found: list[str] = []
    for name in experts(model):
        block_name = name.rpartition(".")[0]
        block = model.get_submodule(block_name)
        for child_name, child in block.named_children():
            weight = getattr(child, "weight", None)
            leaf = next(child.children(), None) is None
            if leaf and isinstance(weight, torch.Tensor) and weight.dim() == 2:
                found.append(f"{block_name}.{child_name}" if block_name else child_name)
    return found


def checkpoint_names(model: Any) -> None:
    """Before save_pretrained: make the save write the linearized experts under the per-expert names
    from which the model's conversion mapping fuses them at load time.

    transformers saves a model in the layout it was loaded from, by reversing the conversions it used
    (`_weight_conversions`), and its converters that fuse per-expert tensors into one (a Mixtral's
    `experts.*.w1.weight` and `experts.*.w3.weight` into `experts.gate_up_proj`) match nothing once
    llm-compressor has split the experts into Linears named gate_proj, up_proj and down_proj. So
    those converters are replaced by renamings between the linearized names and the names the
    converters read (taken from the model's registered mapping, which also covers a folder whose
    experts were stored fused). Where the two agree (Qwen3-MoE), nothing is renamed. The other
    conversions used at load stay (a Mixtral's `block_sparse_moe` <-> `mlp`), and compressed-tensors
    writes the ignore list in the same names."""
    if not get_linearized_moes(model):
        return
    registered: list[WeightTransform] = extract_weight_conversions_for_model(model) or []
    used: list[WeightTransform] | None = getattr(model, "_weight_conversions", None)
    if used is None:  # not loaded by from_pretrained: transformers would save with the registered mapping
        used = registered
    renamings: list[WeightTransform] = [
        WeightRenaming(rf"\.experts\.(\d+)\.{stored}\.", rf".experts.\1.{linear}.")
        for conversion in registered
        for stored, linear in _per_expert(conversion)
        if stored != linear
    ]
    model._weight_conversions = [c for c in used if not _per_expert(c)] + renamings


def _per_expert(conversion: WeightTransform) -> list[tuple[str, str]]:
    """For a converter that fuses per-expert weights into one of SPLITS' tensors: each stored
    projection name with the linearized name it holds (none for any other conversion)."""
    if not isinstance(conversion, WeightConverter) or len(conversion._original_target_patterns) != 1:
        return []
    fused = re.search(r"experts\.(\w+)$", conversion._original_target_patterns[0])
    linear = SPLITS.get(fused.group(1), ()) if fused else ()
    stored = [re.search(r"experts\.\*\.(\w+)\.weight$", p) for p in conversion._original_source_patterns]
    if not linear or len(stored) != len(linear) or None in stored:
        return []
    return [(match.group(1), name) for match, name in zip(stored, linear, strict=True) if match]
