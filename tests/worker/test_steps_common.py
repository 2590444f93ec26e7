"""Shared helpers for the step tests (digits data, a small CNN, a StepContext), and tests of the
small shared step helpers."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from kompression.api.v1alpha1 import FineTune
from kompression.worker.model import Dataset, DataSets, Model, TorchModel
from kompression.worker.steps.base import StepContext, standalone_context
from kompression.worker.steps.modules import final_layer
from kompression.worker.steps.onnx_io import module_path_of_node
from kompression.worker.steps.prune import mask_2_4
from kompression.worker.steps.training import accuracy, fine_tune


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run each step test on one torch thread: these tiny models train no faster on two, and on a
    shared 2-core machine two threads wait at OpenMP barriers whenever another process holds a core
    (a 2 s training took 27 s that way). Autouse here; the other step modules import it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def layer(module: nn.Module, name: str) -> Any:
    """A submodule, typed loosely so tests can read .weight, .out_channels and the like."""
    return module.get_submodule(name)


@functools.cache
def digits() -> tuple[Dataset, Dataset]:
    """scikit-learn digits as (N, 1, 8, 8) in [0, 1]; a fixed 80/20 split."""
    bunch = load_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    return Dataset({"x": x[train]}, y[train]), Dataset({"x": x[test]}, y[test])


@functools.cache
def _trained_state(width: int, hidden: int, epochs: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = DigitsCNN(width, hidden)
    fine_tune(
        module, digits()[0], FineTune(epochs=epochs, learningRate=3e-3, batchSize=64), "cpu", progress=lambda f, m: None
    )
    return {k: v.clone() for k, v in module.state_dict().items()}


def trained_cnn(width: int = 16, hidden: int = 64, epochs: int = 4) -> TorchModel:
    """A fresh copy of a digits CNN trained once per process (about 98% test accuracy)."""
    module = DigitsCNN(width, hidden)
    module.load_state_dict(_trained_state(width, hidden, epochs))
    return TorchModel(module.eval(), (torch.zeros(1, 1, 8, 8),))


def make_ctx(
    step: dict[str, Any],
    workdir: Path,
    *,
    teacher: TorchModel | None = None,
    outputs: dict[str, Model] | None = None,
    data: DataSets | None = None,
    checkpoints: dict[str, dict[str, Any]] | None = None,
    input_shape: tuple[int, ...] = (-1, 1, 8, 8),
) -> StepContext:
    train, test = digits()
    data = data or DataSets(calibration=train.head(128), evaluation=test, training=train)
    return standalone_context(
        step, workdir, data, input_shape, teacher=teacher, outputs=outputs, checkpoints=checkpoints
    )


def test_digits_cnn_trains() -> None:
    assert accuracy(trained_cnn().module, digits()[1]) > 0.93


def test_final_layer_follows_execution_order() -> None:
    model = trained_cnn()
    assert final_layer(model.module, model.example_inputs) == "head.3"


def test_mask_2_4_keeps_the_two_largest_of_each_four() -> None:
    w = torch.tensor([[1.0, -4.0, 3.0, 0.5, 0.1, 0.2, -0.3, 0.4]])
    assert mask_2_4(w).tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("node", "module"),
    [
        ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
        ("/conv1/Conv", "conv1"),
        ("/head/head.1/Gemm", "head.1"),
        ("Add_3", ""),
    ],
)
def test_onnx_node_names_map_back_to_modules(node: str, module: str) -> None:
    assert module_path_of_node(node) == module
