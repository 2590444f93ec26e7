"""The onnx step: export checked against torch, a tolerance that fails clearly, ONNX passed on."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from factories import make_ctx, trained_cnn
from kompression.api.v1alpha1 import OnnxStep
from kompression.worker.errors import ModelError, StepInvalid
from kompression.worker.model import OnnxModel
from kompression.worker.techniques import TECHNIQUES

pytestmark = pytest.mark.usefixtures("one_thread")


onnx_step = TECHNIQUES[OnnxStep]


def test_export_matches_torch_and_keeps_a_dynamic_batch(tmp_path: Path) -> None:
    result = onnx_step(trained_cnn(), make_ctx({"name": "e", "onnx": {"opset": 17}}, tmp_path))
    assert isinstance(result.model, OnnxModel)
    model = onnx.load(str(result.model.path))
    assert model.opset_import[0].version == 17
    assert model.graph.input[0].name == "x"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert float(result.notes["maxAbsDiff"]) < 1e-4
    assert int(result.notes["checkedSamples"]) == 4


def test_a_tiny_tolerance_fails_naming_the_diff_and_the_tolerance(tmp_path: Path) -> None:
    with pytest.raises(StepInvalid, match=r"differ by up to .* more than the tolerance 1e-12"):
        onnx_step(trained_cnn(), make_ctx({"name": "e", "onnx": {"tolerance": 1e-12}}, tmp_path))


def test_an_onnx_model_is_checked_run_and_passed_on(tmp_path: Path) -> None:
    first = onnx_step(trained_cnn(), make_ctx({"name": "e", "onnx": {}}, tmp_path)).model
    assert isinstance(first, OnnxModel)
    again = onnx_step(first, make_ctx({"name": "e2", "onnx": {}}, tmp_path))
    assert again.model == first
    assert "already ONNX" in str(again.notes["note"])
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="invalid"):
        onnx_step(OnnxModel(broken, ["x"]), make_ctx({"name": "e3", "onnx": {}}, tmp_path))
