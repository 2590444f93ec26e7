"""(b) StaticInt8 (onnxruntime QDQ) vs onnxruntime fp32 vs a direct quantize_static call, ResNet-18."""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from common import THREADS, job_context, median_ms, workdir, write_report
from kompression.worker.model import OnnxModel, TorchModel
from kompression.worker.steps import TECHNIQUES
from kompression.worker.steps.base import Dataset, DataSets
from kompression.worker.steps.onnx_io import export_onnx, session

CALIBRATION = 32


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
    direct = work / "direct.int8.onnx"
    quantize_static(str(fp32.path), str(direct), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True)

    x = calib[:1]
    paths = {"onnxruntime fp32": fp32.path, "Kompression StaticInt8": ours.path, "direct quantize_static": direct}
    times = {}
    for name, path in paths.items():
        sess = session(path, threads=THREADS)
        times[name] = median_ms(lambda s=sess: s.run(None, {"x": x}))
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
    ratio = times["Kompression StaticInt8"] / times["direct quantize_static"]
    write_report(
        "int8",
        "(b) StaticInt8 vs fp32 in onnxruntime, ResNet-18 (random weights), batch 1, 224x224",
        ["model", "size (MB)", "size ratio", "median latency (ms)", "latency ratio vs fp32"],
        rows,
        f"Kompression int8 / direct quantize_static latency: {ratio:.3f} (target within 1.10). "
        "Targets: latency ratio <= 0.38, size ratio <= 0.26. All sessions: intra-op threads 2, graph optimization ALL. "
        f"Calibration: {CALIBRATION} random-normal samples (latency does not depend on the ranges). "
        "The direct call uses quantize_static's defaults (QDQ, per-channel, S8S8); Kompression uses U8S8.",
    )


if __name__ == "__main__":
    main()
