"""Export to ONNX and prove onnxruntime computes what torch computes, within the spec's tolerance."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch

from kompression.api.v1alpha1 import OnnxStep
from kompression.worker.errors import ModelError, StepInvalid
from kompression.worker.model import Model, OnnxModel, TorchModel
from kompression.worker.steps.onnx_io import export_onnx, run_onnx, session
from kompression.worker.techniques import StepContext, StepResult

CHECK_SAMPLES = 4


def onnx_export(model: Model, ctx: StepContext[OnnxStep]) -> StepResult:
    cfg = ctx.config
    if isinstance(model, OnnxModel):
        return _check_existing(model, ctx)
    if not isinstance(model, TorchModel):
        raise StepInvalid(
            f"step {ctx.name}: a TensorRT engine cannot be exported to ONNX; export before the tensorrt step"
        )
    declared = ctx.inputs
    exported = export_onnx(
        model,
        ctx.workdir / "model.onnx",
        [i.name for i in declared],
        opset=cfg.opset,
        dynamic_batch=cfg.dynamicBatch,
        declared=declared,
    )
    inputs = _check_inputs(model, ctx, batch=cfg.dynamicBatch)
    module = copy.deepcopy(model.module).to("cpu").eval()
    with torch.no_grad():
        expected = module(*[torch.from_numpy(x) for x in inputs]).float().numpy()
    actual = run_onnx(session(exported.path), inputs)
    diff = float(np.abs(actual - expected).max())
    if not diff <= cfg.tolerance:  # also catches NaN
        raise StepInvalid(
            f"step {ctx.name}: onnxruntime and torch outputs differ by up to {diff:.3g}, "
            f"more than the tolerance {cfg.tolerance:g}; raise onnx.tolerance or check the model for "
            "ops the exporter changes"
        )
    notes: dict[str, float | int | str] = {"opset": cfg.opset, "maxAbsDiff": diff, "checkedSamples": len(inputs[0])}
    return StepResult(exported, notes)


def _check_inputs(model: TorchModel, ctx: StepContext[OnnxStep], batch: bool) -> list[np.ndarray]:
    """Real samples of every input when there is data (a few, or one when the batch is static),
    else the model's example inputs."""
    data = ctx.data.evaluation or ctx.data.calibration or ctx.data.training
    if data is not None and len(data):
        return data.rows(slice(0, CHECK_SAMPLES if batch else 1))
    return [x.detach().cpu().numpy() for x in model.example_inputs]


def _check_existing(model: OnnxModel, ctx: StepContext[OnnxStep]) -> StepResult:
    """An ONNX model passes through, once checked and run on real inputs."""
    try:
        onnx.checker.check_model(str(model.path))
        sess = session(model.path)
    except Exception as exc:  # checker and session raise their own exception types
        raise ModelError(f"step {ctx.name}: the incoming ONNX model is invalid: {exc}") from exc
    data = ctx.data.evaluation or ctx.data.calibration or ctx.data.training
    if data is not None and len(data):
        batch = data.rows(slice(0, 1))
    else:  # no data at all: the graph is run once on zeros of its declared shapes, only to see it run
        batch = [_zeros(meta.shape, meta.type) for meta in sess.get_inputs()]
    out = run_onnx(sess, batch)
    if not np.isfinite(out).all():
        raise StepInvalid(f"step {ctx.name}: the ONNX model produces NaN or infinite outputs")
    return StepResult(model, {"note": "already ONNX: checked with onnx.checker and run in onnxruntime, passed on"})


def _zeros(shape: list[int | str | None], type_name: str) -> np.ndarray:
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    return np.zeros(dims, dtype=np.int64 if "int64" in type_name else np.float32)
