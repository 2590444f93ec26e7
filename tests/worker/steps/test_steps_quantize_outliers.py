"""Int8 by default keeps the layer that outlier activations would ruin in float, found by measurement."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import quantize_dynamic
from torch import nn

from kompression.api.v1alpha1 import QuantizeStep
from kompression.worker.model import Dataset, DataSets, OnnxModel, TorchModel
from kompression.worker.steps.onnx_io import export_onnx
from kompression.worker.steps.quantize import has_vnni
from kompression.worker.steps.sensitivity import layer_errors, output_error, sample_batches
from kompression.worker.techniques import TECHNIQUES, standalone_context

pytestmark = pytest.mark.usefixtures("one_thread")

quantize = TECHNIQUES[QuantizeStep]
OUTLIER = 3  # the channel that carries outliers into fc2


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.fc1, self.fc2, self.fc3 = (
            nn.Linear(16, 48),
            nn.Linear(48, 40),
            nn.Linear(40, 24),
            nn.Linear(24, 8),
        )
        self.register_buffer("gain", torch.ones(40))  # an elementwise scale, as a LayerNorm's weight is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc0(x))
        x = torch.relu(self.fc1(x)) * self.gain
        return self.fc3(torch.relu(self.fc2(x)))


def planted_outliers() -> TorchModel:
    """Channel OUTLIER of fc2's input scaled up 200x by the gain, and fc2's matching weight column
    down 200x: the function is unchanged, but int8 now has about one level left for fc2's other 39
    input channels, as with the outlier dimensions a pretrained transformer's LayerNorm produces."""
    torch.manual_seed(0)
    model = Mlp().eval()
    with torch.no_grad():
        model.fc1.bias[OUTLIER] = model.fc1.bias[OUTLIER].abs() + 1  # the channel stays live through the ReLU
        model.gain[OUTLIER] = 200
        model.fc2.weight[:, OUTLIER] /= 200
    return TorchModel(model, (torch.zeros(1, 16),))


def context(step: dict[str, object], work: Path, data: np.ndarray) -> object:
    return standalone_context(step, work, DataSets(calibration=Dataset({"x": data})), [-1, 16])


def float_weights(path: Path) -> list[tuple[int, ...]]:
    """The float32 weight matrices, as (smaller, larger) side (Gemm holds them transposed, MatMul not)."""
    graph = onnx.load(str(path)).graph
    return [tuple(sorted(t.dims)) for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2]


@pytest.mark.parametrize("method", ["DynamicInt8", "StaticInt8"])
def test_the_outlier_layer_stays_float_and_beats_naive_per_tensor_int8(tmp_path: Path, method: str) -> None:
    model = planted_outliers()
    rng = np.random.default_rng(0)
    calibration, held_out = rng.normal(size=(64, 16)).astype(np.float32), rng.normal(size=(64, 16)).astype(np.float32)
    result = quantize(model, context({"name": "q", "quantize": {"method": method}}, tmp_path, calibration))  # type: ignore[arg-type]
    assert isinstance(result.model, OnnxModel)
    assert result.notes["floatLayers"].startswith("fc2 (")  # type: ignore[union-attr]
    assert result.notes["outputErrorWithFloatLayers"] < result.notes["outputErrorAllInt8"]  # type: ignore[operator]
    # The model the step hands on (and the pipeline publishes) computes fc2 in float: its weight is
    # a float32 initializer, and every other weight is int8.
    assert float_weights(result.model.path) == [(24, 40)]
    # Better than onnxruntime's defaults (per-tensor weights, every op type) on data it never saw.
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", ["x"]).path
    naive = tmp_path / "naive.onnx"
    quantize_dynamic(str(fp32), str(naive))
    batches = sample_batches({"x": held_out}, samples=64)
    ours, theirs = output_error(fp32, result.model.path, batches), output_error(fp32, naive, batches)
    assert ours < 0.5 * theirs, (ours, theirs)


