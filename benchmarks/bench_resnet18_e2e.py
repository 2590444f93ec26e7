"""(e) prune(L1Structured 0.5) -> StaticInt8 -> onnx on ResNet-18 vs the original in torch eager fp32."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
import torchvision

from common import (
    THREADS,
    direct_static_int8,
    interleaved_ms,
    isolated_ms,
    job_context,
    load_average,
    ort_session,
    table_section,
    workdir,
    write_report,
)
from kompression.worker.model import Dataset, DataSets, Model, OnnxModel, TorchModel
from kompression.worker.steps.onnx_io import export_onnx
from kompression.worker.techniques import TECHNIQUES

STEPS = [
    {"name": "prune", "prune": {"method": "L1Structured", "sparsity": 0.5}},
    {"name": "int8", "quantize": {"method": "StaticInt8"}},
    {"name": "export", "onnx": {}},
]

REPEATS = 15  # calls take 3-40 ms; more short interleaved blocks ride out other processes' bursts
SETTLE_S, REWARM_S = 0.3, 0.05


def direct_composition(original: torch.nn.Module, calib: np.ndarray, work: Path) -> Path:
    """The same three techniques from the libraries themselves: Torch-Pruning, the ONNX exporter,
    onnxruntime's pre-process and quantize_static with Kompression's recipe."""
    pruned = copy.deepcopy(original)
    example = torch.from_numpy(calib[:1])
    tp.pruner.BasePruner(
        pruned,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[pruned.fc],
    ).step()
    fp32 = export_onnx(TorchModel(pruned.eval(), (example,)), work / "direct.fp32.onnx", ["x"]).path
    return direct_static_int8(fp32, work / "direct.int8.onnx", calib)


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    work = workdir()
    original = torchvision.models.resnet18().eval()
    calib = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
    data = DataSets(calibration=Dataset({"x": calib}))
    model: Model = TorchModel(original, (torch.from_numpy(calib[:1]),))
    for step in STEPS:
        ctx = job_context(step, work, [-1, 3, 224, 224], data)
        model = TECHNIQUES[type(ctx.config)](model, ctx).model
    assert isinstance(model, OnnxModel)

    x = calib[:1]
    run_final = functools.partial(ort_session(model.path).run, None, {"x": x})
    run_direct = functools.partial(ort_session(direct_composition(original, calib, work)).run, None, {"x": x})

    def run_eager() -> Any:
        return original(torch.from_numpy(x))

    load_before = load_average()
    with torch.inference_mode():
        times = interleaved_ms(
            {"eager": run_eager, "final": run_final, "direct": run_direct},
            repeats=REPEATS,
            settle_s=SETTLE_S,
            rewarm_s=REWARM_S,
        )
        alone = {"eager": isolated_ms(run_eager), "final": isolated_ms(run_final), "direct": isolated_ms(run_direct)}
    load_after = load_average()
    eager = times["eager"]
    write_report(
        "resnet18_e2e",
        table_section(
            "(e) End to end on ResNet-18 (random weights): prune 0.5 -> StaticInt8 -> onnx, batch 1, 224x224",
            ["model", "interleaved median (ms)", "speedup", "alone median (ms)", "speedup alone"],
            [
                ["original, torch eager fp32", f"{eager:.2f}", "1.0", f"{alone['eager']:.2f}", "1.0"],
                *(
                    [
                        label,
                        f"{times[key]:.2f}",
                        f"{eager / times[key]:.1f}x",
                        f"{alone[key]:.2f}",
                        f"{alone['eager'] / alone[key]:.1f}x",
                    ]
                    for key, label in (
                        ("final", "Kompression's final artifact, onnxruntime int8"),
                        ("direct", "the libraries called directly, same recipe, onnxruntime int8"),
                    )
                ),
            ],
            "Target >= 15x. Two timings of the same models in the same run: interleaved blocks (another "
            f"candidate ran shortly before: each block starts after {SETTLE_S} s idle and {REWARM_S * 1000:.0f} ms of untimed "
            "calls) and alone (60 back-to-back calls after 1 s of warm-up, as a direct benchmark of one library "
            "times it). The direct row is Torch-Pruning, the ONNX exporter, quant_pre_process and quantize_static "
            "called by hand with Kompression's recipe: what the libraries compose to on this machine in this run. "
            "Same input and 2 threads for all; torch under inference_mode, onnxruntime with graph optimization ALL "
            f"and its default thread spinning; timed interleaved, {REPEATS} repetitions x 5 calls, medians of single calls. "
            f"Load average (1/5/15 min) before / after timing: {load_before} | {load_after}.",
        ),
    )


if __name__ == "__main__":
    main()
