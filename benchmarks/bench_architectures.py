"""(g) Real architectures through the worker's loader: export to .pt2, load as the worker does,
prune (L1Structured 0.5), then StaticInt8; each against the same model pruned by Torch-Pruning
directly. MACs, parameters and batch-1 latency, 1 thread.

Random weights (MACs, parameters and latency do not depend on them). Inputs are reduced so the
whole run stays within minutes on a shared 2-core machine: the vision models at 96x96, the BERT
encoder a 4-layer, 512-wide BERT at 64 tokens.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common import interleaved_ms, job_context, load_average, table_section, workdir, write_report
from kompression.api.v1alpha1 import ModelSource, PruneStep, QuantizeStep
from kompression.worker.formats import loader
from kompression.worker.model import Dataset, DataSets, OnnxModel, TorchModel
from kompression.worker.techniques import TECHNIQUES

IMAGE = 96
TOKENS = 64
VOCAB = 1000
REPEATS = 5
# One thread for torch and onnxruntime alike: on the shared 2-core machine (load average about 10
# while this was written) two-thread torch calls were dominated by OpenMP barrier waits.
THREADS = 1
CALIBRATION = 16


def _bert() -> nn.Module:
    import transformers

    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        intermediate_size=2048,
        max_position_embeddings=TOKENS,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def _vision(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(**kwargs)


ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], list[int]]] = {
    "ResNet-18": (_vision("resnet18"), [-1, 3, IMAGE, IMAGE]),
    "ResNet-50": (_vision("resnet50"), [-1, 3, IMAGE, IMAGE]),
    "MobileNetV3-Large": (_vision("mobilenet_v3_large"), [-1, 3, IMAGE, IMAGE]),
    "EfficientNet-B0": (_vision("efficientnet_b0"), [-1, 3, IMAGE, IMAGE]),
    "ConvNeXt-Tiny": (_vision("convnext_tiny"), [-1, 3, IMAGE, IMAGE]),
    "ViT-B/16": (_vision("vit_b_16", image_size=IMAGE), [-1, 3, IMAGE, IMAGE]),
    "BERT (4x512)": (_bert, [-1, TOKENS]),
}


def _inputs(shape: list[int], n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(n)
    if len(shape) == 2:
        return torch.randint(0, VOCAB, (n, *shape[1:]), generator=generator)
    return torch.randn((n, *shape[1:]), generator=generator)


def gmacs(module: nn.Module, x: torch.Tensor) -> float:
    """MACs from aten-level FLOP counting, the same for an eager model and a rebuilt graph."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    return counter.get_total_flops() / 2e9


