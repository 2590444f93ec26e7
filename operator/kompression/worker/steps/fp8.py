"""FP8 (e4m3) Linear layers computed with torch._scaled_mm, the GEMM that uses FP8 tensor cores."""

from __future__ import annotations

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
FP8_MIN_CAPABILITY = (8, 9)


def _scale(t: torch.Tensor) -> torch.Tensor:
    return (t.abs().amax().float() / FP8_MAX).clamp(min=1e-12)


class FP8Linear(nn.Module):
    """Weight stored in fp8 with one scale; activations get a per-tensor scale on every call."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scale = _scale(weight)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = nn.Parameter((weight / scale).to(FP8_DTYPE), requires_grad=False)
        self.weight_scale: torch.Tensor
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        x_scale = _scale(flat)
        out_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32
        out = torch._scaled_mm(
            (flat / x_scale).to(FP8_DTYPE),
            self.weight.t(),  # column-major, as _scaled_mm requires of its second operand
            scale_a=x_scale,
            scale_b=self.weight_scale,
            out_dtype=out_dtype,
        )
        if self.bias is not None:
            out = out + self.bias.to(out_dtype)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)


def convert_to_fp8(module: nn.Module, exclude: set[str]) -> tuple[int, list[str]]:
    """Swap eligible Linear layers in place; returns (converted count, names left in float)."""
    converted, skipped = 0, []
    for name, child in list(module.named_modules()):
        if not isinstance(child, nn.Linear) or name in exclude:
            continue
        if child.in_features % 16 or child.out_features % 16:
            skipped.append(name)
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name), attr, FP8Linear(child))
        converted += 1
    return converted, skipped
