"""How to score a model: accuracy, latency, size, parameters and sparsity.

Kept apart from the techniques (how to apply) so every step's output is measured the same way,
whatever produced it. Runs eager PyTorch, ONNX (onnxruntime) and TensorRT engines (when TensorRT
and a GPU are present), all on the job's device: PyTorch models on it, ONNX models on the matching
onnxruntime execution provider. Every timing includes the copies of inputs and outputs between
host and device, whatever the runtime, so the figures compare like with like.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kompression.api.v1alpha1 import MeasuredDevice, MeasuredProvider, Measurement, Metrics, ModelInput
from kompression.worker.errors import DataError, ModelError, RuntimeMissing
from kompression.worker.formats.inputs import example_inputs
from kompression.worker.formats.size import model_size
from kompression.worker.model import Dataset, EngineModel, Model, OnnxModel, TorchModel

Forward = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass
class Measured:
    """One model's measurements: the API's Metrics plus what the report wants in more detail."""

    metrics: Metrics
    latency_ms: dict[int, tuple[float, float]] = field(default_factory=dict)  # batch -> (p50, p95)
    outputs: np.ndarray | None = None  # evaluation outputs, the reference for later steps
    notes: dict[str, Any] = field(default_factory=dict)  # what the evaluator adds to the report (task scores)


def threads_for(measurement: Measurement) -> int:
    return measurement.threads or os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# runners


@dataclass(frozen=True)
class Runner:
    """A function from a batch of numpy inputs to numpy outputs (the model's first output), and where it runs."""

    run: Forward
    device: MeasuredDevice
    provider: MeasuredProvider


def api_device(device: str) -> MeasuredDevice:
    """The API's name for a torch device string ("cuda", "cuda:1", "cpu")."""
    return "GPU" if device.startswith("cuda") else "CPU"


def torch_device(device: MeasuredDevice) -> str:
    return "cuda" if device == "GPU" else "cpu"


def onnx_providers(device: str, available: Sequence[str]) -> list[str]:
    """onnxruntime execution providers for a job on `device`, best first.

    A GPU job runs ONNX models on CUDAExecutionProvider when this onnxruntime build has it (the
    onnxruntime-gpu package); otherwise, and on CPU jobs, on CPUExecutionProvider. CPU stays in
    the list after CUDA for the few nodes the CUDA provider has no kernel for.
    """
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def runner(model: Model, threads: int, device: str) -> Runner:
    """Runs `model` on `device` ("cpu" or "cuda"); ONNX models on the matching execution provider."""
    if isinstance(model, TorchModel):
        return Runner(_torch_forward(model, threads, device), api_device(device), "PyTorch")
    if isinstance(model, OnnxModel):
        return _onnx_runner(model, threads, device)
    if isinstance(model, EngineModel):
        return Runner(_engine_forward(model), "GPU", "TensorRT")
    # A checkpoint folder has no forward on arrays: its evaluator generates text (llm/scoring.py).
    raise ModelError(f"{model.path}: a checkpoint folder is scored on text, not run on the job's arrays")


def _torch_forward(model: TorchModel, threads: int, target: str) -> Forward:
    module = model.module
    dtypes = [t.dtype for t in model.example_inputs]
    device = torch.device(target)
    current = next((p.device for p in module.parameters()), device)
    if current.type != device.type:
        # Measured where the job runs; a copy, so the caller's model (the teacher) stays where it is.
        module = copy.deepcopy(module).to(device)

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


def _onnx_runner(model: OnnxModel, threads: int, device: str) -> Runner:
    import onnxruntime as ort  # only for ONNX models

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = onnx_providers(device, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(model.path), options, providers=providers)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load {model.path.name}: {exc}") from None
    # The session's own list: onnxruntime drops CUDA (with a warning) when its libraries fail to load.
    on_gpu = session.get_providers()[0] == "CUDAExecutionProvider"
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    dtypes = [ORT_DTYPES.get(i.type, np.float32) for i in inputs]

    def run(batch: Sequence[np.ndarray]) -> np.ndarray:
        feed = {n: np.ascontiguousarray(a, dtype=d) for n, a, d in zip(names, batch, dtypes, strict=True)}
        return np.asarray(session.run(None, feed)[0], dtype=np.float32)

    if on_gpu:
        return Runner(run, "GPU", "CUDAExecutionProvider")
    return Runner(run, "CPU", "CPUExecutionProvider")


def _engine_forward(model: EngineModel) -> Forward:
    try:
        import tensorrt as trt  # optional: NVIDIA images only
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


def predict(run: Forward, data: Dataset) -> np.ndarray:
    """Outputs for every sample, in batches, every model input fed from the data."""
    outs = []
    for start in range(0, len(data), data.batch_size):
        outs.append(run(data.rows(slice(start, start + data.batch_size))))
    out = np.concatenate(outs)
    if not np.isfinite(out).all():
        raise ModelError("the model produced NaN or Inf on the evaluation data")
    return out


MASK_INPUT = "attention_mask"


def mean_pool(outputs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-token outputs (N, S, H) averaged over the positions the mask (N, S) keeps."""
    weights = (mask > 0).astype(np.float64)[:, :, None]
    pooled: np.ndarray = (outputs * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    return pooled


def score(
    metric: str,
    outputs: np.ndarray,
    labels: np.ndarray | None,
    reference: np.ndarray | None,
    mask: np.ndarray | None = None,
) -> float:
    """The evaluation metric; reference is the original model's outputs on the same data. With an
    attention mask (N, S) and per-token outputs (N, S, ...), CosineSimilarity compares the
    mask-weighted mean over tokens, so padded positions count for nothing."""
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
    if mask is not None and outputs.ndim == 3 and outputs.shape[:2] == mask.shape:
        flat, ref = mean_pool(outputs, mask), mean_pool(reference, mask)
    num = (flat * ref).sum(axis=1)
    den = np.linalg.norm(flat, axis=1) * np.linalg.norm(ref, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


# --------------------------------------------------------------------------------------------
# latency, size, parameters, sparsity


def latency(
    run: Forward, sample: Sequence[np.ndarray], batch_size: int, warmup: int, iterations: int
) -> tuple[float, float]:
    """(p50, p95) in milliseconds for one batch size, after warm-up runs."""
    batch = [np.repeat(np.asarray(s), batch_size, axis=0) for s in sample]
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
        # only for ONNX models
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
        import onnx  # only for ONNX models

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


def measure(  # noqa: PLR0917 - few call sites, every argument is distinct
    model: Model,
    artifact: Path,
    inputs: list[ModelInput],
    measurement: Measurement,
    evaluation: Dataset | None,
    metric: str,
    reference: np.ndarray | None,
    device: str,
    sample: Sequence[np.ndarray] | None = None,
) -> Measured:
    """Every figure for one model on `device` (the job's); artifact is its serialized file (its size is
    the size on disk). Without evaluation data there is no accuracy (and no outputs to compare with).
    Latency is timed on `sample` (one real sample per input, repeated to each batch size), by default
    the first evaluation sample."""
    threads = threads_for(measurement)
    placed = runner(model, threads, device)
    run = placed.run
    accuracy, outputs = None, None
    if evaluation is not None:
        outputs = predict(run, evaluation)
        # The original model is its own reference: agreement 1.0, cosine 1.0.
        accuracy = score(
            metric,
            outputs,
            evaluation.labels,
            outputs if reference is None else reference,
            evaluation.inputs.get(MASK_INPUT),
        )
    if sample is None:
        sample = evaluation.rows(slice(0, 1)) if evaluation is not None else None
    if sample is None:
        # No data at all: only then is latency timed on a synthesized input of the declared shapes and
        # dtypes (zeros, dynamic dimensions other than the batch as 1); there is no accuracy to spoil.
        sample = [t.numpy() for t in example_inputs(inputs)]
    timings = {
        bs: latency(run, sample, bs, measurement.warmupIterations, measurement.iterations)
        for bs in measurement.batchSizes
    }
    first = timings[measurement.batchSizes[0]]
    metrics = Metrics(
        sizeBytes=model_size(artifact),
        parameters=parameters(model),
        accuracy=accuracy,
        latencyMs=round(first[0], 4),
        latencyP95Ms=round(first[1], 4),
        sparsity=sparsity(model),
        device=placed.device,
        provider=placed.provider,
    )
    return Measured(metrics, timings, outputs)
