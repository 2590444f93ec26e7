"""What the tests build, in one place: CompressionJob manifests, the two small Digits CNNs (and the
quickstart's example model, trained by the CLI), data files and a standalone StepContext. Plain
functions; the fixtures live in each folder's conftest.py.

The Digits data itself is not made here: `kompression.worker.data.arrays.digits(split)` is the one split
that the worker's builtin data, the tests and the benchmarks all read.
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from kompression.api.constants import API_VERSION
from kompression.api.v1alpha1 import FineTune
from kompression.worker.data.arrays import digits
from kompression.worker.formats import torch_export
from kompression.worker.model import DataSets, Model, TorchModel
from kompression.worker.steps.training import fine_tune
from kompression.worker.techniques import StepContext, standalone_context

# --- manifests ---------------------------------------------------------------------------------

_SPEC: dict[str, Any] = {
    "model": {
        "uri": "s3://models/resnet.pt2",
        "format": "TorchExport",
        "inputs": [{"name": "x", "shape": [-1, 3, 32, 32]}],
    },
    "steps": [{"name": "int8", "quantize": {"method": "DynamicInt8"}}],
    "output": {"uri": "s3://out/resnet/"},
}

# spec.model of an LLM job: a causal language model's HuggingFace folder, read as token ids.
LLAMA: dict[str, Any] = {
    "uri": "s3://models/llama/",
    "format": "HuggingFace",
    "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
}


def manifest(name: str = "resnet", namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    """A CompressionJob as the controller reads it from the API server (with uid and generation),
    top-level spec fields overridden. Each name gets its own output prefix (the operator runs one
    live job per prefix), unless `output` is given."""
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "CompressionJob",
        "metadata": {"name": name, "namespace": namespace, "uid": "0b1c-uid", "generation": 1},
        "spec": copy.deepcopy(_SPEC),
    }
    doc["spec"]["output"]["uri"] = f"s3://out/{name}/"
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def applied(name: str, namespace: str | None = None, **spec: Any) -> dict[str, Any]:
    """`manifest` as a user applies it: no server-set uid or generation, and no namespace when
    None (`kubectl apply -n NS` sets it)."""
    doc = manifest(name, namespace or "", **spec)
    for key in ("uid", "generation"):
        doc["metadata"].pop(key)
    if namespace is None:
        doc["metadata"].pop("namespace")
    return doc


def job(model_uri: str, output_uri: str, steps: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    """A CompressionJob for `kompression run`: a Digits-shaped model, builtin Digits evaluation,
    no GPU, and a short measurement; top-level spec fields overridden."""
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
        "apiVersion": API_VERSION,
        "kind": "CompressionJob",
        "metadata": {"name": "t", "namespace": "ns"},
        "spec": body,
    }


def write_job(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


# --- data files --------------------------------------------------------------------------------


def npz(path: Path, inputs: np.ndarray, labels: np.ndarray | None = None) -> Path:
    arrays = {"inputs": inputs} if labels is None else {"inputs": inputs, "labels": labels}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- small models ------------------------------------------------------------------------------
# Two sizes, each the smallest that its tests need: DigitsCNN has the layers the techniques act on
# (batch norm, two convolutions, a hidden dense layer) and is trained in-process; Tiny is a
# one-convolution model whose .pt2 the pipeline tests write and run end to end. The quickstart's
# kompression.worker.example_model.DigitsCNN (0.8 M parameters) is too slow to train per test.


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


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@functools.cache
def _trained_state(width: int, hidden: int, epochs: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = DigitsCNN(width, hidden)
    fine_tune(
        module,
        digits("train"),
        FineTune(epochs=epochs, learningRate=3e-3, batchSize=64),
        "cpu",
        progress=lambda f, m: None,
    )
    return {k: v.clone() for k, v in module.state_dict().items()}


def trained_cnn(width: int = 16, hidden: int = 64, epochs: int = 4) -> TorchModel:
    """A fresh copy of a DigitsCNN trained once per process (about 98% held-out accuracy)."""
    module = DigitsCNN(width, hidden)
    module.load_state_dict(_trained_state(width, hidden, epochs))
    return TorchModel(module.eval(), (torch.zeros(1, 1, 8, 8),))


def train_on_digits(model: nn.Module, epochs: int) -> None:
    """Adam at 3e-3, batches of 64 in file order, over the Digits training split."""
    ds = digits("train")
    assert ds.labels is not None
    x, y = torch.from_numpy(ds.inputs["x"]), torch.from_numpy(ds.labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64]).backward()  # type: ignore[no-untyped-call]
            optimizer.step()


@functools.cache
def trained_tiny() -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    train_on_digits(model, epochs=6)
    return model.eval()


def save_tiny(path: Path) -> Path:
    return torch_export.save_torch_export(TorchModel(trained_tiny(), (torch.zeros(1, 1, 8, 8),)), path)


def example_model(uri: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Train the example model (2 epochs) with the real CLI and store it at uri, as a user would
    before creating the CompressionJob that names it."""
    made = subprocess.run(
        [sys.executable, "-m", "kompression.cli", "example-model", "--output", uri, "--epochs", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )
    assert made.returncode == 0, made.stdout + made.stderr


def layer(module: nn.Module, name: str) -> Any:
    """A submodule, typed loosely so tests can read .weight, .out_channels and the like."""
    return module.get_submodule(name)


# --- a technique's context ---------------------------------------------------------------------


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
    """A context to run one technique on Digits: calibration is the first 128 training images."""
    train = digits("train")
    data = data or DataSets(calibration=train.head(128), evaluation=digits("eval"), training=train)
    return standalone_context(
        step, workdir, data, input_shape, teacher=teacher, outputs=outputs, checkpoints=checkpoints
    )
