"""(g) Real architectures through the worker's loader: export to .pt2, load as the worker does,
prune (L1Structured 0.5), then StaticInt8; each against the libraries composed by hand: the same
model pruned by Torch-Pruning directly, exported with torch.onnx.export and quantized by
onnxruntime's own quant_pre_process + quantize_static (QDQ, per-channel, MinMax). MACs, parameters,
output agreement and batch-1 latency at 1 and 2 threads, interleaved medians.

Random weights (MACs, parameters and latency do not depend on them). Inputs are reduced so the
whole run stays within minutes on a shared 2-core machine: the vision models at 96x96, the BERT
encoder a 4-layer, 512-wide BERT at 64 tokens.

Rows are candidates: `measure` builds a dict of named models (torch modules or ONNX files) and one
row each; another pruning variant is one more entry there.
"""

from __future__ import annotations

import collections
import copy
import functools
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
import torchvision
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common import (
    Medians,
    cpu_flags,
    interleaved_medians,
    job_context,
    load_average,
    table_section,
    workdir,
    write_report,
)
from kompression.api.v1alpha1 import ModelSource, PruneStep, QuantizeStep
from kompression.worker.formats import loader
from kompression.worker.model import Dataset, DataSets, OnnxModel, TorchModel
from kompression.worker.techniques import TECHNIQUES

IMAGE = 96
TOKENS = 64
VOCAB = 1000
# Blocks per candidate: at 9, two identical candidates differed by up to a third on the shared 2-core VM.
REPEATS = 25
# Each candidate is timed at both, torch and onnxruntime alike, in one interleaved run per count.
THREADS = (1, 2)
CALIBRATION = 16
AGREEMENT_SAMPLES = 8
AA_FP32 = "A/A: Torch-Pruning fp32, a second copy"
AA_INT8 = "A/A: by-hand int8, a second session"


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
    """Kompression's StaticInt8 step, as the pipeline calls it."""
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


