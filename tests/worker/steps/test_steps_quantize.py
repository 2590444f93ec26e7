"""Quantization on the digits CNN: real int8 kernels in onnxruntime, 16-bit casts, fp8 refusal."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from factories import make_ctx, trained_cnn
from kompression.api.v1alpha1 import QuantizeStep
from kompression.worker.data.arrays import digits
from kompression.worker.errors import RuntimeMissing, StepInvalid
from kompression.worker.model import OnnxModel, TorchModel
from kompression.worker.steps.fp8 import FP8Linear
from kompression.worker.steps.onnx_io import export_onnx, run_onnx, session
from kompression.worker.steps.training import accuracy
from kompression.worker.techniques import TECHNIQUES

pytestmark = pytest.mark.usefixtures("one_thread")


quantize = TECHNIQUES[QuantizeStep]


def onnx_accuracy(path: Path) -> float:
    test = digits("eval")
    out = run_onnx(session(path), [test.inputs["x"]])
    return float((out.argmax(axis=1) == test.labels).mean())


def int8_initializers(path: Path) -> int:
    graph = onnx.load(str(path)).graph
    return sum(t.data_type == TensorProto.INT8 for t in graph.initializer)


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(trained_cnn(), tmp_path_factory.mktemp("f") / "float.onnx", ["x"]).path


@pytest.mark.parametrize("calibrator", ["MinMax", "Percentile", "Entropy"])
def test_static_int8_runs_qdq_int8_is_smaller_and_keeps_accuracy(
    calibrator: str, tmp_path: Path, float_onnx: Path
) -> None:
    step = {"name": "q", "quantize": {"method": "StaticInt8", "calibrator": calibrator}}
    result = quantize(trained_cnn(), make_ctx(step, tmp_path))
    assert isinstance(result.model, OnnxModel)
    path = result.model.path
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8_initializers(path) >= 4  # every conv and linear weight
    assert path.stat().st_size < 0.35 * float_onnx.stat().st_size
    assert onnx_accuracy(path) >= onnx_accuracy(float_onnx) - 0.02


def test_static_int8_keeps_excluded_layers_in_float(tmp_path: Path) -> None:
    step = {"name": "q", "quantize": {"method": "StaticInt8", "excludeLayers": ["head.1"]}}
    result = quantize(trained_cnn(), make_ctx(step, tmp_path))
    assert isinstance(result.model, OnnxModel)
    graph = onnx.load(str(result.model.path)).graph
    float_weights = [t for t in graph.initializer if t.data_type == TensorProto.FLOAT and list(t.dims) == [64, 512]]
    assert float_weights, "head.1's weight should stay float32"
    step["quantize"]["excludeLayers"] = ["head.9"]  # type: ignore[index]
    with pytest.raises(StepInvalid, match=r"head\.9"):
        quantize(trained_cnn(), make_ctx(step, tmp_path))


def _weight_scale_sizes(path: Path) -> set[int]:
    """Element counts of the scales that dequantize int8 weights (1: per tensor, C: per channel)."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    sizes = set()
    for node in graph.node:
        weight = inits.get(node.input[0])
        if node.op_type == "DequantizeLinear" and weight is not None and weight.data_type == TensorProto.INT8:
            sizes.add(int(np.prod(inits[node.input[1]].dims)))
    return sizes


def test_static_int8_defaults_apply_when_unset_and_per_tensor_scales_when_per_channel_is_false(
    tmp_path: Path,
) -> None:
    unset = quantize(trained_cnn(), make_ctx({"name": "q", "quantize": {"method": "StaticInt8"}}, tmp_path / "a"))
    assert unset.notes["calibrator"] == "MinMax"
    assert isinstance(unset.model, OnnxModel)
    assert max(_weight_scale_sizes(unset.model.path)) > 1  # per channel by default
    step = {"name": "q", "quantize": {"method": "StaticInt8", "perChannel": False}}
    per_tensor = quantize(trained_cnn(), make_ctx(step, tmp_path / "b"))
    assert isinstance(per_tensor.model, OnnxModel)
    assert _weight_scale_sizes(per_tensor.model.path) == {1}


def test_static_int8_quantizes_an_onnx_model_too(tmp_path: Path, float_onnx: Path) -> None:
    result = quantize(
        OnnxModel(float_onnx, ["x"]), make_ctx({"name": "q", "quantize": {"method": "StaticInt8"}}, tmp_path)
    )
    assert isinstance(result.model, OnnxModel)
    assert int8_initializers(result.model.path) >= 4


def test_dynamic_int8_quantizes_linear_weights(tmp_path: Path, float_onnx: Path) -> None:
    result = quantize(trained_cnn(), make_ctx({"name": "q", "quantize": {"method": "DynamicInt8"}}, tmp_path))
    assert isinstance(result.model, OnnxModel)
    ops = {n.op_type for n in onnx.load(str(result.model.path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    # the two Linear layers hold ~87% of the weights
    assert result.model.path.stat().st_size < 0.45 * float_onnx.stat().st_size
    assert onnx_accuracy(result.model.path) >= onnx_accuracy(float_onnx) - 0.02


@pytest.mark.parametrize(("method", "dtype"), [("Float16", torch.float16), ("BFloat16", torch.bfloat16)])
def test_half_precision_halves_the_size_and_takes_float32_inputs(
    method: str, dtype: torch.dtype, tmp_path: Path
) -> None:
    model = trained_cnn()
    result = quantize(model, make_ctx({"name": "q", "quantize": {"method": method}}, tmp_path))
    half = result.model
    assert isinstance(half, TorchModel)
    assert all(p.dtype == dtype for p in half.module.parameters())

    def size(m: torch.nn.Module) -> int:
        buffer = io.BytesIO()
        torch.save(m.state_dict(), buffer)
        return buffer.tell()

    assert size(half.module) < 0.55 * size(model.module)
    assert half.module(torch.zeros(3, 1, 8, 8)).dtype == torch.float32
    assert accuracy(half.module, digits("eval")) >= accuracy(model.module, digits("eval")) - 0.02


def test_fp8_without_an_fp8_gpu_is_runtime_missing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeMissing, match=r"compute capability 8\.9"):
        quantize(trained_cnn(), make_ctx({"name": "q", "quantize": {"method": "FP8"}}, tmp_path))


def test_fp8_linear_matches_float_within_fp8_error() -> None:
    # torch._scaled_mm also runs on CPU, so the layer's math is checked here; speed needs a GPU.
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    expected = linear(x)
    got = FP8Linear(linear)(x).detach()
    expected = expected.detach()
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 0.1 * float(expected.abs().max())
    assert np.isfinite(got.numpy()).all()
