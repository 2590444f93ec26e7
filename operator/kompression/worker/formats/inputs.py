"""The model's declared inputs: example tensors of their shapes and dtypes, and the check that the model takes them."""

from __future__ import annotations

import torch

from kompression.api.v1alpha1 import ModelInput
from kompression.worker.errors import ModelError, brief
from kompression.worker.model import Model, TorchModel

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
}


def example_inputs(inputs: list[ModelInput], batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Zero tensors matching the declared inputs; the first -1 is the batch, other -1s become 1."""
    out = []
    for spec in inputs:
        shape = [batch if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(spec.shape)]
        out.append(torch.zeros(shape, dtype=TORCH_DTYPES[spec.dtype]))
    return tuple(out)


def check_inputs(model: Model, inputs: list[ModelInput], uri: str) -> None:
    """Run an eager model once on declared-shape zeros: a mismatch becomes a ModelError naming the input."""
    if not isinstance(model, TorchModel):
        return
    try:
        with torch.no_grad():
            model.module(*example_inputs(inputs, batch=2))
    except Exception as exc:
        shapes = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise ModelError(
            f"{uri}: the model rejects inputs of the declared shapes ({shapes}; -1 tried as 2 for the batch, "
            f"1 elsewhere): {brief(exc)}. Fix spec.model.inputs to match the model"
        ) from None


def compare_shapes(uri: str, declared: ModelInput, actual: list[int]) -> None:
    mismatch = len(actual) != len(declared.shape) or any(
        a not in (d, -1) and d != -1 for a, d in zip(actual, declared.shape, strict=False)
    )
    if mismatch:
        raise ModelError(
            f"{uri}: input {declared.name!r} is declared in spec.model.inputs with shape {declared.shape} "
            f"but the model expects {actual} (-1 = dynamic)"
        )
