"""How to score a model: accuracy, latency, size, parameters and sparsity.

Kept apart from the techniques (how to apply) so every step's output is measured the same way,
whatever produced it. Runs eager PyTorch, ONNX (onnxruntime) and TensorRT engines (when TensorRT
and a GPU are present).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kompression.api.v1alpha1 import Measurement, Metrics, ModelInput
from kompression.worker.errors import DataError, ModelError, RuntimeMissing
from kompression.worker.formats import example_inputs, file_size
from kompression.worker.model import EngineModel, Model, OnnxModel, TorchModel
from kompression.worker.steps.base import Dataset

Forward = Callable[[Sequence[np.ndarray]], np.ndarray]
EVAL_BATCH = 256


@dataclass
class Measured:
    """One model's measurements: the API's Metrics plus what the report wants in more detail."""

    metrics: Metrics
    latency_ms: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> (p50, p95)
    outputs: np.ndarray | None = None  # evaluation outputs, the reference for later steps


def threads_for(measurement: Measurement) -> int:
    return measurement.threads or os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# runners


def forward_fn(model: Model, threads: int) -> Forward:
    """A function from a batch of numpy inputs to numpy outputs (the first output of the model)."""
    if isinstance(model, TorchModel):
        return _torch_forward(model, threads)
    if isinstance(model, OnnxModel):
        return _onnx_forward(model, threads)
    return _engine_forward(model)


def _torch_forward(model: TorchModel, threads: int) -> Forward:
    module = model.module
    dtypes = [t.dtype for t in model.example_inputs]
    device = next((p.device for p in module.parameters()), torch.device("cpu"))

    def run(batch: Sequence[np.ndarray]) -> np.ndarray:
        torch.set_num_threads(threads)
        tensors = [
            torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=d)
            for a, d in zip(batch, dtypes, strict=True)
        ]
        with torch.inference_mode():
            out = module(*tensors)
        if isinstance(out, (tuple, list)):
            out = out[0]
        result: np.ndarray = out.detach().float().cpu().numpy()
        return result

    return run


ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(double)": np.float64,
}


def _onnx_forward(model: OnnxModel, threads: int) -> Forward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load {model.path.name}: {exc}") from None
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    dtypes = [ORT_DTYPES.get(i.type, np.float32) for i in inputs]

    def run(batch: Sequence[np.ndarray]) -> np.ndarray:
        feed = {n: np.ascontiguousarray(a, dtype=d) for n, a, d in zip(names, batch, dtypes, strict=True)}
        return np.asarray(session.run(None, feed)[0], dtype=np.float32)

    return run


def _engine_forward(model: EngineModel) -> Forward:
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeMissing("measuring a TensorRT engine needs the tensorrt package and an NVIDIA GPU") from None
    if not torch.cuda.is_available():
        raise RuntimeMissing("measuring a TensorRT engine needs an NVIDIA GPU; none is visible")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(model.path.read_bytes())
    if engine is None:
        raise ModelError(
            f"{model.path.name}: TensorRT cannot deserialize the engine (built for another version or GPU?)"
        )
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    in_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    out_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def run(batch: Sequence[np.ndarray]) -> np.ndarray:
        keep = []
        for name, array in zip(in_names, batch, strict=True):
            dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to("cuda", dtype=dtype)
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        shape = tuple(context.get_tensor_shape(out_name))
        out_dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(out_name)))).dtype
        out = torch.empty(shape, dtype=out_dtype, device="cuda")
        context.set_tensor_address(out_name, out.data_ptr())
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return out.float().cpu().numpy()

    return run


# --------------------------------------------------------------------------------------------
# accuracy


def predict(run: Forward, data: Dataset, extra_inputs: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Outputs for every sample, in batches. extra_inputs: one example row per further model input."""
    outs = []
    for start in range(0, len(data), EVAL_BATCH):
        x = data.inputs[start : start + EVAL_BATCH]
        extra = [np.repeat(e, len(x), axis=0) for e in extra_inputs]
        outs.append(run([x, *extra]))
    out = np.concatenate(outs)
    if not np.isfinite(out).all():
        raise ModelError("the model produced NaN or Inf on the evaluation data")
    return out


