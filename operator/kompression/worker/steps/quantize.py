"""Quantization that runs low-precision kernels: onnxruntime QDQ int8, torch fp16/bf16, fp8 GEMMs.

Int8 goes through ONNX because onnxruntime's int8 kernels are what make a CPU model faster;
torch's own fake-quantized modules would only be smaller.
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from kompression.api.v1alpha1 import QuantizeStep
from kompression.worker.errors import DataError, RuntimeMissing, StepInvalid
from kompression.worker.model import Dataset, Model, OnnxModel, TorchModel
from kompression.worker.steps.fp8 import FP8_MIN_CAPABILITY, convert_to_fp8
from kompression.worker.steps.modules import require_torch
from kompression.worker.steps.onnx_io import export_onnx, nodes_of_modules
from kompression.worker.steps.sensitivity import (
    FLOAT_MIN_GAIN,
    LayerError,
    layer_errors,
    outliers,
    output_error,
    sample_batches,
)
from kompression.worker.techniques import StepContext, StepResult

CALIBRATORS = {
    "MinMax": CalibrationMethod.MinMax,
    "Percentile": CalibrationMethod.Percentile,
    "Entropy": CalibrationMethod.Entropy,
}
# Dynamic quantization targets weight-heavy matrix products; onnxruntime's CPU ConvInteger only
# takes uint8 weights, so convolutions stay float there (use StaticInt8 for CNNs).
DYNAMIC_OP_TYPES = ["MatMul", "Gemm", "Attention", "LSTM"]
# A smaller lookup table saves less than its extra Gather, Cast and Mul cost per call.
EMBEDDING_MIN_ELEMENTS = 65536


def quantize(model: Model, ctx: StepContext[QuantizeStep]) -> StepResult:
    cfg = ctx.config
    return _METHODS[cfg.method](model, cfg, ctx)


def float_onnx(model: Model, ctx: StepContext[QuantizeStep]) -> OnnxModel:
    """The model as a float ONNX file: exported from torch, or passed through when already ONNX."""
    if isinstance(model, OnnxModel):
        return model
    torch_model = require_torch(model, ctx)
    names = [i.name for i in ctx.inputs]
    return export_onnx(torch_model, ctx.workdir / "model.float.onnx", names, declared=ctx.inputs)


class ArrayCalibrationReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
    """Feeds a Dataset to onnxruntime's calibrator in batches, every input under its graph name
    (the data's inputs in declared order, which is the graph's input order)."""

    def __init__(self, data: Dataset, input_names: Sequence[str], batch_size: int) -> None:
        if len(input_names) != len(data.inputs):
            raise StepInvalid(
                f"the ONNX graph takes {len(input_names)} input(s) {list(input_names)} but the calibration data "
                f"holds {len(data.inputs)} ({list(data.inputs)})"
            )
        self._data = data
        self._input_names = list(input_names)
        self._batch_size = batch_size
        self._batches = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self._data), self._batch_size):
            chunk = self._data.rows(slice(start, start + self._batch_size))
            # Token ids and masks stay integers; every float input is fed as float32.
            yield {
                name: a if a.dtype.kind in "iu" else a.astype(np.float32)
                for name, a in zip(self._input_names, chunk, strict=True)
            }

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def has_vnni() -> bool:
    """Whether x86 int8 dot products are exact (VNNI/AMX); without them u8s8 can saturate."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _excluded_nodes(path: Path, cfg: QuantizeStep, step: str) -> list[str]:
    if not cfg.excludeLayers:
        return []
    found = nodes_of_modules(path, cfg.excludeLayers)
    missing = [name for name, nodes in found.items() if not nodes]
    if missing:
        raise StepInvalid(f"step {step}: excludeLayers {', '.join(missing)} match no node of the ONNX graph")
    return sorted({node for nodes in found.values() for node in nodes})


Notes = dict[str, float | int | str]


def _inputs_by_name(data: Dataset, names: list[str]) -> dict[str, np.ndarray]:
    """The data set's arrays keyed by the model's input names."""
    return {name: data.inputs[name] for name in names if name in data.inputs}