def test_excluded_layers_replace_the_measured_choice(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    step = {"name": "q", "quantize": {"method": "DynamicInt8", "excludeLayers": ["fc0"]}}
    result = quantize(planted_outliers(), context(step, tmp_path, data))  # type: ignore[arg-type]
    assert isinstance(result.model, OnnxModel)
    assert result.notes["floatLayers"] == "fc0"
    assert result.notes["floatLayersChosenBy"] == "excludeLayers"
    assert float_weights(result.model.path) == [(16, 48)]


def _added(notes: dict[str, float | int | str]) -> list[str]:
    """The layers an Auto trial added, from "name (error), name (error)"."""
    return re.findall(r"([^ ,]+) \(\d+\.\d+\)", str(notes["floatLayersAddedByAuto"]))


@pytest.mark.parametrize("method", ["DynamicInt8", "StaticInt8"])
def test_an_auto_trials_float_layers_are_the_next_worst_added_to_the_measured_choice(
    tmp_path: Path, method: str
) -> None:
    data = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    ctx = replace(context({"name": "q", "quantize": {"method": method}}, tmp_path, data), extra_float_layers=1)  # type: ignore[type-var]
    result = quantize(planted_outliers(), ctx)
    assert isinstance(result.model, OnnxModel)
    # The step keeps its own measured choice (fc2, verified against the output error)...
    assert result.notes["floatLayersChosenBy"] == "measured int8 error (in brackets)"
    assert result.notes["outputErrorWithFloatLayers"] < result.notes["outputErrorAllInt8"]  # type: ignore[operator]
    # ...and the trial adds the layer its same measurement ranks next, on the graph it quantized.
    graph = tmp_path / ("model.prepared.onnx" if method == "StaticInt8" else "model.float.onnx")
    ranked = layer_errors(graph, sample_batches({"x": data}), skip=set(), per_channel=True, reduce_range=not has_vnni())
    assert ranked[0].layer == "fc2"
    assert _added(result.notes) == [ranked[1].layer]
    assert str(result.notes["floatLayers"]).startswith("fc2 (")
    assert str(result.notes["floatLayers"]).endswith(str(result.notes["floatLayersAddedByAuto"]))
    sizes = {"fc0": (16, 48), "fc1": (40, 48), "fc2": (24, 40), "fc3": (8, 24)}
    assert sorted(float_weights(result.model.path)) == sorted([sizes["fc2"], sizes[ranked[1].layer]])


def test_an_auto_trials_float_layers_are_added_to_excluded_layers(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    step = {"name": "q", "quantize": {"method": "DynamicInt8", "excludeLayers": ["fc0"]}}
    result = quantize(planted_outliers(), replace(context(step, tmp_path, data), extra_float_layers=2))  # type: ignore[type-var]
    assert isinstance(result.model, OnnxModel)
    assert result.notes["floatLayersChosenBy"] == "excludeLayers"
    added = _added(result.notes)
    assert added[0] == "fc2" and len(added) == 2 and "fc0" not in added  # measured without the excluded layer
    assert result.notes["floatLayers"] == f"fc0, {result.notes['floatLayersAddedByAuto']}"
    assert result.notes["measuredLayers"] == 3
    assert len(float_weights(result.model.path)) == 3


def test_dynamic_int8_weights_are_per_channel_unless_told(tmp_path: Path) -> None:
    model = TorchModel(Mlp().eval(), (torch.zeros(1, 16),))

    def scale_sizes(step: dict[str, object], work: Path) -> set[int]:
        result = quantize(model, standalone_context(step, work, DataSets(), [-1, 16]))
        assert isinstance(result.model, OnnxModel)
        inits = onnx.load(str(result.model.path)).graph.initializer
        return {numpy_helper.to_array(t).size for t in inits if t.name.endswith("_scale")}

    assert scale_sizes({"name": "q", "quantize": {"method": "DynamicInt8"}}, tmp_path / "a") == {48, 40, 24, 8}
    per_tensor = {"name": "q", "quantize": {"method": "DynamicInt8", "perChannel": False}}
    assert scale_sizes(per_tensor, tmp_path / "b") == {1}