class _Calibration(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
    def __init__(self, samples: np.ndarray) -> None:
        self._samples = iter([{"x": samples[i : i + 1]} for i in range(len(samples))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._samples, None)


def hand_int8(module: nn.Module, x: torch.Tensor, shape: list[int], work: Path) -> Path:
    """The libraries alone: torch.onnx.export (TorchScript exporter, opset 18, dynamic batch), then
    onnxruntime's quant_pre_process with its defaults and quantize_static: QDQ, per-channel, MinMax,
    uint8 activations and int8 weights (U8S8, the pair onnxruntime's docs recommend on x86; its
    default S8S8 ran several times slower here)."""
    fp32, prepared, out = work / "hand.fp32.onnx", work / "hand.prepared.onnx", work / "hand.int8.onnx"
    with torch.no_grad():
        torch.onnx.export(
            module,
            (x,),
            str(fp32),
            input_names=["x"],
            output_names=["output"],
            opset_version=18,
            dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared),
        str(out),
        _Calibration(_inputs(shape, CALIBRATION).numpy()),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fused_ops(path: Path) -> list[str]:
    """The op types onnxruntime runs after its graph optimizations (fusions, QDQ to QLinear ops)."""
    import onnx
    import onnxruntime as ort

    optimized = path.with_suffix(".optimized.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(str(optimized)).graph.node]


def graph_difference(ours: Path, hand: Path) -> str:
    """How the int8 graphs onnxruntime runs differ, node by node, after its fusions."""
    a, b = fused_ops(ours), fused_ops(hand)
    if a == b:
        return f"the same {len(a)} nodes in the same order after onnxruntime's fusions"
    more, fewer = collections.Counter(a) - collections.Counter(b), collections.Counter(b) - collections.Counter(a)
    listed = ", ".join([*(f"+{n} {op}" for op, n in more.items()), *(f"-{n} {op}" for op, n in fewer.items())])
    return f"{len(a)} nodes against {len(b)} after onnxruntime's fusions ({listed or 'same ops, other order'})"


def aten_ops(module: nn.Module, x: torch.Tensor) -> collections.Counter[str]:
    """The aten operators one call runs, counted by torch's profiler at 1 thread."""
    torch.set_num_threads(1)
    with torch.inference_mode():
        module(x)
        with torch.profiler.profile() as prof:
            module(x)
    return collections.Counter({event.key: event.count for event in prof.key_averages()})


def aten_difference(ours: nn.Module, hand: nn.Module, x: torch.Tensor) -> str:
    """How the pruned fp32 models differ in what torch runs: the aten operators of one call."""
    a, b = aten_ops(ours, x), aten_ops(hand, x)
    if a == b:
        return f"the same {sum(a.values())} aten calls"
    more, fewer = a - b, b - a
    listed = ", ".join([*(f"+{n} {op}" for op, n in more.items()), *(f"-{n} {op}" for op, n in fewer.items())])
    return f"{sum(a.values())} aten calls against {sum(b.values())} ({listed})"


Candidate = nn.Module | Path


def outputs(candidate: Candidate, feed: torch.Tensor) -> np.ndarray:
    if isinstance(candidate, Path):
        session = ort_session(candidate, 1)
        return np.asarray(session.run(None, {session.get_inputs()[0].name: feed.numpy()})[0])
    with torch.inference_mode():
        return candidate(feed).float().numpy()  # type: ignore[no-any-return]


def agreement(candidate: Candidate, reference: Candidate, feed: torch.Tensor) -> str:
    """Relative L2 error of the outputs, and how often the top class agrees, on held-out inputs."""
    got, want = outputs(candidate, feed), outputs(reference, feed)
    if not np.linalg.norm(want):
        return "- (the reference's outputs are all zero: torchvision's ViT head starts at zero)"
    error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    top1 = float((got.argmax(axis=-1) == want.argmax(axis=-1)).mean())
    return f"{error:.3f} / {top1:.2f}"


Times = dict[int, dict[str, Medians]]


def time_candidates(candidates: dict[str, Candidate], x: torch.Tensor) -> Times:
    """Batch-1 medians of every candidate at each thread count, all interleaved in one run per count."""
    feed = x.numpy()
    times: Times = {}
    for threads in THREADS:
        torch.set_num_threads(threads)
        calls: dict[str, Callable[[], Any]] = {}
        for name, candidate in candidates.items():
            if isinstance(candidate, Path):
                session = ort_session(candidate, threads)
                calls[name] = functools.partial(session.run, None, {session.get_inputs()[0].name: feed})
            else:
                calls[name] = lambda m=candidate: m(x)
        with torch.inference_mode():
            times[threads] = interleaved_medians(calls, REPEATS, inner=3, warmup=2, settle_s=0.05, rewarm_s=0.05)
    return times


def figures(medians: dict[int, Medians]) -> list[float]:
    """Wall ms at each thread count, then the 1-thread run's CPU ms (its work alone: see Medians)."""
    return [*(medians[t].wall_ms for t in THREADS), medians[1].thread_cpu_ms]


def ratio_values(times: Times, ours: str, theirs: str) -> list[float]:
    """`ours` over `theirs` in each of figures(): 1 thread, 2 threads, 1-thread CPU."""
    mine, other = figures({t: times[t][ours] for t in THREADS}), figures({t: times[t][theirs] for t in THREADS})
    return [a / b for a, b in zip(mine, other, strict=True)]


def ratios(times: Times, ours: str, theirs: str) -> str:
    """ratio_values as "1t / 2t / 1t CPU"."""
    return " / ".join(f"{r:.2f}" for r in ratio_values(times, ours, theirs))


def measure(
    name: str, build: Callable[[], nn.Module], shape: list[int]
) -> tuple[list[list[object]], str, list[tuple[float, float]]]:
    torch.manual_seed(0)
    work = workdir()
    eager = _logits(build().eval())
    x = _inputs(shape, 1)
    held_out = _inputs(shape, AGREEMENT_SAMPLES)
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

    # name -> (model, the model its MACs and parameters are those of, the model it is compared with)
    candidates: dict[str, tuple[Candidate, nn.Module, Candidate]] = {
        "dense fp32 (torch eager)": (eager, loaded.module, eager),
        "Kompression L1Structured 0.5, fp32": (ours, ours, ours),
        "Kompression pruned + StaticInt8": (int8(ours, x, shape, work, "ours").path, ours, ours),
    }
    hand = "Torch-Pruning direct 0.5, fp32"
    hand_int8_name = "Torch-Pruning + onnxruntime quantize_static (by hand)"
    graphs = ""
    if direct is not None:
        # Random weights: a pruned model's outputs say nothing against the dense one's, but the two
        # pruners given the same importance and ratio should remove the same channels.
        candidates["Kompression L1Structured 0.5, fp32"] = (ours, ours, direct)
        candidates[hand] = (direct, direct, direct)
        candidates[hand_int8_name] = (hand_int8(direct, x, shape, work), direct, direct)
        # The same pruned model through Kompression's step: separates the recipe from the graph.
        candidates["Torch-Pruning + Kompression StaticInt8"] = (
            int8(direct, x, shape, work, "direct").path,
            direct,
            direct,
        )
        ours_int8, hand_int8_path = candidates["Kompression pruned + StaticInt8"][0], candidates[hand_int8_name][0]
        assert isinstance(ours_int8, Path) and isinstance(hand_int8_path, Path)
        graphs = (
            f"; fp32, Kompression against by hand: {aten_difference(ours, direct, x)}"
            f"; int8 graphs, Kompression against by hand: {graph_difference(ours_int8, hand_int8_path)}"
        )
    timed: dict[str, Candidate] = {k: c[0] for k, c in candidates.items()}
    if direct is not None:
        # A/A controls, timed but not tabled: a second copy of each by-hand candidate. Their ratio to
        # the first copy is what this run's noise alone makes of two identical candidates.
        timed[AA_FP32] = copy.deepcopy(direct)
        timed[AA_INT8] = candidates[hand_int8_name][0]
    times = time_candidates(timed, x)
    # The two pruned fp32 models again, alone with the A/A copy: in the run above they share their
    # blocks with the dense model and the onnxruntime sessions, whose caches and threads they meet.
    pair = time_candidates({"ours": ours, "hand": direct, "copy": timed[AA_FP32]}, x) if direct is not None else {}
    # Dense MACs are counted on the loaded graph: eager ViT runs attention in one fused op that the
    # counter has no formula for, so the eager count would leave attention out.
    versus = {"Kompression L1Structured 0.5, fp32": hand, "Kompression pruned + StaticInt8": hand_int8_name}
    rows: list[list[object]] = []
    for variant, (candidate, sized, reference) in candidates.items():
        against = versus.get(variant) if direct is not None else None
        ratio = ratios(times, variant, against) if against else ""
        rows.append(
            [
                name,
                variant,
                f"{gmacs(sized, x):.3f}",
                f"{mparams(sized):.2f}",
                *(f"{ms:.2f}" for ms in figures({t: times[t][variant] for t in THREADS})),
                ratio,
                "" if candidate is reference else agreement(candidate, reference, held_out),
            ]
        )
    if direct is None:
        rows.append([name, f"Torch-Pruning direct 0.5: failed ({failure})", *["-"] * 7])
    notes = str(result.notes.get("fixedWidthLayers", 0))
    heads = result.notes.get("removedHeads")
    control = ""
    controls: list[tuple[float, float]] = []
    if direct is not None:
        # Each A/A copy over its original at 1 thread: (wall-clock ratio, CPU-time ratio).
        controls = [
            (r[0], r[-1])
            for r in (
                ratio_values(times, AA_FP32, hand),
                ratio_values(times, AA_INT8, hand_int8_name),
                ratio_values(pair, "copy", "hand"),
            )
        ]
        fp32_aa, int8_aa = ratios(times, AA_FP32, hand), ratios(times, AA_INT8, hand_int8_name)
        control = f"; A/A control, by hand against its own copy, fp32 {fp32_aa} and int8 {int8_aa}"
        alone, alone_aa = ratios(pair, "ours", "hand"), ratios(pair, "copy", "hand")
        control += f"; the pruned fp32 models timed alone, Kompression / by hand {alone} (its A/A {alone_aa})"
    timing = (
        f"{name}: load {load_s:.1f} s, prune {prune_s:.1f} s, layers with graph-fixed widths {notes}"
        + (f", attention heads removed {heads}" if heads else "")
        + f"{control}{graphs}"
    )
    return rows, timing, controls


def main() -> None:
    rows: list[list[object]] = []
    timings: list[str] = []
    controls: list[tuple[float, float]] = []
    started = time.monotonic()
    for name, (build, shape) in ARCHITECTURES.items():
        print(f"-- {name}", flush=True)
        arch_rows, timing, arch_controls = measure(name, build, shape)
        rows += arch_rows
        timings.append(timing)
        controls += arch_controls
    load = load_average()
    write_report(
        "architectures",
        table_section(
            "(g) Real architectures through the loader: structured pruning at 50% and int8, vs Torch-Pruning and onnxruntime by hand",
            [
                "model",
                "variant",
                "GMACs",
                "params (M)",
                *(f"batch-1 ms, {t} thread{'s' if t > 1 else ''}" for t in THREADS),
                "batch-1 CPU ms, 1 thread",
                "Kompression / by hand (" + " / ".join(f"{t}t" for t in THREADS) + " / 1t CPU)",
                "vs reference: rel. error / top-1 agreement",
            ],
            rows,
            textwrap.dedent(f"""
    CPU flags: {cpu_flags()}. Each model is exported with `torch.export` (dynamic batch), saved as
    `.pt2` and loaded with the worker's loader (`loader.load_model`: the graph rebuilt with real layers,
    checked against the program to 1e-5), then pruned by the worker's prune step (`L1Structured`,
    sparsity 0.5, the classifier kept, the faster memory layout chosen by timing), then quantized by the
    worker's `StaticInt8` step (QDQ, MinMax, {CALIBRATION} random calibration samples). "By hand" is
    the libraries alone: `tp.pruner.BasePruner` with the same importance and ratio on the eager model
    (classifier kept), `torch.onnx.export` (TorchScript exporter, opset 18), then onnxruntime's own
    `quant_pre_process` and `quantize_static` (QDQ, per-channel, MinMax, uint8 activations and int8
    weights, the same calibration samples). "Torch-Pruning + Kompression StaticInt8" runs the hand-pruned model through
    Kompression's step, which separates the int8 recipe from the pruned graph.

    Latency: batch 1, median of {REPEATS} interleaved blocks of 3 calls per candidate, every candidate
    of a model in one interleaved run per thread count (torch and onnxruntime both at that count);
    int8 rows run in onnxruntime, the others in torch eager. The 1-thread run also records each
    call's CPU time on the calling thread (`time.thread_time`, the "CPU ms" column): at 1 thread
    torch and onnxruntime both compute inline on that thread, so the figure is the candidate's own
    cycles, without the time another process held the core, which moves the wall-clock medians on
    this shared machine. The ratio column is Kompression's row over the by-hand row of the same kind
    in the same run, in each of the three figures (<= 1.00: Kompression at least as fast).
    The last column compares Kompression's pruned model with Torch-Pruning's (the same channels
    removed gives 0.000 / 1.00) and each int8 model with the fp32 model it was quantized from, on
    {AGREEMENT_SAMPLES} held-out random inputs: relative L2 error of the outputs and the fraction of
    inputs whose top class agrees. MACs are counted by
    `torch.utils.flop_counter` at the aten level (matmuls of attention included), the dense figure on
    the loaded graph: eager ViT's fused attention op has no counter formula.

    Reduced inputs to bound the run: vision models at {IMAGE}x{IMAGE} (ViT-B/16 built for that size,
    so {(IMAGE // 16) ** 2} patches), BERT with 4 layers of width 512 at {TOKENS} tokens. Random weights.
    The machine is a shared 2-core one (other jobs ran during the run), so only the ratios within a run
    mean anything.

    In the transformers Kompression removes whole attention heads (the query, key, value and output
    projections of each head, the reshape sizes in the rebuilt graph rewritten to the heads kept) and
    the MLP widths; the widths the graph itself fixes (the residual stream, reshaped in ViT's patch
    embedding) stay. On BERT it then removes what Torch-Pruning removes (the same GMACs and
    parameters). Torch-Pruning called directly on the eager model fails on torchvision's ViT (its
    `hidden_dim` reshape).

    A/A controls: in every model's run the by-hand fp32 model and the by-hand int8 file are timed a
    second time (a copy, a second session) among the other candidates, and the line per model below
    gives that copy's ratio to the original, in all three figures. Two identical candidates differ
    by that much from noise alone, so a Kompression ratio above 1.00 but within the control's
    distance from 1.00 is on par, not slower. The two pruned fp32 models are then timed once more
    alone, with the A/A copy and without the dense model and the onnxruntime sessions, whose caches
    and threads the first run shares with them (the "timed alone" figures below). The CPU-time
    figures tell two kinds of noise apart: another process taking the core moves a copy's wall time
    but not its CPU time, while a difference in the copies themselves (where each one's tensors and
    buffers land in memory, say) moves both, and no choice of clock removes it. In this run the A/A
    copies at 1 thread came out at {min(w for w, _ in controls):.2f} to {max(w for w, _ in controls):.2f}
    of their originals in wall time and {min(c for _, c in controls):.2f} to {max(c for _, c in controls):.2f}
    in CPU time. A single run's ratio above 1.00 by less than the controls' spread is not a slower
    model.

    What differed from the hand composition (issue 22), per model in the lines below: the aten calls
    torch makes for the two pruned fp32 models, and the int8 graphs onnxruntime runs after its
    fusions, node by node. For the five CNNs the int8 graphs are the same nodes in the same order
    (in EfficientNet-B0 the same QLinearConv, QLinearSigmoid and QLinearMul around SiLU and the
    squeeze-excitation multiply; in ConvNeXt-Tiny the same float LayerNormalization and GELU between
    Q/DQ pairs and the same transposes, the rebuilt graph adding none), and the fp32 models make the
    same aten calls, or differ only by the one copy of the input into the channels-last layout
    Kompression chose and by views spelled as strided views. The rebuilt graph used to call the ops
    between its layers (ConvNeXt-Tiny's permutes, layer-scale multiplies and residual adds) as aten
    overloads, a few microseconds more each from Python than the same op as a method; it now calls
    them as methods and torch functions, as the eager model does. BERT used to be the exception:
    the program transformers exports builds an attention mask that is all True (an arange, a
    comparison and an expand to the batch) and applies it in every layer, which the eager model
    skips; the loader now drops such a mask, so Kompression's BERT computes no mask and its int8
    graph is smaller than the one by hand (fewer nodes in the line below).

    """)
            + "\n".join(f"- {t}" for t in timings)
            + f"\n- whole run {time.monotonic() - started:.0f} s; load average (1/5/15 min) at the end: {load}\n",
        ),
    )


if __name__ == "__main__":
    main()
