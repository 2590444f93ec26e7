"""Low-rank factorization: weights become thin factors, so the dense model has fewer parameters and MACs.

SVD turns a Linear layer (or a 1x1 convolution) W (m x n) into two layers of rank r,
W ~ (U sqrt(S)) (sqrt(S) V^T), with the bias on the second; splitting S evenly gives both factors
alike ranges, which a later int8 quantization of the factors rewards. With calibration data SVD
whitens first (SVD-LLM): it truncates W R, where R R^T is the second moment of the layer's inputs
on that data, and folds R^-1 back into the first factor. That minimises the error of the layer's
outputs on such inputs, ||(W - W_r) X||, instead of the weight's, which is what a pretrained
model's quality depends on: directions its inputs never take cost nothing to drop.

Tucker2 decomposes the output- and input-channel modes of a kxk convolution with tensorly's
partial_tucker (HOOI), giving a 1x1 (Cin -> r_in) -> kxk core (r_in -> r_out) -> 1x1 (r_out -> Cout)
sequence. A layer is left whole when its chosen rank would not save both parameters and MACs: past
that break-even the factors only cost more.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TypeGuard

import tensorly
import torch
from tensorly.decomposition import partial_tucker
from torch import nn

from kompression.api.v1alpha1 import LowRankStep
from kompression.worker.errors import DataError, StepInvalid
from kompression.worker.formats.size import parameter_count
from kompression.worker.model import Dataset, Model, TorchModel
from kompression.worker.steps.layout import apply_faster_layout
from kompression.worker.steps.modules import WEIGHT_LAYERS, require_torch
from kompression.worker.steps.training import batches, fine_tune, labelled
from kompression.worker.techniques import StepContext, StepResult

Notes = dict[str, float | int | str]
LISTING_CHARS = 800  # notes end up in status.steps[].message, which holds 4096 characters
SCOPES = {"SVD": "Linear layers and 1x1 Conv2d layers", "Tucker2": "kxk Conv2d layers (k > 1)"}
# Added to the second moment's diagonal, relative to its mean, before its Cholesky factor is taken
# (GPTQ damps its Hessian alike): inputs that never take some direction (a dead channel, fewer tokens
# than features) leave it singular, and the damping keeps a little of the plain SVD's care for it.
DAMPING = 1e-2
# A model input of this name marks a sequence's padding (0), as transformers' tokenizers make it.
MASK_INPUT = "attention_mask"


@dataclass
class Calls:
    """Where a layer ran on the example input: output positions (tokens or pixels) and, for
    convolutions, input pixels (Tucker2's first 1x1 runs before the kxk core's stride)."""

    inputs: int = 0
    outputs: int = 0


@dataclass
class Plan:
    name: str
    ranks: tuple[int, ...]  # (r,) for SVD; (r_out, r_in) for Tucker2
    full: tuple[int, ...]
    params: tuple[int, int]  # weights before, after
    macs: tuple[int, int]  # at batch 1, before, after

    @property
    def saves(self) -> bool:
        return self.params[1] < self.params[0] and self.macs[1] < self.macs[0]

    def why_whole(self) -> str:
        ranks = "x".join(str(r) for r in self.ranks)
        full = "x".join(str(f) for f in self.full)
        lost = [
            f"{what} {after:,} vs {before:,}"
            for what, (before, after) in (("params", self.params), ("MACs", self.macs))
            if after >= before
        ]
        return f"rank {ranks} of {full} saves nothing ({', '.join(lost)})"


def low_rank(model: Model, ctx: StepContext[LowRankStep]) -> StepResult:
    cfg = ctx.config
    source = require_torch(model, ctx)
    # Refused before any decomposition work, not after it.
    training = labelled(ctx.data.training, ctx.name, "fineTune") if cfg.fineTune is not None else None
    # Never mutate the incoming module: it may be the teacher or an earlier step's output.
    module = copy.deepcopy(source.module).to(ctx.device).eval()
    example = tuple(x.to(ctx.device) for x in source.example_inputs)
    calibration = _whitening_data(ctx)
    layers = select_layers(module, cfg, ctx.name)
    calls = _calls(module, layers, example)
    candidates, whole = _factorizable(layers, calls, _shared_weights(module))
    roots = (
        {n: cholesky_root(m) for n, m in second_moments(module, candidates, calibration, ctx.device, ctx.name).items()}
        if calibration is not None
        else {}
    )
    plans: list[Plan] = []
    for name, layer in candidates.items():
        plan = plan_layer(name, layer, cfg, calls[name], roots.get(name))
        if plan.saves:
            plans.append(plan)
        else:
            whole[name] = plan.why_whole()

    params_before, macs_before = parameter_count(module), layer_macs(module, example)
    with torch.no_grad():
        for index, plan in enumerate(plans):
            factored = factorize(layers[plan.name], cfg.method, plan.ranks, roots.get(plan.name))
            replace_module(module, plan.name, factored)
            ctx.report_progress((index + 1) / len(plans) * (0.5 if cfg.fineTune else 1.0), f"factorized {plan.name}")
    macs_after = _runs_after_factorizing(module, example, ctx.name)
    if cfg.fineTune is not None and training is not None and plans:
        progress = ctx.report_progress
        fine_tune(
            module, training, cfg.fineTune, ctx.device, progress=lambda f, m: progress(0.5 + f / 2, m), seed=ctx.seed
        )
    notes: Notes = {
        "method": cfg.method,
        **({"activations": "Ignore" if calibration is None else "Whiten"} if cfg.method == "SVD" else {}),
        **({"calibrationSamples": len(calibration)} if calibration is not None else {}),
        "factorizedLayers": len(plans),
        "leftWholeLayers": len(whole),
        "parametersBefore": params_before,
        "parametersAfter": parameter_count(module),
        "parameterRatio": round(parameter_count(module) / max(params_before, 1), 4),
        "macRatio": round(macs_after / max(macs_before, 1), 4),  # of the Linear and convolution layers
    }
    if plans:
        notes["ranks"] = listing(
            [f"{p.name} {'x'.join(map(str, p.ranks))}/{'x'.join(map(str, p.full))}" for p in plans]
        )
    if whole:
        notes["leftWhole"] = listing([f"{name}: {why}" for name, why in whole.items()])
    if any(isinstance(layers[p.name], nn.Conv2d) for p in plans):
        notes.update(apply_faster_layout(module, example, ctx))
    return StepResult(TorchModel(module.eval(), source.example_inputs), notes)


def _whitening_data(ctx: StepContext[LowRankStep]) -> Dataset | None:
    """The calibration data SVD whitens by, or None when it truncates the weights alone."""
    data = ctx.data.calibration if ctx.data.calibration is not None and len(ctx.data.calibration) else None
    if not ctx.config.whitens(data is not None):
        return None
    if data is None:
        raise StepInvalid(
            f"step {ctx.name}: lowRank.activations Whiten needs data.calibration, the inputs whose second moment "
            "it whitens by; add a calibration data set or set activations: Ignore"
        )
    return data


# --------------------------------------------------------------------------------------------
# which layers, at which ranks


def _factorizable(
    layers: dict[str, nn.Linear | nn.Conv2d], calls: Mapping[str, Calls], shared: set[int]
) -> tuple[dict[str, nn.Linear | nn.Conv2d], dict[str, str]]:
    """The layers a factorization can replace, and why each of the others stays whole."""
    candidates: dict[str, nn.Linear | nn.Conv2d] = {}
    whole: dict[str, str] = {}
    for name, layer in layers.items():
        if name not in calls:
            whole[name] = "not called by forward() (its weight is used some other way)"
        elif id(layer.weight) in shared:
            whole[name] = "weight shared with another module (tied)"
        elif isinstance(layer, nn.Conv2d) and layer.groups != 1:
            whole[name] = f"grouped convolution (groups={layer.groups})"
        else:
            candidates[name] = layer
    return candidates, whole


def in_scope(layer: nn.Module, method: str) -> TypeGuard[nn.Linear | nn.Conv2d]:
    if method == "SVD":
        return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1))
    return isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1)


def select_layers(module: nn.Module, cfg: LowRankStep, step: str) -> dict[str, nn.Linear | nn.Conv2d]:
    """The method's layers matching includeLayers (all when empty) and no excludeLayers pattern;
    a pattern that matches nothing is refused, since it is most likely a typo."""
    weighted = [n for n, m in module.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    scoped = {n: m for n, m in module.named_modules() if in_scope(m, cfg.method)}
    for field, patterns, names in (
        ("includeLayers", cfg.includeLayers, list(scoped)),
        ("excludeLayers", cfg.excludeLayers, weighted),
    ):
        unmatched = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
        if unmatched:
            raise StepInvalid(
                f"step {step}: lowRank.{field} {', '.join(unmatched)} match no "
                f"{'layer ' + cfg.method + ' factorizes' if field == 'includeLayers' else 'Linear or Conv layer'}; "
                f"the candidates are: {listing(names) or 'none'}"
            )
    chosen = {
        n: m
        for n, m in scoped.items()
        if (not cfg.includeLayers or any(fnmatchcase(n, p) for p in cfg.includeLayers))
        and not any(fnmatchcase(n, p) for p in cfg.excludeLayers)
    }
    if not chosen:
        raise StepInvalid(
            f"step {step}: nothing to factorize: {cfg.method} applies to {SCOPES[cfg.method]}, and the model has "
            f"none{' left once includeLayers and excludeLayers are applied' if scoped else ''}"
        )
    return chosen


def rank_for(singular_values: torch.Tensor, cfg: LowRankStep) -> int:
    """The rank rankRatio or energy asks for, from a layer's (or mode's) singular values."""
    full = int(singular_values.numel())
    if cfg.rankRatio is not None:
        return max(1, min(full, math.ceil(cfg.rankRatio * full - 1e-9)))
    assert cfg.energy is not None  # the API's rule: exactly one of the two is set
    squares = singular_values.double().pow(2)
    total = float(squares.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(squares, 0) / total
    return max(1, min(full, int((kept < cfg.energy - 1e-12).sum()) + 1))


def plan_layer(
    name: str, layer: nn.Linear | nn.Conv2d, cfg: LowRankStep, calls: Calls, root: torch.Tensor | None = None
) -> Plan:
    """The layer's ranks and what they cost; with SVD's whitening `root`, energy is of the whitened
    weight's singular values, the ones truncated."""
    weight = layer.weight.detach().float()
    out_ch, in_ch = weight.shape[0], weight.shape[1]
    if cfg.method == "SVD":
        rank = rank_for(torch.linalg.svdvals(_whitened(weight.reshape(out_ch, in_ch), root)), cfg)
        params = (out_ch * in_ch, rank * (out_ch + in_ch))
        macs = (calls.outputs * out_ch * in_ch, calls.outputs * rank * (out_ch + in_ch))
        return Plan(name, (rank,), (min(out_ch, in_ch),), params, macs)
    kernel = weight[0, 0].numel()
    out_rank = rank_for(torch.linalg.svdvals(weight.reshape(out_ch, -1)), cfg)
    in_rank = rank_for(torch.linalg.svdvals(weight.transpose(0, 1).reshape(in_ch, -1)), cfg)
    core = in_rank * out_rank * kernel
    params = (out_ch * in_ch * kernel, in_ch * in_rank + core + out_rank * out_ch)
    macs = (
        calls.outputs * out_ch * in_ch * kernel,
        calls.inputs * in_ch * in_rank + calls.outputs * (core + out_rank * out_ch),
    )
    return Plan(name, (out_rank, in_rank), (min(out_ch, in_ch * kernel), min(in_ch, out_ch * kernel)), params, macs)


