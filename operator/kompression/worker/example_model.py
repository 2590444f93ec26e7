"""The quickstart's model: a small CNN trained on the builtin Digits set in a few seconds.

Wide enough that structured pruning plus int8 has weights to remove (about 0.8 M parameters,
3.3 MB), small enough to train on two CPU cores in seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kompression.worker.data.arrays import digits
from kompression.worker.formats import torch_export
from kompression.worker.model import TorchModel
from kompression.worker.storage import objects


class DigitsCNN(nn.Module):
    """8x8 grey image -> 10 logits. Most weights sit in the first dense layer, which keeps the
    compute (and so the training time) small while leaving plenty for pruning and int8 to remove."""

    def __init__(self, width: int = 32, hidden: int = 768, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


def train(seed: int = 0, epochs: int = 12, batch_size: int = 64, lr: float = 1e-3) -> tuple[DigitsCNN, float]:
    """Train on the Digits training split; returns the model (eval mode) and its held-out accuracy."""
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    train_set, eval_set = digits("train"), digits("eval")
    assert train_set.labels is not None and eval_set.labels is not None
    x, y = torch.from_numpy(train_set.inputs["x"]), torch.from_numpy(train_set.labels)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(generator.permutation(len(x)))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        predictions = model(torch.from_numpy(eval_set.inputs["x"])).argmax(dim=1).numpy()
    return model, float((predictions == eval_set.labels).mean())


def build(output: str, seed: int = 0, epochs: int = 12, workdir: Path | None = None) -> tuple[float, int]:
    """Train and save as TorchExport at output (any storage URI); returns (accuracy, size in bytes)."""
    model, accuracy = train(seed=seed, epochs=epochs)
    with tempfile.TemporaryDirectory(prefix="kompression-example-", dir=workdir) as tmp:
        path = torch_export.save_torch_export(
            TorchModel(model, (torch.zeros(1, 1, 8, 8),)), Path(tmp) / "digits-cnn.pt2"
        )
        objects.upload(path, output)
        return accuracy, path.stat().st_size
