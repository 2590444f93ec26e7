"""The tensorrt step: a clear RuntimeMissing here; a real engine build where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from factories import make_ctx, trained_cnn
from kompression.api.v1alpha1 import TensorRTStep
from kompression.worker.errors import RuntimeMissing
from kompression.worker.model import EngineModel
from kompression.worker.techniques import TECHNIQUES

pytestmark = pytest.mark.usefixtures("one_thread")


HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
STEP = {
    "name": "engine",
    "tensorrt": {"precision": "FP16", "profiles": [{"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [32, 1, 8, 8]}]},
}


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT and a GPU are present: the missing-runtime path cannot happen")
def test_without_tensorrt_or_a_gpu_the_step_fails_with_runtime_missing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeMissing, match="worker image with the tensorrt extra on an NVIDIA GPU node") as err:
        TECHNIQUES[TensorRTStep](trained_cnn(), make_ctx(STEP, tmp_path))
    assert err.value.reason == "RuntimeMissing"
    assert "pip install 'kompression[tensorrt]'" in err.value.message
    assert not list(tmp_path.glob("*.engine"))


@pytest.mark.skipif(not HAS_TENSORRT, reason="needs the tensorrt package and a CUDA GPU; neither is on this machine")
@pytest.mark.parametrize("precision", ["FP32", "FP16", "INT8"])
def test_builds_a_real_engine_with_a_timing_cache(precision: str, tmp_path: Path) -> None:
    step = {"name": "engine", "tensorrt": {**STEP["tensorrt"], "precision": precision}}  # type: ignore[dict-item]
    result = TECHNIQUES[TensorRTStep](trained_cnn(), make_ctx(step, tmp_path))
    assert isinstance(result.model, EngineModel)
    assert result.model.path.stat().st_size > 0
    assert result.model.compute_capability.count(".") == 1
    assert [name for name, _, _ in result.extra_artifacts] == ["timing.cache"]
