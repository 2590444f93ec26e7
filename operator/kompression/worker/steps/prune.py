"""Pruning: zero single weights (masks made permanent), 2:4 patterns, or remove whole channels.

Unstructured and 2:4 masks only speed things up with sparse kernels (2:4 on GPU tensor cores);
structured pruning deletes channels with Torch-Pruning's dependency graph, so every later layer
shrinks with it and the dense model itself gets smaller and faster; the pruned model is then left
in whichever memory layout runs it faster (see layout.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import fx, nn
from torch.nn.utils import prune as torch_prune  # unannotated: its calls carry type: ignore
from torch.sparse import to_sparse_semi_structured

from kompression.api.v1alpha1 import PruneStep
from kompression.worker.errors import DataError, StepInvalid
from kompression.worker.formats import graph_rebuild
from kompression.worker.formats.size import parameter_count
from kompression.worker.model import Dataset, Model, TorchModel
from kompression.worker.steps import graph_sizes, heads
from kompression.worker.steps.layout import apply_faster_layout
from kompression.worker.steps.modules import (
    WEIGHT_LAYERS,
    final_layer,
    named_layers,
    require_torch,
)
from kompression.worker.steps.training import batches, fine_tune, labelled
from kompression.worker.techniques import StepContext, StepResult

Notes = dict[str, float | int | str]
TAYLOR_BATCHES = 4
TAYLOR_BATCH_SIZE = 32
# Removing heads must reproduce the original with those heads zeroed, to float rounding.
HEAD_PARITY = 1e-4


def prune(model: Model, ctx: StepContext[PruneStep]) -> StepResult:
    cfg = ctx.config
    source = require_torch(model, ctx)
    # Never mutate the incoming module: it may be the teacher or an earlier step's output.
    module = copy.deepcopy(source.module).to(ctx.device).eval()
    example = tuple(x.to(ctx.device) for x in source.example_inputs)
    kept = {final_layer(module, example), *named_layers(module, cfg.ignoreLayers, ctx.name)}
    targets: dict[str, nn.Module] = {
        n: m for n, m in module.named_modules() if isinstance(m, WEIGHT_LAYERS) and n not in kept
    }
    if not targets:
        raise StepInvalid(f"step {ctx.name}: nothing to prune once the classifier and ignoreLayers are left out")

    before = parameter_count(module)
    if cfg.method in ("L1Structured", "TaylorStructured"):
        notes = _structured(module, example, kept, cfg, ctx)
        _maybe_fine_tune(module, cfg, ctx)
        notes.update(apply_faster_layout(module, example, ctx))
    else:
        apply_masks = _MASKS[cfg.method]
        apply_masks(targets, cfg.sparsity)
        # Fine-tune while the masks are still reparametrizations, so pruned weights stay zero.
        _maybe_fine_tune(module, cfg, ctx)
        for layer in targets.values():
            torch_prune.remove(layer, "weight")  # type: ignore[no-untyped-call]
        notes = {"prunedLayers": len(targets), "weightSparsity": round(_sparsity(targets.values()), 6)}
        if cfg.method == "SemiStructured24":
            notes.update(_semi_structured_kernels(targets, ctx.device))
    notes.update({"parametersBefore": before, "parametersAfter": parameter_count(module)})
    return StepResult(TorchModel(module, source.example_inputs), notes)


def _l1_unstructured(targets: dict[str, nn.Module], sparsity: float) -> None:
    for layer in targets.values():
        torch_prune.l1_unstructured(layer, "weight", amount=sparsity)  # type: ignore[no-untyped-call]


def _global_magnitude(targets: dict[str, nn.Module], sparsity: float) -> None:
    torch_prune.global_unstructured(
        [(layer, "weight") for layer in targets.values()], pruning_method=torch_prune.L1Unstructured, amount=sparsity
    )


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive weights along the reduction dimension."""
    rows = weight.detach().reshape(weight.shape[0], -1, 4).abs()
    keep = rows.topk(2, dim=-1).indices
    return torch.zeros_like(rows).scatter_(-1, keep, 1.0).reshape(weight.shape)


def _semi_structured(targets: dict[str, nn.Module], sparsity: float) -> None:
    del sparsity  # always 0.5: the API requires it
    for name, layer in list(targets.items()):
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        if weight[0].numel() % 4:
            # A reduction length that is not a multiple of 4 has no 2:4 layout (e.g. a 3x7x7 stem).
            del targets[name]
            continue
        torch_prune.custom_from_mask(layer, "weight", mask_2_4(weight))  # type: ignore[no-untyped-call]


_MASKS: dict[str, Callable[[dict[str, nn.Module], float], None]] = {
    "L1Unstructured": _l1_unstructured,
    "GlobalMagnitude": _global_magnitude,
    "SemiStructured24": _semi_structured,
}


