"""The small training loop shared by pruning's fine-tune and by distillation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from kompression.api.v1alpha1 import FineTune
from kompression.worker.errors import DataError, StepInvalid
from kompression.worker.model import Dataset

# Every model input of a batch (declared order) and its labels.
Batch = tuple[list[torch.Tensor], torch.Tensor]


def labelled(data: Dataset | None, step: str, purpose: str) -> Dataset:
    """The data set, or a StepInvalid that says which data the step needs and why."""
    if data is None:
        raise StepInvalid(f"step {step}: {purpose} needs data.training (labelled inputs)")
    if data.labels is None:
        raise DataError(f"step {step}: {purpose} needs labels in data.training, and the data set has none")
    return data


def check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Cross-entropy indexes the model's outputs (N, classes) by label: a label past them would end
    the step in an IndexError (a device-side assert on a GPU) that says nothing of the data."""
    if logits.ndim >= 2 and len(labels) and (top := int(labels.max())) >= logits.shape[1]:
        raise DataError(
            f"spec.data.training: label {top} is not a class of the model, whose output has {logits.shape[1]} "
            f"(labels 0 to {logits.shape[1] - 1})"
        )


def batches(
    data: Dataset, batch_size: int, device: str, *, shuffle: bool, seed: int = 0, shard: tuple[int, int] = (0, 1)
) -> Iterator[Batch]:
    """Mini-batches as tensors on `device`; `shard` = (rank, world size) gives each rank its own slice."""
    order = np.random.default_rng(seed).permutation(len(data)) if shuffle else np.arange(len(data))
    rank, world = shard
    # Every rank gets the same number of batches, or DistributedDataParallel waits forever.
    order = order[: len(order) - len(order) % world][rank::world]
    labels = data.labels if data.labels is not None else np.zeros(len(data), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield (
            [torch.from_numpy(a).to(device) for a in data.rows(idx)],
            torch.from_numpy(np.ascontiguousarray(labels[idx])).long().to(device),
        )


def fine_tune(
    module: nn.Module,
    data: Dataset,
    cfg: FineTune,
    device: str,
    *,
    progress: Callable[[float, str], None],
    seed: int = 0,
) -> float:
    """Adam + cross-entropy for cfg.epochs; returns the last epoch's mean loss."""
    module.to(device).train()
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=cfg.learningRate)
    loss_fn = nn.CrossEntropyLoss()
    mean_loss = float("nan")
    for epoch in range(cfg.epochs):
        total, count = 0.0, 0
        for x, y in batches(data, cfg.batchSize, device, shuffle=True, seed=seed + epoch):
            optimizer.zero_grad(set_to_none=True)
            logits = module(*x)
            check_labels(logits, y)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        mean_loss = total / max(count, 1)
        progress((epoch + 1) / cfg.epochs, f"epoch {epoch + 1}/{cfg.epochs}: loss {mean_loss:.4f}")
    module.eval()
    return mean_loss


@torch.no_grad()
def accuracy(module: nn.Module, data: Dataset, device: str = "cpu", batch_size: int = 256) -> float:
    """Top-1 accuracy; used by tests and benchmarks (the pipeline has its own evaluation)."""
    if data.labels is None:
        raise DataError("accuracy needs labels")
    module.to(device).eval()
    correct = 0
    for x, y in batches(data, batch_size, device, shuffle=False):
        correct += int((module(*x).argmax(dim=1) == y).sum())
    return correct / len(data)