def score(metric: str, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> float:
    """The evaluation metric; reference is the original model's outputs on the same data."""
    flat = outputs.reshape(len(outputs), -1)
    if metric == "Top1Accuracy":
        if labels is None:
            raise DataError("spec.data.evaluation: metric Top1Accuracy needs labels")
        return float((flat.argmax(axis=1) == labels).mean())
    if reference is None:
        raise ModelError(f"metric {metric} compares with the original model's outputs, which are missing")
    ref = reference.reshape(len(reference), -1)
    if ref.shape != flat.shape:
        raise ModelError(f"metric {metric}: output shape {flat.shape} differs from the original's {ref.shape}")
    if metric == "OutputAgreement":
        return float((flat.argmax(axis=1) == ref.argmax(axis=1)).mean())
    num = (flat * ref).sum(axis=1)
    den = np.linalg.norm(flat, axis=1) * np.linalg.norm(ref, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


# --------------------------------------------------------------------------------------------
# latency, size, parameters, sparsity


def latency(
    run: Forward, sample: Sequence[np.ndarray], batch_size: int, warmup: int, iterations: int
) -> tuple[float, float]:
    """(p50, p95) in milliseconds for one batch size, after warm-up runs."""
    batch = [np.repeat(s, batch_size, axis=0) for s in sample]
    for _ in range(warmup):
        run(batch)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95


def _weight_arrays(model: Model) -> list[np.ndarray]:
    """Weight tensors (matrices and kernels, not biases or quantization scales)."""
    if isinstance(model, TorchModel):
        tensors = [t for t in model.module.state_dict().values() if isinstance(t, torch.Tensor) and t.dim() > 1]
        return [(t.int_repr() if t.is_quantized else t).detach().float().cpu().numpy() for t in tensors]
    if isinstance(model, OnnxModel):
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(model.path))
        return [numpy_helper.to_array(t) for t in proto.graph.initializer if len(t.dims) > 1]
    return []


def parameters(model: Model) -> int | None:
    if isinstance(model, TorchModel):
        count = sum(int(p.numel()) for p in model.module.parameters())
        # Quantized graphs hold their weights as buffers/constants, not parameters.
        return count or sum(int(w.size) for w in _weight_arrays(model)) or None
    if isinstance(model, OnnxModel):
        import onnx

        proto = onnx.load(str(model.path))
        skip = ("scale", "zero_point")
        return sum(int(np.prod(t.dims)) for t in proto.graph.initializer if not any(s in t.name for s in skip))
    return None


def sparsity(model: Model) -> float | None:
    weights = _weight_arrays(model)
    total = sum(w.size for w in weights)
    if total == 0:
        return None
    return float(sum(int((w == 0).sum()) for w in weights) / total)


def measure(  # noqa: PLR0917 - one call site, every argument is distinct
    model: Model,
    artifact: Path,
    inputs: list[ModelInput],
    measurement: Measurement,
    evaluation: Dataset | None,
    metric: str,
    reference: np.ndarray | None,
) -> Measured:
    """Every figure for one model; artifact is its serialized file (its size is the size on disk)."""
    threads = threads_for(measurement)
    run = forward_fn(model, threads)
    sample = [t.numpy() for t in example_inputs(inputs)]
    extra = sample[1:]
    accuracy, outputs = None, None
    if evaluation is not None:
        if evaluation.inputs.dtype != sample[0].dtype and sample[0].dtype == np.float32:
            evaluation = Dataset(evaluation.inputs.astype(np.float32), evaluation.labels)
        outputs = predict(run, evaluation, extra)
        # The original model is its own reference: agreement 1.0, cosine 1.0.
        accuracy = score(metric, outputs, evaluation.labels, outputs if reference is None else reference)
        sample[0] = evaluation.inputs[:1]
    timings = {
        bs: latency(run, sample, bs, measurement.warmupIterations, measurement.iterations)
        for bs in measurement.batchSizes
    }
    first = timings[measurement.batchSizes[0]]
    metrics = Metrics(
        sizeBytes=file_size(artifact),
        parameters=parameters(model),
        accuracy=accuracy,
        latencyMs=round(first[0], 4),
        latencyP95Ms=round(first[1], 4),
        sparsity=sparsity(model),
    )
    return Measured(metrics, timings, outputs)