def _semi_structured_kernels(targets: dict[str, nn.Module], device: str) -> Notes:
    if not device.startswith("cuda"):
        return {"sparseKernels": "none: on CPU the 2:4 masks stay dense; the speedup needs a GPU's sparse tensor cores"}
    converted, skipped = 0, []
    for name, layer in targets.items():
        if not isinstance(layer, nn.Linear):
            continue
        try:
            layer.weight = nn.Parameter(to_sparse_semi_structured(layer.weight.detach()), requires_grad=False)
            converted += 1
        except (RuntimeError, ValueError) as exc:  # shape or dtype the sparse kernels do not take
            skipped.append(f"{name} ({str(exc).splitlines()[0][:80]})")
    notes: Notes = {"sparseKernelLayers": converted}
    if skipped:
        notes["sparseKernelSkipped"] = "; ".join(skipped)[:1000]
    return notes


def _sparsity(layers: Iterable[nn.Module]) -> float:
    weights = [w for layer in layers if isinstance(w := layer.weight, torch.Tensor)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(sum(w.numel() for w in weights), 1)


def _structured(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    kept: set[str],
    cfg: PruneStep,
    ctx: StepContext[PruneStep],
) -> Notes:
    taylor = cfg.method == "TaylorStructured"
    channels_before = _channels(module)
    head_notes = _attention_heads(module, example, kept, cfg.sparsity, ctx)
    importance = tp.importance.GroupTaylorImportance() if taylor else tp.importance.GroupMagnitudeImportance(p=1)
    # In a rebuilt torch.export graph the graph spells some widths as sizes ([batch, 768, tokens],
    # the head size in the reshapes into heads). Where the width stays one whole dimension those
    # sizes are rewritten after pruning; the other layers keep their output channels (whole heads
    # went above).
    fixed = graph_rebuild.shape_bound_layers(module)
    resizable = _resizable(module, example, fixed)
    ignored = [m for n, m in module.named_modules() if n in kept] + [
        module.get_submodule(name) for name in fixed if name not in resizable
    ]
    widths = {name: _out_width(module.get_submodule(name)) for name in resizable}
    try:
        pruner = tp.pruner.BasePruner(
            module,
            # A tuple, which Torch-Pruning calls the model with as model(*example): a lone tensor
            # it would first unpack along the batch, and run the model once on the wrong input.
            example,
            importance=importance,
            pruning_ratio=cfg.sparsity,
            ignored_layers=ignored,
        )
        if taylor:
            _accumulate_gradients(module, _taylor_data(ctx), ctx.device)
        pruner.step()
        _resize_widths(module, resizable, widths)
    except (StepInvalid, DataError):
        raise
    except Exception as exc:
        raise StepInvalid(
            f"step {ctx.name}: Torch-Pruning cannot trace the model's channel dependencies "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); {_STRUCTURED_ADVICE}"
        ) from None
    module.zero_grad(set_to_none=True)
    _check_runs(module, example, ctx.name)
    notes: Notes = {"removedChannels": channels_before - _channels(module), "importance": "Taylor" if taylor else "L1"}
    notes.update(head_notes)
    if len(fixed) > len(resizable):
        notes["fixedWidthLayers"] = len(fixed) - len(resizable)
    if resizable:
        notes["resizedWidthLayers"] = len(resizable)
    return notes


def _resizable(
    module: nn.Module, example: tuple[torch.Tensor, ...], fixed: dict[str, str]
) -> dict[str, graph_sizes.Plan]:
    """Of the layers whose width the graph spells as sizes, those whose sizes can follow a new width."""
    if not fixed or not isinstance(module, fx.GraphModule):
        return {}
    sizes = graph_sizes.shapes(module, example)
    plans = {name: graph_sizes.width_plan(module, name, sizes) for name in fixed}
    return {name: plan for name, plan in plans.items() if plan is not None}


def _out_width(layer: nn.Module) -> int:
    if isinstance(layer, nn.modules.conv._ConvNd):
        return int(layer.out_channels)
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[1] if isinstance(layer, nn.Embedding) else weight.shape[0])


def _resize_widths(module: nn.Module, plans: dict[str, graph_sizes.Plan], widths: dict[str, int]) -> None:
    """After Torch-Pruning, set the graph's sizes that hold a pruned layer's width to its new width."""
    if not plans or not isinstance(module, fx.GraphModule):
        return
    done: set[fx.Node] = set()
    for name, plan in plans.items():
        new = _out_width(module.get_submodule(name))
        for node, positions in plan.items():
            if new != widths[name] and node not in done:
                graph_sizes.resize(module.graph, node, positions, widths[name], new)
                done.add(node)
    module.graph.lint()
    module.recompile()


