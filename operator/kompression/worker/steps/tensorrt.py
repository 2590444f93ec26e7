"""TensorRT engines built with the TensorRT Python API; needs the tensorrt extra and an NVIDIA GPU.

When either is missing the step fails with RuntimeMissing: an engine is only reported if built.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from kompression.api.v1alpha1 import ModelInput, ShapeProfile, TensorRTStep
from kompression.worker.errors import DataError, ModelError, RuntimeMissing, StepInvalid
from kompression.worker.model import Dataset, EngineModel, Model, OnnxModel
from kompression.worker.steps.modules import require_torch
from kompression.worker.steps.onnx_io import export_onnx
from kompression.worker.techniques import StepContext, StepResult

MISSING = (
    "TensorRT is not installed (pip install 'kompression[tensorrt]') or no CUDA GPU is visible; in a cluster, "
    "use the worker image with the tensorrt extra on an NVIDIA GPU node"
)
# The API spells precisions as TensorRT names its builder flags; FP32 needs no flag.
PRECISION_FLAGS = ("FP16", "INT8", "FP8")


def load_tensorrt(step: str) -> ModuleType:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise RuntimeMissing(f"step {step}: {MISSING} (import tensorrt failed: {exc})") from exc
    if not torch.cuda.is_available():
        raise RuntimeMissing(f"step {step}: {MISSING} (torch sees no CUDA device)")
    return trt


def tensorrt_engine(model: Model, ctx: StepContext[TensorRTStep]) -> StepResult:
    cfg = ctx.config
    trt = load_tensorrt(ctx.name)
    onnx_model = model if isinstance(model, OnnxModel) else _export(model, ctx)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_model.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"step {ctx.name}: TensorRT's ONNX parser rejected the model: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspaceMiB << 20)
    notes: dict[str, float | int | str] = {"precision": cfg.precision, "tensorrtVersion": trt.__version__}
    if cfg.precision in PRECISION_FLAGS:
        config.set_flag(getattr(trt.BuilderFlag, cfg.precision))
    _add_profiles(builder, config, network, cfg, ctx)
    if cfg.precision == "INT8":
        config.int8_calibrator = _calibrator(trt, ctx, _calibration_shapes(network, cfg, ctx))
        # TensorRT 10 deprecates implicit (calibrator) INT8 in favour of explicit Q/DQ graphs; an
        # ONNX model from StaticInt8 already carries Q/DQ nodes and TensorRT uses their scales.
        notes["int8"] = "implicit calibration (IInt8EntropyCalibrator2; deprecated in TensorRT 10)"

    cache_path = ctx.workdir / "timing.cache"
    if cfg.timingCache:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"step {ctx.name}: TensorRT could not build an engine (see the worker log)")
    engine_path = ctx.workdir / "model.engine"
    engine_path.write_bytes(bytes(serialized))
    major, minor = torch.cuda.get_device_capability()
    result = StepResult(EngineModel(engine_path, trt.__version__, f"{major}.{minor}"), notes)
    if cfg.timingCache:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        result.extra_artifacts.append(("timing.cache", "TimingCache", cache_path))
    return result


def _export(model: Model, ctx: StepContext[TensorRTStep]) -> OnnxModel:
    torch_model = require_torch(model, ctx)
    names = [i.name for i in ctx.inputs]
    return export_onnx(torch_model, ctx.workdir / "model.onnx", names, declared=ctx.inputs)


Shape = tuple[int, ...]


def profile_shapes(
    declared: Sequence[ModelInput], profile: ShapeProfile, step: str
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) for every model input under one profile. The profile gives the first input's
    shapes; another input of the same rank whose fixed dimensions agree takes the same shapes (an
    attention mask beside token ids), any other takes the profile's batch with its declared dimensions."""
    first = declared[0]
    given = (tuple(profile.min), tuple(profile.opt), tuple(profile.max))
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {first.name: given}
    for spec in declared[1:]:
        same = len(spec.shape) == len(first.shape) and all(
            d in (-1, p) for d, p in zip(spec.shape, profile.opt, strict=True)
        )
        if same:
            shapes[spec.name] = given
            continue
        if any(d == -1 for d in spec.shape[1:]):
            raise StepInvalid(
                f"step {step}: input {spec.name!r} has a dynamic dimension other than the batch ({spec.shape}) "
                f"and a different rank or fixed dimensions than {first.name!r}, which tensorrt.profiles shape; "
                "declare its other dimensions"
            )
        rest = tuple(spec.shape[1:])
        shapes[spec.name] = ((given[0][0], *rest), (given[1][0], *rest), (given[2][0], *rest))
    return shapes


