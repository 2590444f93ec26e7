"""Small facts about torch modules that several techniques need."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kompression.worker.errors import StepInvalid
from kompression.worker.formats import graph_rebuild
from kompression.worker.model import Model, TorchModel
from kompression.worker.techniques import StepContext

WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def require_torch(model: Model, ctx: StepContext[Any]) -> TorchModel:
    if not isinstance(model, TorchModel):
        raise StepInvalid(
            f"step {ctx.name}: {ctx.kind} needs a PyTorch model, but the model reaching it is "
            f"{type(model).__name__}; put {ctx.kind} before the steps that convert to ONNX or TensorRT"
        )
    return model


@torch.no_grad()
def final_layer(module: nn.Module, example_inputs: Sequence[torch.Tensor]) -> str:
    """Name of the last Linear/Conv layer that runs in forward(): the classifier, never pruned.

    Registration order can differ from execution order, so the forward pass decides.
    """
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
        for name, m in module.named_modules()
        if isinstance(m, WEIGHT_LAYERS)
    ]
    was_training = module.training
    try:
        module.eval()
        module(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    if not order:
        loose = graph_rebuild.loose_weights(module)
        if loose:
            raise StepInvalid(
                f"the model computes with weights that are not layers: {', '.join(loose[:5])}"
                f"{'...' if len(loose) > 5 else ''}; layer techniques need nn.Linear/nn.Conv layers, which the "
                "loader rebuilds from aten.linear and aten.conv calls: export with torch.export.export without "
                "run_decompositions(), or save the weights as SafeTensors with `architecture`"
            )
        raise StepInvalid("the model has no Linear or Conv layer to compress")
    return order[-1]


def named_layers(module: nn.Module, names: Sequence[str], step: str) -> dict[str, nn.Module]:
    """Modules by name, or StepInvalid naming the ones that do not exist."""
    modules = dict(module.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        known = ", ".join(n for n, m in modules.items() if isinstance(m, WEIGHT_LAYERS))
        raise StepInvalid(f"step {step}: no layer named {', '.join(missing)}; the model's layers are: {known}")
    return {n: modules[n] for n in names}