def _attention_heads(
    module: nn.Module, example: tuple[torch.Tensor, ...], kept: set[str], sparsity: float, ctx: StepContext[PruneStep]
) -> Notes:
    """Remove `sparsity` of the heads of every attention block the graph shows (lowest ranked by
    L1 norm or Taylor score, as the method ranks channels), outside the kept layers."""
    if not isinstance(module, fx.GraphModule):
        return {}  # an eager model's attention is Torch-Pruning's, through its own shapes
    blocks = [b for b in heads.attention_blocks(module, example) if not (set(b.sources) | {b.output}) & kept]
    removed = [int(b.heads * sparsity) for b in blocks]
    if not any(removed):
        return {}
    taylor = ctx.config.method == "TaylorStructured"
    if taylor:
        _accumulate_gradients(module, _taylor_data(ctx), ctx.device)
    reference = copy.deepcopy(module)
    for block, count in zip(blocks, removed, strict=True):
        order = head_scores(module, block, taylor).argsort(descending=True)
        keep = sorted(int(h) for h in order[: block.heads - count])
        dropped = sorted(int(h) for h in order[block.heads - count :])
        with torch.no_grad():
            weight = reference.get_submodule(block.output).weight
            assert isinstance(weight, torch.Tensor)
            weight[:, block.columns(dropped)] = 0
        heads.remove_heads(module, block, keep)
    module.zero_grad(set_to_none=True)
    _check_heads(module, reference, example, ctx.name)
    return {"attentionBlocks": len(blocks), "removedHeads": sum(removed)}


def head_scores(module: nn.Module, block: heads.AttentionBlock, taylor: bool) -> torch.Tensor:
    """Each head's importance: the L1 norm of its weights in the projections feeding it and in the
    output projection, or with Taylor the first-order estimate |w * dL/dw| summed over them."""

    def weights(path: str) -> torch.Tensor:
        weight = module.get_submodule(path).weight
        assert isinstance(weight, torch.Tensor)
        if taylor:
            if weight.grad is None:
                raise StepInvalid(f"layer {path} got no gradient: its heads cannot be ranked by Taylor scores")
            return (weight * weight.grad).detach().abs()
        return weight.detach().abs()

    scores = weights(block.output).sum(dim=0).reshape(block.heads, -1).sum(dim=1)
    for source, width in block.sources.items():
        rows = weights(source).sum(dim=1)
        scores = scores + rows.reshape(-1, block.heads, width).sum(dim=(0, 2))
    return scores.cpu()


def _check_heads(module: nn.Module, reference: nn.Module, example: tuple[torch.Tensor, ...], step: str) -> None:
    """The graph without its heads must compute what the original computes with those heads'
    outputs zeroed; anything else means a size was rewritten wrongly."""
    _check_runs(module, example, step)
    with torch.no_grad():
        expected, actual = reference.eval()(*example), module.eval()(*example)
    if not isinstance(expected, torch.Tensor) or not isinstance(actual, torch.Tensor):
        return  # several outputs: running at all is what can be checked cheaply
    scale = float(expected.abs().max()) or 1.0
    diff = float((expected - actual).abs().max()) / scale if expected.shape == actual.shape else math.inf
    if not diff <= HEAD_PARITY:
        raise StepInvalid(
            f"step {step}: after removing attention heads the model differs from the original with those "
            f"heads zeroed by {diff:.3g} (relative); list the attention layers in ignoreLayers"
        )


_STRUCTURED_ADVICE = (
    "list the layers around it in ignoreLayers, or use L1Unstructured, GlobalMagnitude or SemiStructured24, "
    "which keep every shape"
)


def _check_runs(module: nn.Module, example: tuple[torch.Tensor, ...], step: str) -> None:
    """The pruned model must still run: a graph op with sizes fixed for the old widths says where not."""
    with torch.no_grad():
        try:
            module.eval()(*example)
            return
        except Exception as exc:
            culprit = graph_rebuild.failing_node(module, example) or f"{type(exc).__name__}: {str(exc)[:200]}"
    raise StepInvalid(
        f"step {step}: after removing channels the model no longer runs, at {culprit}; {_STRUCTURED_ADVICE}"
    )


def _taylor_data(ctx: StepContext[PruneStep]) -> Dataset:
    for data in (ctx.data.training, ctx.data.calibration, ctx.data.evaluation):
        if data is not None and len(data):
            return data
    raise StepInvalid(
        f"step {ctx.name}: TaylorStructured ranks channels by gradients and needs data "
        "(data.training, data.calibration or data.evaluation)"
    )


def _accumulate_gradients(module: nn.Module, data: Dataset, device: str) -> None:
    """Sum loss gradients over a few batches; unlabelled data uses the model's own predictions."""
    module.eval()  # gradients without disturbing BatchNorm statistics
    module.zero_grad(set_to_none=True)
    loss_fn = nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(batches(data, TAYLOR_BATCH_SIZE, device, shuffle=True)):
        if i == TAYLOR_BATCHES:
            break
        out = module(*x)
        target = y if data.labels is not None else out.detach().argmax(dim=1)
        loss_fn(out, target).backward()


def _channels(module: nn.Module) -> int:
    return sum(
        m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
        for m in module.modules()
        if isinstance(m, WEIGHT_LAYERS)
    )


def _maybe_fine_tune(module: nn.Module, cfg: PruneStep, ctx: StepContext[PruneStep]) -> None:
    if cfg.fineTune is None:
        return
    data = labelled(ctx.data.training, ctx.name, "fineTune")
    fine_tune(module, data, cfg.fineTune, ctx.device, progress=ctx.report_progress, seed=ctx.seed)