def _quantize_keeping_float(
    cfg: QuantizeStep,
    ctx: StepContext[QuantizeStep],
    graph: Path,
    *,
    input_names: list[str],
    out: Path,
    reduce_range: bool,
    run: Callable[[list[str], Path], Notes],
) -> Notes:
    """run(float_nodes, path) quantizes `graph` into path and says how it stored it (the notes of the
    file kept are returned). The step keeps float its excludeLayers, else
    the layers whose int8 error stands out, measured on the calibration (else evaluation) data, when
    that lowers the model's measured output error. An Auto trial's ctx.extra_float_layers more, the
    next worst by the same measurement, are added to those."""
    data = ctx.data.calibration if ctx.data.calibration is not None else ctx.data.evaluation
    batches = sample_batches(_inputs_by_name(data, input_names)) if data is not None else []
    own = _excluded_nodes(graph, cfg, ctx.name)
    errors: list[LayerError] = []
    notes: Notes = {}
    if batches and (not cfg.excludeLayers or ctx.extra_float_layers):
        ctx.report_progress(0.1, "measuring each layer's int8 error")
        errors = layer_errors(
            graph, batches, skip=set(own), per_channel=cfg.per_channel_or_default, reduce_range=reduce_range
        )
        median = float(np.median([e.error for e in errors])) if errors else 0.0
        notes = {"measuredLayers": len(errors), "medianLayerError": round(median, 4)}
    quantized = False
    if cfg.excludeLayers:
        notes |= {"floatLayers": ", ".join(cfg.excludeLayers), "floatLayersChosenBy": "excludeLayers"}
    elif not batches:
        notes["floatLayers"] = "none: no calibration or evaluation data to measure layer errors on"
    else:
        own, chosen = _measured_float_layers(errors, ctx, graph=graph, batches=batches, out=out, run=run)
        notes |= chosen
        quantized = True
    added = [e for e in errors if e.node not in own][: ctx.extra_float_layers]
    if added or not quantized:
        ctx.report_progress(
            0.7, "quantizing" if not added else f"quantizing with {len(own) + len(added)} layers in float"
        )
        notes |= run([*own, *(e.node for e in added)], out)
    if added:
        listed = ", ".join(f"{e.layer} ({e.error:.4f})" for e in added)
        notes["floatLayers"] = f"{notes['floatLayers']}, {listed}" if own else listed
        notes["floatLayersAddedByAuto"] = listed
    return notes


def _measured_float_layers(
    errors: list[LayerError],
    ctx: StepContext[QuantizeStep],
    *,
    graph: Path,
    batches: list[dict[str, np.ndarray]],
    out: Path,
    run: Callable[[list[str], Path], Notes],
) -> tuple[list[str], Notes]:
    """The nodes of the layers whose int8 error stands out, kept float in `out` only when that divides
    the model's output error by FLOAT_MIN_GAIN; `out` is quantized either way."""
    chosen = outliers(errors)
    ctx.report_progress(0.4, "quantizing")
    stored = run([], out)
    if not chosen:
        worst = f"; the worst is {errors[0].layer} at {errors[0].error:.4f}" if errors else ""
        return [], {**stored, "floatLayers": f"none: no layer's int8 error stands out{worst}"}
    all_int8 = output_error(graph, out, batches)
    ctx.report_progress(0.7, f"quantizing with {len(chosen)} layers in float")
    trial = out.with_name(out.stem + ".fallback.onnx")
    stored_trial = run([e.node for e in chosen], trial)
    fallback = output_error(graph, trial, batches)
    listed = ", ".join(f"{e.layer} ({e.error:.4f})" for e in chosen)
    notes: Notes = {"outputErrorAllInt8": round(all_int8, 4), "outputErrorWithFloatLayers": round(fallback, 4)}
    if fallback * FLOAT_MIN_GAIN > all_int8:
        trial.unlink()
        return [], {
            **stored,
            **notes,
            "floatLayers": f"none: keeping {listed} float did not divide the output error by {FLOAT_MIN_GAIN:g}",
        }
    trial.replace(out)
    return [e.node for e in chosen], {
        **stored_trial,
        **notes,
        "floatLayers": listed,
        "floatLayersChosenBy": "measured int8 error (in brackets)",
    }


