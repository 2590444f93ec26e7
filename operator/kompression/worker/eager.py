"""Turn a loaded torch.export program back into eager layers (nn.Conv2d, nn.Linear, ...).

``ExportedProgram.module()`` runs aten calls on loose parameters: there is no nn.Linear left for
pruning, distillation or quantization to find. For the common case of a chain of standard layers
(each op feeds the next, as in nn.Sequential stacks) we rebuild real modules under their original
names (``features.0`` stays ``features.0``), so the state dict keys match the user's architecture.
Anything else (residual branches, custom ops) keeps the graph module; techniques that need layers
then explain that they found none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Builder = Callable[[list[Any], dict[str, torch.Tensor], Any], nn.Module]


def _conv(args: list[Any], t: dict[str, torch.Tensor], _: Any) -> nn.Module:
    weight = t[args[1]]
    bias = t.get(args[2]) if len(args) > 2 and args[2] is not None else None
    stride, padding, dilation, groups = list(args[3:7]) + [1, 0, 1, 1][len(args[3:7]) :]
    conv = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        (weight.shape[2], weight.shape[3]),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias is not None,
    )
    conv.weight = nn.Parameter(weight.detach().clone())
    if bias is not None:
        conv.bias = nn.Parameter(bias.detach().clone())
    return conv


def _linear(args: list[Any], t: dict[str, torch.Tensor], _: Any) -> nn.Module:
    weight = t[args[1]]
    bias = t.get(args[2]) if len(args) > 2 and args[2] is not None else None
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = nn.Parameter(weight.detach().clone())
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone())
    return layer


def _batch_norm(args: list[Any], t: dict[str, torch.Tensor], input_val: Any) -> nn.Module:
    weight, bias, mean, var = (t.get(a) if a is not None else None for a in args[1:5])
    eps = float(args[7]) if len(args) > 7 else 1e-5
    momentum = float(args[6]) if len(args) > 6 else 0.1
    assert mean is not None and var is not None
    cls = nn.BatchNorm2d if input_val is not None and input_val.dim() == 4 else nn.BatchNorm1d
    bn = cls(mean.shape[0], eps=eps, momentum=momentum, affine=weight is not None)
    if weight is not None and bias is not None:
        bn.weight = nn.Parameter(weight.detach().clone())
        bn.bias = nn.Parameter(bias.detach().clone())
    bn.running_mean = mean.detach().clone()
    bn.running_var = var.detach().clone()
    return bn


def _simple(factory: Callable[..., nn.Module]) -> Builder:
    return lambda args, _t, _v: factory(*args[1:])


OPS: dict[str, Builder] = {
    "aten.conv2d.default": _conv,
    "aten.linear.default": _linear,
    "aten.batch_norm.default": _batch_norm,
    "aten.relu.default": _simple(nn.ReLU),
    "aten.relu_.default": _simple(nn.ReLU),
    "aten.gelu.default": _simple(lambda *a: nn.GELU()),
    "aten.silu.default": _simple(nn.SiLU),
    "aten.sigmoid.default": _simple(nn.Sigmoid),
    "aten.tanh.default": _simple(nn.Tanh),
    "aten.hardtanh.default": _simple(lambda lo=-1.0, hi=1.0: nn.Hardtanh(lo, hi)),
    "aten.max_pool2d.default": _simple(lambda k, s=None, p=0, d=1, c=False: nn.MaxPool2d(k, s or k, p, d, ceil_mode=c)),
    "aten.avg_pool2d.default": _simple(lambda k, s=None, p=0, c=False, i=True, *_: nn.AvgPool2d(k, s or k, p, c, i)),
    "aten.adaptive_avg_pool2d.default": _simple(lambda size: nn.AdaptiveAvgPool2d(tuple(size))),
    "aten.flatten.using_ints": _simple(lambda start=0, end=-1: nn.Flatten(start, end)),
    "aten.dropout.default": _simple(lambda p=0.5, train=False: nn.Dropout(p)),
}
PARAM_OPS = ("aten.conv2d.default", "aten.linear.default", "aten.batch_norm.default")


class Chain(nn.Module):
    """Layers applied in order; parameterized ones keep their original dotted names."""

    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self._order: list[str] = []
        for path, module in layers:
            *parents, leaf = path.split(".")
            owner: nn.Module = self
            for part in parents:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.add_module(leaf, module)
            self._order.append(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for path in self._order:
            x = self.get_submodule(path)(x)
        return x


def rebuild(program: Any) -> nn.Module | None:
    """Eager layers for a chain-shaped exported program, or None when it is not one."""
    signature = program.graph_signature
    names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    state = program.state_dict
    tensors = {placeholder: state[fqn] for placeholder, fqn in names.items() if fqn in state}
    user_inputs = list(signature.user_inputs)
    if len(user_inputs) != 1:
        return None
    previous = user_inputs[0]
    layers: list[tuple[str, nn.Module]] = []
    for index, node in enumerate(n for n in program.graph.nodes if n.op == "call_function"):
        target = str(node.target)
        args = [str(a) if isinstance(a, torch.fx.Node) else a for a in node.args]
        if target not in OPS or not args or args[0] != previous or node.kwargs:
            return None
        if target in PARAM_OPS and args[1] not in tensors:
            return None
        if target not in PARAM_OPS and any(isinstance(a, torch.fx.Node) for a in node.args[1:]):
            return None
        input_val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        module = OPS[target](args, tensors, input_val)
        path = names[args[1]].rsplit(".", 1)[0] if target in PARAM_OPS else f"op{index}"
        layers.append((path, module))
        previous = node.name
    outputs = [n for n in program.graph.nodes if n.op == "output"]
    result = outputs[0].args[0] if outputs else None
    if isinstance(result, (tuple, list)):
        result = result[0] if len(result) == 1 else None
    if not isinstance(result, torch.fx.Node) or result.name != previous or not layers:
        return None
    return Chain(layers).eval()
