"""(b) StaticInt8 (onnxruntime QDQ) vs onnxruntime fp32 vs direct onnxruntime calls, ResNet-18.

The fair baseline is the direct call with the same recipe Kompression uses (quant_pre_process, then
quantize_static with the same format, types, calibrator, per-channel and reduce-range settings);
the plain quantize_static call with its defaults is kept as an extra row.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import torch
import torchvision
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from common import THREADS, interleaved_ms, job_context, load_average, ort_session, workdir, write_report
from kompression.worker.model import OnnxModel, TorchModel
from kompression.worker.steps import TECHNIQUES
from kompression.worker.steps.base import Dataset, DataSets
from kompression.worker.steps.onnx_io import export_onnx
from kompression.worker.steps.quantize import has_vnni

CALIBRATION = 32
# Each call is only 10-40 ms: many short interleaved blocks ride out other processes' bursts.
REPEATS, INNER = 21, 10
# Untimed calls before each block: the previous session's spinning threads stop meanwhile.
REWARM_S = 0.05


class Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, inputs: np.ndarray) -> None:
        self._it = iter([{"x": inputs[i : i + 8]} for i in range(0, len(inputs), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    work = workdir()
    model = TorchModel(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 224, 224),))
    calib = np.random.default_rng(0).standard_normal((CALIBRATION, 3, 224, 224)).astype(np.float32)
    fp32 = export_onnx(model, work / "fp32.onnx", ["x"])

    ctx = job_context(
        {"name": "q", "quantize": {"method": "StaticInt8"}},
        work,
        [-1, 3, 224, 224],
        DataSets(calibration=Dataset(calib)),
    )
    ours = TECHNIQUES["quantize"](model, ctx).model
    assert isinstance(ours, OnnxModel)
    plain = work / "plain.int8.onnx"
    quantize_static(str(fp32.path), str(plain), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True)
    prepared, same = work / "prepared.onnx", work / "same-recipe.int8.onnx"
    quant_pre_process(str(fp32.path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(same),
        Reader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=not has_vnni(),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )

    x = calib[:1]
    paths = {
        "onnxruntime fp32": fp32.path,
        "Kompression StaticInt8": ours.path,
        "direct quant_pre_process + quantize_static, same settings": same,
        "direct quantize_static, defaults, no pre-process": plain,
    }
    sessions = {name: ort_session(path) for name, path in paths.items()}
    load_before = load_average()
    times = interleaved_ms(
        {name: functools.partial(s.run, None, {"x": x}) for name, s in sessions.items()},
        repeats=REPEATS,
        inner=INNER,
        rewarm_s=REWARM_S,
    )
    load_after = load_average()
    base_t, base_s = times["onnxruntime fp32"], fp32.path.stat().st_size
    rows = [
        [
            name,
            f"{path.stat().st_size / 1e6:.1f}",
            f"{path.stat().st_size / base_s:.3f}",
            f"{times[name]:.2f}",
            f"{times[name] / base_t:.3f}",
        ]
        for name, path in paths.items()
    ]
    # The same recipe should give the same graph; if it does, any latency gap is measurement noise.
    identical = onnx.load(str(ours.path)).graph == onnx.load(str(same)).graph
    fair = times["Kompression StaticInt8"] / times["direct quant_pre_process + quantize_static, same settings"]
    write_report(
        "int8",
        "(b) StaticInt8 vs fp32 in onnxruntime, ResNet-18 (random weights), batch 1, 224x224",
        ["model", "size (MB)", "size ratio", "median latency (ms)", "latency ratio vs fp32"],
        rows,
        f"Kompression int8 / direct call with the same recipe: {fair:.3f} (target within 1.10); the two graphs are "
        f"{'identical' if identical else 'different'}. "
        "Targets: latency ratio <= 0.38, size ratio <= 0.26. All sessions: intra-op threads 2, graph "
        "optimization ALL, onnxruntime's default thread spinning; timed interleaved (A,B,C,D, then B,C,D,A, ...), "
        f"{REPEATS} repetitions x {INNER} calls, each block after {REWARM_S * 1000:.0f} ms of untimed calls (so the "
        "previous session's spinning threads have stopped), medians of single calls. Calibration: {CALIBRATION} random-normal samples (latency does not depend on the ranges). "
        f"Same recipe: QDQ, U8S8, per-channel, MinMax, reduce_range={not has_vnni()} (this CPU has VNNI: {has_vnni()}). "
        "The plain call uses quantize_static's defaults (QDQ, per-channel, S8S8) without the pre-process, "
        "which leaves the exporter's Identity-wrapped weights unfused. "
        f"Load average (1/5/15 min) before / after timing: {load_before} | {load_after}.",
    )


if __name__ == "__main__":
    main()