def _feed_float(path: Path, float_nodes: list[str]) -> None:
    """Rewire each float node of a QDQ graph to read its inputs before their Quantize/Dequantize
    pair. quantize_static leaves an excluded node's weight float, but the activation it shares with
    its int8 neighbours still passes through their Q/DQ, so the outliers' rounding would remain."""
    proto = onnx.load(str(path))
    producer = {out: node for node in proto.graph.node for out in node.output}
    wanted = set(float_nodes)
    for node in proto.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
    while orphans := [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                      and not any(out in used for out in n.output)]:  # fmt: skip
        for orphan in orphans:
            proto.graph.node.remove(orphan)
        used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
    onnx.save(proto, str(path))


def _int8_embeddings(path: Path, float_nodes: list[str]) -> int:
    """Store each float lookup table that a Gather alone reads (a token embedding) as int8 rows with
    one scale per row, dequantizing only the rows looked up: Gather(table) becomes
    Cast(Gather(int8 table)) * Gather(row scales). A per-row scale follows each token's own range, so
    rare tokens with large entries do not coarsen the others, as one scale for the whole table would;
    dequantizing the whole table up front would cost a pass over it on every call. Tables in
    float_nodes (excludeLayers) stay float. Returns how many tables were converted."""
    proto = onnx.load(str(path))
    graph = proto.graph
    tables = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    skip = set(float_nodes)
    nodes: list[onnx.NodeProto] = []
    converted = 0
    for node in graph.node:
        table = tables.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (
            table is None
            or node.name in skip
            or axis != 0
            or readers[table.name] != 1
            or table.data_type != onnx.TensorProto.FLOAT
            or len(table.dims) != 2
            or int(np.prod(table.dims)) < EMBEDDING_MIN_ELEMENTS
        ):
            nodes.append(node)
            continue
        weights = numpy_helper.to_array(table)
        peak = np.abs(weights).max(axis=1, keepdims=True)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        codes = np.clip(np.round(weights / scale), -127, 127).astype(np.int8)
        # Names under the node's own, apart from the X_scale/X_zero_point the quantizer gives activations.
        base, ids, out = table.name, node.input[1], node.output[0]
        codes_of, scales_of, rows, row_scales, widened = (
            f"{base}/int8_rows",
            f"{base}/row_scales",
            f"{node.name}/int8_rows",
            f"{node.name}/row_scales",
            f"{node.name}/rows",
        )
        graph.initializer.remove(table)
        graph.initializer.extend([numpy_helper.from_array(codes, codes_of), numpy_helper.from_array(scale, scales_of)])
        nodes += [
            onnx.helper.make_node("Gather", [codes_of, ids], [rows], name=rows),
            onnx.helper.make_node("Gather", [scales_of, ids], [row_scales], name=row_scales),
            onnx.helper.make_node("Cast", [rows], [widened], name=widened, to=onnx.TensorProto.FLOAT),
            onnx.helper.make_node("Mul", [widened, row_scales], [out], name=f"{node.name}/dequantize"),
        ]
        converted += 1
    if converted:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(proto, str(path))
    return converted


def _scalar_weight_zero_points(path: Path) -> int:
    """Give each MatMulInteger whose int8 weight has a zero point of 0 for every column a single 0.
    quantize_dynamic writes per-channel weights with one (symmetric, so zero) zero point per column,
    and onnxruntime runs a weight with a column of zero points on a slower int8 GEMM path than one
    with a single zero point: on all-MiniLM-L6-v2 that made per-channel int8 3-7% slower in all than
    per-tensor, and with one zero point it is as fast. The per-column scales stay and the products
    are identical. Returns how many nodes were changed."""
    proto = onnx.load(str(path))
    graph = proto.graph
    tables = {t.name: t for t in graph.initializer}
    changed = 0
    for node in graph.node:
        zero_point = tables.get(node.input[3]) if node.op_type == "MatMulInteger" and len(node.input) > 3 else None
        if zero_point is None or len(zero_point.dims) != 1 or numpy_helper.to_array(zero_point).any():
            continue
        scalar = f"{zero_point.name}/scalar"
        if scalar not in tables:
            tables[scalar] = numpy_helper.from_array(
                np.zeros((), onnx.helper.tensor_dtype_to_np_dtype(zero_point.data_type)), scalar
            )
            graph.initializer.append(tables[scalar])
        node.input[3] = scalar
        changed += 1
    if changed:
        read = {name for node in graph.node for name in node.input}
        for table in [t for t in graph.initializer if t.name not in read]:
            graph.initializer.remove(table)
        onnx.save(proto, str(path))
    return changed