# --------------------------------------------------------------------------------------------
# the factors and the layers built from them


def second_moments(
    module: nn.Module, layers: Mapping[str, nn.Linear | nn.Conv2d], data: Dataset, device: str, step: str
) -> dict[str, torch.Tensor]:
    """Each layer's X^T X / rows over the calibration data (n x n, n its input features or channels):
    every token of a sequence and every pixel a 1x1 convolution reads is a row."""
    sums: dict[str, torch.Tensor] = {}
    rows: Counter[str] = Counter()
    names = {id(m): n for n, m in layers.items()}
    mask_at = list(data.inputs).index(MASK_INPUT) if MASK_INPUT in data.inputs else None
    mask: torch.Tensor | None = None

    def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0].detach().float()
        if isinstance(layer, nn.Conv2d):
            # A strided 1x1 reads every stride-th pixel; padding only adds zero rows, which add nothing.
            x = x[:, :, :: layer.stride[0], :: layer.stride[1]].movedim(1, -1)
        elif mask is not None and x.shape[:-1] == mask.shape:
            x = x[mask.bool()]
        x = x.reshape(-1, x.shape[-1])
        name = names[id(layer)]
        if name not in sums:
            sums[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        sums[name].addmm_(x.T, x)
        rows[name] += x.shape[0]

    for inputs, _ in batches(data, data.batch_size, device, shuffle=False):
        mask = None if mask_at is None else inputs[mask_at]
        _forward_with_hooks(module, inputs, layers, record)
    overflown = [name for name, total in sums.items() if not torch.isfinite(total).all()]
    if overflown:
        raise DataError(
            f"step {step}: on data.calibration the inputs of {listing(overflown)} are not finite (NaN or "
            "infinite values, or beyond float32), so nothing can be whitened by them; check the calibration "
            "data, or set lowRank.activations: Ignore"
        )
    return {name: total / rows[name] for name, total in sums.items()}


def cholesky_root(moment: torch.Tensor) -> torch.Tensor:
    """Lower-triangular R with R R^T the second moment (float64), damped until it is positive definite."""
    moment = moment.double()
    eye = torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)
    damping = DAMPING * max(float(moment.diagonal().mean()), 1e-12)
    while True:  # ends: finite (second_moments checks) and damped ever more, the moment turns definite
        root: torch.Tensor
        root, info = torch.linalg.cholesky_ex(moment + damping * eye)
        if int(info) == 0:
            return root
        damping *= 10