def mparams(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _logits(module: nn.Module) -> nn.Module:
    """HuggingFace classifiers return an output object; the direct baseline needs the tensor."""

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return out.logits if hasattr(out, "logits") else out  # type: ignore[no-any-return]

    return Logits().eval()


def _classifier(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last Linear that runs: kept, as Kompression keeps it."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda m, _i, _o: order.append(m)) for m in module.modules() if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        module(x)
    for hook in hooks:
        hook.remove()
    return order[-1]


def direct_prune(eager: nn.Module, x: torch.Tensor) -> tuple[nn.Module | None, str]:
    """Torch-Pruning called directly on the eager model, same importance and ratio."""
    model = copy.deepcopy(eager)
    try:
        pruner = tp.pruner.BasePruner(
            model,
            x,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=0.5,
            ignored_layers=[_classifier(model, x)],
        )
        pruner.step()
        with torch.no_grad():
            model(x)
    except Exception as exc:  # whatever the library raises on a graph it cannot prune
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    return model, ""


def int8(module: nn.Module, x: torch.Tensor, shape: list[int], work: Path, name: str) -> OnnxModel:
    calibration = Dataset({"x": _inputs(shape, CALIBRATION).numpy()})
    ctx = job_context(
        {"name": f"int8-{name}", "quantize": {"method": "StaticInt8", "calibrator": "MinMax"}},
        work / name,
        shape,
        DataSets(calibration=calibration),
    )
    (work / name).mkdir(parents=True, exist_ok=True)
    result = TECHNIQUES[QuantizeStep](TorchModel(module, (x,)), ctx)
    assert isinstance(result.model, OnnxModel)
    return result.model


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(name: str, build: Callable[[], nn.Module], shape: list[int]) -> tuple[list[list[object]], str]:
    torch.manual_seed(0)
    work = workdir()
    eager = _logits(build().eval())
    x = _inputs(shape, 1)
    program = torch.export.export(
        eager, (_inputs(shape, 2),), dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},)
    )
    torch.export.save(program, str(work / "model.pt2"))
    source = ModelSource.model_validate(
        {
            "uri": "file://model.pt2",
            "format": "TorchExport",
            "inputs": [{"name": "x", "shape": shape, "dtype": "int64" if len(shape) == 2 else "float32"}],
        }
    )
    started = time.monotonic()
    loaded = loader.load_model(source, work / "model.pt2")  # the worker's loader: rebuild + parity check
    assert isinstance(loaded, TorchModel)
    load_s = time.monotonic() - started
    ctx = job_context({"name": "p", "prune": {"method": "L1Structured", "sparsity": 0.5}}, work, shape, DataSets())
    started = time.monotonic()
    result = TECHNIQUES[PruneStep](loaded, ctx)
    prune_s = time.monotonic() - started
    assert isinstance(result.model, TorchModel)
    ours = result.model.module.eval()
    direct, failure = direct_prune(eager, x)

    onnx_ours = int8(ours, x, shape, work, "ours")
    onnx_direct = int8(direct, x, shape, work, "direct") if direct is not None else None
    torch_models = {"dense": eager, "ours": ours, **({"direct": direct} if direct is not None else {})}
    sessions = {"ours-int8": ort_session(onnx_ours.path)}
    if onnx_direct is not None:
        sessions["direct-int8"] = ort_session(onnx_direct.path)
    feed = x.numpy()
    torch.set_num_threads(THREADS)

    def torch_call(m: nn.Module) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return m(x)

        return call

    def ort_call(s: Any) -> Callable[[], Any]:
        name_in = s.get_inputs()[0].name
        return lambda: s.run(None, {name_in: feed})

    calls = {k: torch_call(m) for k, m in torch_models.items()} | {k: ort_call(s) for k, s in sessions.items()}
    times = interleaved_ms(calls, REPEATS, inner=3, warmup=2, settle_s=0.05, rewarm_s=0.05)
    dense_ms = times["dense"]
    # The dense model's MACs are counted on the loaded graph: eager ViT runs attention in one fused
    # op that the counter has no formula for, so the eager count would leave attention out.
    macs = {k: gmacs(loaded.module if k == "dense" else m, x) for k, m in torch_models.items()}
    params = {k: mparams(m) for k, m in torch_models.items()}

    def row(variant: str, key: str, size_key: str) -> list[object]:
        return [
            name,
            variant,
            f"{macs[size_key]:.3f}",
            f"{params[size_key]:.2f}",
            f"{times[key]:.2f}",
            f"{dense_ms / times[key]:.2f}x",
        ]

    rows = [
        row("dense fp32 (torch eager)", "dense", "dense"),
        row("Kompression L1Structured 0.5, fp32", "ours", "ours"),
    ]
    if direct is not None:
        rows.append(row("Torch-Pruning direct 0.5, fp32", "direct", "direct"))
    else:
        rows.append([name, f"Torch-Pruning direct 0.5: failed ({failure})", "-", "-", "-", "-"])
    rows.append(row("Kompression pruned + StaticInt8 (onnxruntime)", "ours-int8", "ours"))
    if direct is not None:
        rows.append(row("Torch-Pruning direct + StaticInt8 (onnxruntime)", "direct-int8", "direct"))
    notes = str(result.notes.get("fixedWidthLayers", 0))
    return rows, f"{name}: load {load_s:.1f} s, prune {prune_s:.1f} s, layers with graph-fixed widths {notes}"


def main() -> None:
    torch.set_num_threads(THREADS)
    rows: list[list[object]] = []
    timings: list[str] = []
    started = time.monotonic()
    for name, (build, shape) in ARCHITECTURES.items():
        print(f"-- {name}", flush=True)
        arch_rows, timing = measure(name, build, shape)
        rows += arch_rows
        timings.append(timing)
    load = load_average()
    write_report(
        "architectures",
        table_section(
            "(g) Real architectures through the loader: structured pruning at 50% and int8, vs Torch-Pruning direct",
            ["model", "variant", "GMACs", "params (M)", "batch-1 ms", "speedup vs dense"],
            rows,
            f"""
    Each model is exported with `torch.export` (dynamic batch), saved as `.pt2` and loaded with the
    worker's loader (`loader.load_model`: the graph rebuilt with real layers, checked against the
    program to 1e-5), then pruned by the worker's prune step (`L1Structured`, sparsity 0.5, the
    classifier kept, the faster memory layout chosen by timing). "Torch-Pruning direct" is
    `tp.pruner.BasePruner` with the same importance and ratio on the eager model (classifier kept).
    Int8 is the worker's `StaticInt8` step (onnxruntime QDQ, MinMax, {CALIBRATION} random calibration
    samples) on each pruned model. MACs are counted by `torch.utils.flop_counter` at the aten level
    (matmuls of attention included), the dense figure on the loaded graph: eager ViT's fused attention
    op has no counter formula. The direct rows are counted on the eager models.
    Latency: batch 1, {THREADS} thread(s), median of {REPEATS} interleaved blocks of 3 calls; int8 rows run in
    onnxruntime, the others in torch eager.

    Reduced inputs to bound the run: vision models at {IMAGE}x{IMAGE} (ViT-B/16 built for that size,
    so {(IMAGE // 16) ** 2} patches), BERT with 4 layers of width 512 at {TOKENS} tokens. Random weights.

    In the transformers the graph fixes some widths (attention heads reshaped to constant sizes, the
    residual stream reshaped in ViT's patch embedding), so Kompression prunes the MLP widths only and
    keeps those layers. Torch-Pruning called directly on the eager model fails on torchvision's ViT
    (its `hidden_dim` reshape) and, on BERT, prunes the attention projections too (HuggingFace reshapes
    with -1 heads), which is why it removes more there.

    {chr(10).join("- " + t for t in timings)}
    - whole run {time.monotonic() - started:.0f} s; load average (1/5/15 min) at the end: {load}
    """,
        ),
    )


if __name__ == "__main__":
    main()