def _float16_stored(path: Path, float_nodes: list[str]) -> int:
    """Store the large float32 weights that only float-kept layers read as float16, cast back to
    float32 in the graph: onnxruntime folds the Cast into a float32 initializer when the session
    loads, so the layer still computes in float32 and the file carries half the bytes. float16 keeps
    11 significant bits, far finer than the int8 rounding the layer is kept float to avoid. A weight
    beyond float16's range stays float32. Returns how many weights were converted."""
    if not float_nodes:
        return 0
    proto = onnx.load(str(path))
    graph = proto.graph
    wanted = set(float_nodes)
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name)
    converted = 0
    for table in list(graph.initializer):
        if (
            table.data_type != onnx.TensorProto.FLOAT
            or int(np.prod(table.dims)) < EMBEDDING_MIN_ELEMENTS
            or not readers.get(table.name)
            or not readers[table.name] <= wanted
        ):
            continue
        weights = numpy_helper.to_array(table)
        if np.abs(weights).max() > np.finfo(np.float16).max:
            continue
        graph.initializer.remove(table)
        half = f"{table.name}/float16"
        graph.initializer.append(numpy_helper.from_array(weights.astype(np.float16), half))
        graph.node.insert(0, onnx.helper.make_node("Cast", [half], [table.name], name=half, to=onnx.TensorProto.FLOAT))
        converted += 1
    if converted:
        onnx.save(proto, str(path))
    return converted