def _add_profiles(builder: Any, config: Any, network: Any, cfg: TensorRTStep, ctx: StepContext[TensorRTStep]) -> None:
    declared = ctx.inputs
    if not cfg.profiles:
        dynamic = [
            network.get_input(i).name
            for i in range(network.num_inputs)
            if any(d < 0 for d in network.get_input(i).shape)
        ]
        if dynamic:
            raise StepInvalid(
                f"step {ctx.name}: input(s) {', '.join(dynamic)} have a dynamic dimension; set tensorrt.profiles"
            )
        return
    for index, shape in enumerate(cfg.profiles):
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile_shapes(declared, shape, ctx.name).items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        if cfg.precision == "INT8" and index == 0:
            # IBuilderConfig.set_calibration_profile (deprecated with implicit INT8 in TensorRT 10,
            # still present): a dynamic-shape network is calibrated at this profile's opt shape.
            config.set_calibration_profile(profile)


def _calibration_shapes(network: Any, cfg: TensorRTStep, ctx: StepContext[TensorRTStep]) -> dict[str, Shape]:
    """The shape of every input TensorRT calibrates at: the first profile's opt shapes, else the static ones."""
    if cfg.profiles:
        shapes = profile_shapes(ctx.inputs, cfg.profiles[0], ctx.name)
        return {name: opt for name, (_, opt, _) in shapes.items()}
    return {
        network.get_input(i).name: tuple(int(d) for d in network.get_input(i).shape) for i in range(network.num_inputs)
    }


def _calibrator(trt: Any, ctx: StepContext[TensorRTStep], shapes: dict[str, Shape]) -> Any:
    data = ctx.data.calibration
    if data is None or len(data) == 0:
        raise StepInvalid(f"step {ctx.name}: tensorrt precision INT8 needs data.calibration")
    # TensorRT reads exactly one opt-shaped batch from each pointer get_batch returns, so the batch
    # is the profile's, not data.calibration.batchSize, and only whole batches are fed.
    batch = next(iter(shapes.values()))[0]
    for name, shape in shapes.items():
        array = data.inputs.get(name)
        if array is None:
            raise DataError(f"step {ctx.name}: data.calibration has no array for input {name!r}")
        if tuple(array.shape[1:]) != shape[1:]:
            raise StepInvalid(
                f"step {ctx.name}: calibration samples of {name!r} have shape {tuple(array.shape[1:])}, but "
                f"TensorRT calibrates at the first profile's opt shape {list(shape)}; make them match"
            )
    if len(data) < batch:
        raise StepInvalid(
            f"step {ctx.name}: TensorRT calibrates in batches of the first profile's opt batch size {batch}, "
            f"but data.calibration has only {len(data)} samples; supply more or lower the opt batch"
        )
    return _make_calibrator(trt)(data, batch, ctx.workdir / "calibration.cache")


def _make_calibrator(trt: Any) -> Any:
    """The calibrator class, defined once TensorRT is importable (it subclasses a TensorRT type)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self, data: Dataset, batch_size: int, cache: Path) -> None:
            super().__init__()
            self._data, self._batch, self._cache, self._next = data, batch_size, cache, 0
            self._device_batch: list[torch.Tensor] = []

        def get_batch_size(self) -> int:
            return self._batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next + self._batch > len(self._data):  # a partial last batch would be read past its end
                return None
            rows = slice(self._next, self._next + self._batch)
            self._next += self._batch
            # Every input TensorRT asks for, by name; kept alive until the next call.
            self._device_batch = [
                torch.from_numpy(np.ascontiguousarray(self._data.inputs[name][rows])).cuda() for name in names
            ]
            return [int(t.data_ptr()) for t in self._device_batch]

        def read_calibration_cache(self) -> bytes | None:
            return self._cache.read_bytes() if self._cache.exists() else None

        def write_calibration_cache(self, cache: Any) -> None:
            self._cache.write_bytes(bytes(cache))

    return EntropyCalibrator
