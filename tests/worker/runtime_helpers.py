"""Shared helpers for the worker runtime tests: a tiny trained model and job manifests."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from kompression.worker import formats
from kompression.worker.data import digits
from kompression.worker.model import TorchModel


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@functools.cache
def trained_tiny() -> Tiny:
    torch.manual_seed(0)
    ds = digits("train")
    assert ds.labels is not None
    x, y = torch.from_numpy(ds.inputs["x"]), torch.from_numpy(ds.labels)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        for start in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64]).backward()  # type: ignore[no-untyped-call]
            opt.step()
    return model.eval()


def save_tiny(path: Path) -> Path:
    return formats.save_torch_export(TorchModel(trained_tiny(), (torch.zeros(1, 1, 8, 8),)), path)


def job(model_uri: str, output_uri: str, steps: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"uri": model_uri, "format": "TorchExport", "inputs": [{"name": "x", "shape": [-1, 1, 8, 8]}]},
        "data": {"evaluation": {"builtin": "Digits"}},
        "steps": steps or [{"name": "shrink", "quantize": {"method": "DynamicInt8"}}],
        "output": {"uri": output_uri},
        "resources": {"gpus": 0},
        "measurement": {"iterations": 3, "warmupIterations": 1, "threads": 1},
    }
    body.update(spec)
    return {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "t", "namespace": "ns"},
        "spec": body,
    }


def write_job(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def npz(path: Path, inputs: np.ndarray, labels: np.ndarray | None = None) -> Path:
    arrays = {"inputs": inputs} if labels is None else {"inputs": inputs, "labels": labels}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path