def _static_int8(model: Model, cfg: QuantizeStep, ctx: StepContext[QuantizeStep]) -> StepResult:
    calibration = ctx.data.calibration
    if calibration is None or len(calibration) == 0:
        raise StepInvalid(f"step {ctx.name}: StaticInt8 needs data.calibration to fix activation ranges")
    if any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in calibration.inputs.values()):
        raise DataError(f"step {ctx.name}: the calibration data contains NaN or infinite values")
    source = float_onnx(model, ctx)
    input_names = source.input_names or [i.name for i in ctx.inputs]
    # Without VNNI, u8s8 products can overflow 16-bit accumulators; 7-bit weights avoid that.
    reduce_range = not has_vnni()
    out = ctx.workdir / "model.int8.onnx"
    # onnxruntime's recommended pre-pass: shape inference and graph folding, so the exporter's
    # Identity-wrapped weights and biases become initializers that QLinearConv fusion can use.
    prepared = ctx.workdir / "model.prepared.onnx"
    quant_pre_process(str(source.path), str(prepared), skip_symbolic_shape=True)

    def run(float_nodes: list[str], path: Path) -> Notes:
        quantize_static(
            str(prepared),
            str(path),
            ArrayCalibrationReader(calibration, input_names, calibration.batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=cfg.per_channel_or_default,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATORS[cfg.calibrator_or_default],
            nodes_to_exclude=float_nodes,
            extra_options={"CalibPercentile": cfg.percentile_or_default} if cfg.calibrator == "Percentile" else {},
        )
        if float_nodes:
            _feed_float(path, float_nodes)
        return {
            "int8Embeddings": _int8_embeddings(path, float_nodes),
            "float16StoredWeights": _float16_stored(path, float_nodes),
        }

    notes: Notes = {
        "format": "ONNX QDQ (onnxruntime int8 kernels)",
        "calibrator": cfg.calibrator_or_default,
        "calibrationSamples": len(calibration),
        "reduceRange": str(reduce_range).lower(),
        "perChannel": str(cfg.per_channel_or_default).lower(),
        **_quantize_keeping_float(
            cfg, ctx, prepared, input_names=input_names, out=out, reduce_range=reduce_range, run=run
        ),
    }
    return StepResult(OnnxModel(out, source.input_names), notes)


def _dynamic_int8(model: Model, cfg: QuantizeStep, ctx: StepContext[QuantizeStep]) -> StepResult:
    source = float_onnx(model, ctx)
    out = ctx.workdir / "model.dynamic-int8.onnx"

    def run(float_nodes: list[str], path: Path) -> Notes:
        # quantize_dynamic first rewrites each Gemm as MatMul + Add under the name NODE_MatMul,
        # and only then matches exclusions: a Gemm's own name alone would leave it int8.
        named = [*float_nodes, *(f"{node}_MatMul" for node in float_nodes)]
        quantize_dynamic(
            str(source.path),
            str(path),
            per_channel=cfg.per_channel_or_default,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=DYNAMIC_OP_TYPES,
            nodes_to_exclude=named,
        )
        return {
            "scalarWeightZeroPoints": _scalar_weight_zero_points(path),
            "int8Embeddings": _int8_embeddings(path, named),
            "float16StoredWeights": _float16_stored(path, named),
        }

    names = source.input_names or [i.name for i in ctx.inputs]
    notes: Notes = {
        "format": "ONNX dynamic int8 (weights int8, activations quantized at run time)",
        "quantizedOpTypes": ", ".join(DYNAMIC_OP_TYPES),
        "perChannel": str(cfg.per_channel_or_default).lower(),
        # quantize_dynamic keeps full-range int8 weights (its reduce_range defaults to off).
        **_quantize_keeping_float(cfg, ctx, source.path, input_names=names, out=out, reduce_range=False, run=run),
    }
    return StepResult(OnnxModel(out, source.input_names), notes)


class LowPrecision(nn.Module):
    """Runs `inner` in a 16-bit dtype while callers keep float32 inputs and outputs."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cast = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        out: torch.Tensor = self.inner(*cast)
        return out.float()


def _half(dtype: torch.dtype) -> Callable[[Model, QuantizeStep, StepContext[QuantizeStep]], StepResult]:
    def cast(model: Model, cfg: QuantizeStep, ctx: StepContext[QuantizeStep]) -> StepResult:
        del cfg
        source = require_torch(model, ctx)
        module = LowPrecision(copy.deepcopy(source.module), dtype).to(ctx.device).eval()
        notes: dict[str, float | int | str] = {"dtype": str(dtype).removeprefix("torch.")}
        if not ctx.device.startswith("cuda"):
            notes["speed"] = "on CPU 16-bit weights halve the size; the speedup needs GPU tensor cores"
        return StepResult(TorchModel(module, source.example_inputs), notes)

    return cast


def _fp8(model: Model, cfg: QuantizeStep, ctx: StepContext[QuantizeStep]) -> StepResult:
    source = require_torch(model, ctx)
    if not (ctx.device.startswith("cuda") and torch.cuda.is_available()):
        raise RuntimeMissing(
            f"step {ctx.name}: FP8 needs an NVIDIA GPU with FP8 tensor cores (compute capability "
            f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or newer: Ada L4/L40, Hopper H100/H200, Blackwell); "
            f"this worker runs on {ctx.device}"
        )
    capability = torch.cuda.get_device_capability()
    if capability < FP8_MIN_CAPABILITY:
        raise RuntimeMissing(
            f"step {ctx.name}: FP8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
            f"{torch.cuda.get_device_name()} has {capability[0]}.{capability[1]}"
        )
    module = copy.deepcopy(source.module).to(ctx.device).eval()
    converted, skipped = convert_to_fp8(module, exclude=set(cfg.excludeLayers))
    if converted == 0:
        raise StepInvalid(
            f"step {ctx.name}: no Linear layer has in and out features that are multiples of 16, which FP8 GEMMs need"
        )
    notes: dict[str, float | int | str] = {"fp8Layers": converted, "format": "float8_e4m3fn, per-tensor scales"}
    if skipped:
        notes["fp8Skipped"] = ", ".join(skipped)[:1000]
    return StepResult(TorchModel(module, source.example_inputs), notes)


_METHODS: dict[str, Callable[[Model, QuantizeStep, StepContext[QuantizeStep]], StepResult]] = {
    "StaticInt8": _static_int8,
    "DynamicInt8": _dynamic_int8,
    "Float16": _half(torch.float16),
    "BFloat16": _half(torch.bfloat16),
    "FP8": _fp8,
}
