"""The onnx step: export checked against torch, a tolerance that fails clearly, ONNX passed on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from encoder_helpers import encoder_inputs
from factories import make_ctx, trained_cnn
from kompression.api.v1alpha1 import ModelSource, OnnxStep
from kompression.worker.errors import ModelError, StepInvalid
from kompression.worker.formats import loader
from kompression.worker.model import OnnxModel, TorchModel
from kompression.worker.steps.onnx_io import export_onnx, run_onnx, session
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


def test_a_huggingface_encoder_exports_its_attention_as_eager_math(tiny_bert: Path, tmp_path: Path) -> None:
    """The SDPA export masks the scores with IsNaN and Where, which onnxruntime runs as extra passes
    (benchmark (f)); the export uses the eager attention instead, with the same outputs on padded
    rows, and leaves the model it was given as it was."""
    source = ModelSource.model_validate(
        {"uri": f"file://{tiny_bert}", "format": "HuggingFace", "inputs": encoder_inputs(16)}
    )
    loaded = loader.load_model(source, tiny_bert)
    assert isinstance(loaded, TorchModel)
    exported = export_onnx(loaded, tmp_path / "bert.onnx", ["input_ids", "attention_mask"])
    nodes = onnx.load(str(exported.path)).graph.node
    # The mask is turned into an additive bias once, outside the layers; no layer selects scores.
    per_layer = [n.name for n in nodes if n.op_type in ("IsNaN", "Where") and "/encoder/" in n.name]
    assert per_layer == [], per_layer
    assert any(n.op_type == "Softmax" and "/encoder/" in n.name for n in nodes)
    ids = torch.randint(5, 40, (3, 16))
    mask = torch.ones(3, 16, dtype=torch.int64)
    mask[1, 9:] = 0  # padded rows: the mask has to reach the scores in the graph
    mask[2, 4:] = 0
    with torch.inference_mode():
        expected = loaded.module(ids, mask)
    expected = (expected if isinstance(expected, torch.Tensor) else expected[0]).numpy()
    got = run_onnx(session(exported.path, threads=1), [ids.numpy(), mask.numpy()])
    assert np.abs(got - expected).max() < 1e-4
    inner = next(m for m in loaded.module.modules() if hasattr(m, "set_attn_implementation"))
    assert inner.config._attn_implementation == "sdpa"
