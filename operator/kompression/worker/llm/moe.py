"""Mixture-of-experts models in llmQuantize: every expert calibrated, the routers kept.

- Experts: transformers fuses a layer's experts into 3-D tensors, which no Linear-targeted scheme
  sees. llm-compressor's load context (ranks.load) linearizes them into one Linear per expert
  projection, and oneshot's `moe_calibrate_all_experts` runs every expert on every calibration
  token (the router's weights still decide the output), so an expert the text seldom routes to
  gets the same statistics as the others instead of none.
- Routers: a router's scores pick the experts, and a rounding error there sends tokens to other
  experts, so each MoE block's gates (the router and, where the model has one, the shared
  expert's gate) are ignored by the recipe, by name, whatever the model calls them.
"""

from __future__ import annotations

import torch
from llmcompressor.modeling.moe.linearize import get_linearized_moes, get_non_linearized_moes

# oneshot's switch for running every expert on every token; passed explicitly so that the recipe
# does not depend on the library's default.
CALIBRATE_ALL_EXPERTS = True


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
