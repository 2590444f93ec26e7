"""Which int8 layers to keep in float: each layer's quantization error, measured on real data.

Pretrained transformers carry a few activation outliers (a handful of hidden dimensions hundreds of
times larger than the rest). A layer fed by them gets an int8 activation scale so coarse that most
of its inputs round to a few levels; quantizing it costs more than all the others together. The
cure is to find those layers by measurement and leave them in float.

Each candidate (a MatMul or Gemm with a constant weight, the layers int8 speeds up) is measured
alone: the float model runs once on the data with every candidate's input kept, and the layer's
output is recomputed with its input and weight rounded as onnxruntime's int8 kernels round them
(uint8 asymmetric activations over the batch, int8 symmetric weights per output channel or per
tensor). The error is ||Y_int8 - Y|| / ||Y|| over the samples. A layer whose error stands above
the others' (OUTLIER_FACTOR times the median, and above MIN_ERROR) is kept float, worst first, at
most MAX_FLOAT_FRACTION of the layers, when that divides the model's output error by
FLOAT_MIN_GAIN; acceptance.strategy Auto's trials keep the next worst float too
(steps/quantize.py), so this is the search's one measure of int8 sensitivity. The cost is one
float pass over at most SAMPLES samples plus one matrix product per layer. On all-MiniLM-L6-v2
the three FFN output layers of blocks 0, 1 and 3 stand out (1.8-2.3x the median), but keeping
them float lowers the output error by less than FLOAT_MIN_GAIN, so the model stays all int8
(benchmarks/RESULTS.md, (f)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from kompression.worker.steps.onnx_io import module_path_of_node, session

SAMPLES = 16
BATCH = 8
OUTLIER_FACTOR = 1.75
MIN_ERROR = 0.02
MAX_FLOAT_FRACTION = 0.1
# The outliers stay float only when that divides the whole model's output error at least this
# much. A float layer runs at fp32 speed and size (about 4x its int8 cost), which a layer that
# int8 ruins repays many times over, but a mild outlier does not: on all-MiniLM-L6-v2 keeping
# three FFN output layers float took the output error only from 0.17 to 0.12 (sentence cosine
# 0.993 to 0.995) for a fifth more latency (benchmarks/RESULTS.md, (f)).
FLOAT_MIN_GAIN = 2.0


@dataclass(frozen=True)
class LayerError:
    node: str  # the ONNX node, as onnxruntime's quantizer names it
    layer: str  # the torch module it came from (the name excludeLayers takes)
    error: float  # relative output error with only this layer in int8


@dataclass(frozen=True)
class _Candidate:
    node: str
    activation: str  # the node's input tensor
    weight: np.ndarray  # (K, N): input features x output channels


def _candidates(proto: onnx.ModelProto, skip: set[str]) -> list[_Candidate]:
    weights = {t.name: t for t in proto.graph.initializer}
    # The TorchScript exporter may route a weight through an Identity; follow it to the initializer.
    aliases = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in weights}
    found = []
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.name in skip or len(node.input) < 2:
            continue
        name = aliases.get(node.input[1], node.input[1])
        if name not in weights:
            continue  # a product of two activations: not a weight layer
        weight = numpy_helper.to_array(weights[name]).astype(np.float32)
        if weight.ndim != 2:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0):
            continue
        found.append(_Candidate(node.name, node.input[0], weight.T if attrs.get("transB", 0) else weight))
    return found


def _fake_uint8(x: np.ndarray) -> np.ndarray:
    """Round-trip through onnxruntime's dynamic activation quantization (DynamicQuantizeLinear)."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero = float(np.round(-low / scale))
    rounded: np.ndarray = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
    return rounded


def _fake_int8(w: np.ndarray, per_channel: bool, reduce_range: bool) -> np.ndarray:
    """Round-trip through symmetric int8 weights, one scale per output column or per tensor."""
    bound = 63.0 if reduce_range else 127.0
    peak = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(peak > 0, peak / bound, 1.0)
    return np.clip(np.round(w / scale), -bound, bound) * scale


def layer_errors(
    path: Path,
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    skip: set[str],
    per_channel: bool,
    reduce_range: bool,
) -> list[LayerError]:
    """Each candidate layer's relative output error when it alone is int8, worst first."""
    proto = onnx.load(str(path))
    candidates = _candidates(proto, skip)
    if not candidates:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    known = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(c.activation for c in candidates):
        if name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    probe_path = path.with_name(path.stem + ".sensitivity.onnx")
    onnx.save(probe, str(probe_path))
    try:
        sess = session(probe_path)
        names = [o.name for o in sess.get_outputs()]
        wanted = {c.activation for c in candidates}
        squared_error = np.zeros(len(candidates))
        squared_norm = np.zeros(len(candidates))
        for feeds in batches:
            values = dict(zip(names, sess.run(None, dict(feeds)), strict=True))
            acts = {n: values[n] for n in wanted}
            for i, c in enumerate(candidates):
                x = acts[c.activation].astype(np.float32).reshape(-1, c.weight.shape[0])
                exact = x @ c.weight
                rounded = _fake_uint8(x) @ _fake_int8(c.weight, per_channel, reduce_range)
                squared_error[i] += float(np.square(rounded - exact).sum())
                squared_norm[i] += float(np.square(exact).sum())
    finally:
        probe_path.unlink(missing_ok=True)
    errors = [
        LayerError(c.node, module_path_of_node(c.node) or c.node, math.sqrt(e / n) if n > 0 else 0.0)
        for c, e, n in zip(candidates, squared_error, squared_norm, strict=True)
    ]
    return sorted(errors, key=lambda e: -e.error)


def outliers(errors: list[LayerError]) -> list[LayerError]:
    """The layers whose int8 error stands far above the rest, worst first, at most a fraction of them."""
    if len(errors) < 2:
        return []
    median = float(np.median([e.error for e in errors]))
    limit = max(1, math.floor(MAX_FLOAT_FRACTION * len(errors)))
    return [e for e in errors if e.error > max(OUTLIER_FACTOR * median, MIN_ERROR)][:limit]


def sample_batches(
    inputs: Mapping[str, np.ndarray], samples: int = SAMPLES, batch: int = BATCH
) -> list[dict[str, np.ndarray]]:
    """Up to `samples` samples of every input, in batches as the model would be fed them."""
    count = min(samples, *(len(a) for a in inputs.values()))
    return [
        {
            name: np.ascontiguousarray(a[start : start + batch], dtype=a.dtype if a.dtype.kind in "iu" else np.float32)
            for name, a in inputs.items()
        }
        for start in range(0, count, batch)
    ]


def output_error(float_path: Path, int8_path: Path, batches: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Relative error ||int8 - float|| / ||float|| of the model's first output over the batches."""
    reference, quantized = session(float_path), session(int8_path)
    error = norm = 0.0
    for feeds in batches:
        exact = np.asarray(reference.run(None, dict(feeds))[0], dtype=np.float64)
        rounded = np.asarray(quantized.run(None, dict(feeds))[0], dtype=np.float64)
        error += float(np.square(rounded - exact).sum())
        norm += float(np.square(exact).sum())
    return math.sqrt(error / norm) if norm > 0 else 0.0