def _whitened(weight: torch.Tensor, root: torch.Tensor | None) -> torch.Tensor:
    return weight.double() if root is None else weight.double() @ root.to(weight.device)


def svd_factors(weight: torch.Tensor, rank: int, root: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) with second @ first the best rank-`rank` approximation of weight (m x n):
    first = sqrt(S) V^T (rank x n), second = U sqrt(S) (m x rank). With `root` (cholesky_root of the
    inputs' second moment) it is the SVD of weight @ root, first = sqrt(S) V^T root^-1: the rank-`rank`
    weight whose outputs on those inputs are closest to the layer's."""
    u, s, vh = torch.linalg.svd(_whitened(weight, root), full_matrices=False)
    scale = s[:rank].sqrt()
    first = scale[:, None] * vh[:rank]
    if root is not None:
        first = torch.linalg.solve_triangular(root.to(first.device), first, upper=False, left=False)
    return first.float(), (u[:, :rank] * scale[None, :]).float()


def tucker2_factors(weight: torch.Tensor, ranks: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(core r_out x r_in x kh x kw, out_factor Cout x r_out, in_factor Cin x r_in) from tensorly's
    partial Tucker decomposition of the two channel modes (its defaults: SVD init, HOOI iterations)."""
    with tensorly.backend_context("pytorch"):
        (core, (out_factor, in_factor)), _ = partial_tucker(weight.detach().float(), rank=list(ranks), modes=[0, 1])
    return core, out_factor, in_factor


def factorize(layer: nn.Module, method: str, ranks: tuple[int, ...], root: torch.Tensor | None = None) -> nn.Sequential:
    """The layer as a sequence of thinner layers, on the layer's device and dtype; SVD whitens by
    `root` when given (see svd_factors)."""
    if isinstance(layer, nn.Linear):
        built = _svd_linear(layer, ranks[0], root)
    elif isinstance(layer, nn.Conv2d) and method == "SVD":
        built = _svd_conv(layer, ranks[0], root)
    elif isinstance(layer, nn.Conv2d):
        built = _tucker2_conv(layer, (ranks[0], ranks[1]))
    else:
        raise TypeError(f"{type(layer).__name__} cannot be factorized")
    return built.to(device=layer.weight.device, dtype=layer.weight.dtype)


def _svd_linear(layer: nn.Linear, rank: int, root: torch.Tensor | None) -> nn.Sequential:
    first_w, second_w = svd_factors(layer.weight.detach(), rank, root)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    first.weight.data.copy_(first_w)
    second.weight.data.copy_(second_w)
    if layer.bias is not None and second.bias is not None:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def _svd_conv(layer: nn.Conv2d, rank: int, root: torch.Tensor | None) -> nn.Sequential:
    first_w, second_w = svd_factors(layer.weight.detach().flatten(1), rank, root)
    # Stride, padding and dilation stay on the first 1x1: with no bias its padded zeros stay zero.
    first = _conv_like(layer, layer.in_channels, rank, (1, 1), first_w, bias=False)
    second = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None)
    second.weight.data.copy_(second_w[:, :, None, None])
    if layer.bias is not None and second.bias is not None:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def _tucker2_conv(layer: nn.Conv2d, ranks: tuple[int, int]) -> nn.Sequential:
    core, out_factor, in_factor = tucker2_factors(layer.weight, ranks)
    out_rank, in_rank = ranks
    # A 1x1 channel mix commutes with the core's padding (of any mode), so the core takes the
    # original stride, padding and dilation.
    first = nn.Conv2d(layer.in_channels, in_rank, 1, bias=False)
    first.weight.data.copy_(in_factor.t()[:, :, None, None])
    middle = _conv_like(layer, in_rank, out_rank, layer.kernel_size, core, bias=False)
    last = nn.Conv2d(out_rank, layer.out_channels, 1, bias=layer.bias is not None)
    last.weight.data.copy_(out_factor[:, :, None, None])
    if layer.bias is not None and last.bias is not None:
        last.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, middle, last)


def _conv_like(
    layer: nn.Conv2d, in_ch: int, out_ch: int, kernel: tuple[int, ...], weight: torch.Tensor, *, bias: bool
) -> nn.Conv2d:
    conv = nn.Conv2d(
        in_ch,
        out_ch,
        kernel,  # type: ignore[arg-type]  # Conv2d's kernel_size is a 2-tuple at run time
        # Conv2d's own attributes are 2-tuples (or a padding string) at run time, typed loosely.
        stride=layer.stride,  # type: ignore[arg-type]
        padding=layer.padding,  # type: ignore[arg-type]
        dilation=layer.dilation,  # type: ignore[arg-type]
        padding_mode=layer.padding_mode,
        bias=bias,
    )
    conv.weight.data.copy_(weight.reshape(conv.weight.shape))
    return conv


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, new)


# --------------------------------------------------------------------------------------------
# measuring the model


def layer_macs(module: nn.Module, example: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of every Linear and convolution layer on the example input."""
    total = 0

    def count(layer: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        total += output.numel() * (weight[0].numel() if isinstance(layer, nn.modules.conv._ConvNd) else weight.shape[1])

    _forward_with_hooks(
        module, example, {n: m for n, m in module.named_modules() if isinstance(m, WEIGHT_LAYERS)}, count
    )
    return total


def _calls(
    module: nn.Module, layers: dict[str, nn.Linear | nn.Conv2d], example: Sequence[torch.Tensor]
) -> dict[str, Calls]:
    calls: dict[str, Calls] = {}
    names = {id(m): n for n, m in layers.items()}

    def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen = calls.setdefault(names[id(layer)], Calls())
        if isinstance(layer, nn.Conv2d):
            seen.inputs += inputs[0].numel() // layer.in_channels
            seen.outputs += output.numel() // layer.out_channels
        else:
            seen.outputs += output.numel() // output.shape[-1]

    _forward_with_hooks(module, example, layers, record)
    return calls


Hook = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]


def _forward_with_hooks(
    module: nn.Module, example: Sequence[torch.Tensor], layers: Mapping[str, nn.Module], hook: Hook
) -> None:
    handles = [m.register_forward_hook(hook) for m in layers.values()]
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for handle in handles:
            handle.remove()


def _shared_weights(module: nn.Module) -> set[int]:
    """ids of parameters that more than one module holds (tied weights)."""
    owners = Counter(id(p) for m in module.modules() for p in m.parameters(recurse=False))
    return {key for key, count in owners.items() if count > 1}


def _runs_after_factorizing(module: nn.Module, example: Sequence[torch.Tensor], step: str) -> int:
    try:
        return layer_macs(module, example)
    except Exception as exc:  # whatever the model's own code raises on the new layers
        raise StepInvalid(
            f"step {step}: the model fails once its layers are factorized ({' '.join(str(exc).split())[:300]}); "
            "its code likely reads a layer's weight directly: leave that layer whole with lowRank.excludeLayers"
        ) from exc


def listing(items: Sequence[str], limit: int = LISTING_CHARS) -> str:
    """Items joined with '; ', cut to about `limit` characters with a count of the rest."""
    text = ""
    for index, item in enumerate(items):
        candidate = f"{text}; {item}" if text else item
        if len(candidate) > limit:
            return f"{text}; ... and {len(items) - index} more"
        text = candidate
    return text
