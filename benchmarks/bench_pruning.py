"""(a) Structured pruning vs masks vs dense on ResNet-18, 2 threads: MACs and latency ratios at batch 1 and 8."""

from __future__ import annotations

import copy
import functools

import torch
import torch_pruning as tp
import torchvision
from torch import nn
from torch.nn.utils import prune as torch_prune

from common import THREADS, interleaved_ms, job_context, load_average, table_section, workdir, write_report
from kompression.api.v1alpha1 import PruneStep
from kompression.worker.formats.size import parameter_count
from kompression.worker.model import DataSets, TorchModel
from kompression.worker.techniques import TECHNIQUES

BATCHES = (1, 8)
REPEATS = 25  # more than the default 7: identical models differed by up to 30% over 7 (and 15) on the shared machine


OURS, DIRECT, DENSE_CL = (
    "Kompression L1Structured 0.5",
    "Torch-Pruning direct 0.5",
    "dense, channels-last (layout alone)",
)


def candidates(dense: nn.Module, x: torch.Tensor) -> tuple[dict[str, nn.Module], str]:
    """The models to time, and the memory layout Kompression's prune step chose (by timing)."""
    ctx = job_context(
        {"name": "p", "prune": {"method": "L1Structured", "sparsity": 0.5}}, workdir(), [-1, 3, 224, 224], DataSets()
    )
    result = TECHNIQUES[PruneStep](TorchModel(dense, (x,)), ctx)
    assert isinstance(result.model, TorchModel)

    # The same library called directly with the same importance and ratio: Kompression's overhead
    # (if any) shows as a difference between these two rows.
    direct = copy.deepcopy(dense)
    tp.pruner.BasePruner(
        direct, x, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=0.5, ignored_layers=[direct.fc]
    ).step()

    masked = copy.deepcopy(dense)
    for m in masked.modules():
        if isinstance(m, nn.Conv2d):
            torch_prune.ln_structured(m, "weight", amount=0.5, n=1, dim=0)  # type: ignore[no-untyped-call]  # same channel sparsity, kept as masks
            torch_prune.remove(m, "weight")  # type: ignore[no-untyped-call]
    # The same layout change on the unpruned model: how much of the speedup is layout, not pruning.
    dense_cl = copy.deepcopy(dense).to(memory_format=torch.channels_last)
    models = {
        "dense": dense,
        DENSE_CL: dense_cl,
        OURS: result.model.module,
        DIRECT: direct,
        "torch.nn.utils.prune masks 0.5": masked,
    }
    return models, str(result.notes.get("memoryFormat", "contiguous"))


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    dense = torchvision.models.resnet18().eval()
    x1 = torch.randn(1, 3, 224, 224)
    built, layout = candidates(dense, x1)
    models = {name: m.eval() for name, m in built.items()}
    # MACs count what the kernels must compute; masks keep the dense count (zeros are multiplied).
    macs = {name: tp.utils.count_ops_and_params(m, x1)[0] for name, m in models.items()}
    ours, direct = models[OURS], models[DIRECT]
    identical = all(
        torch.equal(a, b) for a, b in zip(ours.state_dict().values(), direct.state_dict().values(), strict=True)
    )
    same_layout = DENSE_CL if layout == "channels_last" else "dense"

    times: dict[int, dict[str, float]] = {}
    loads = [load_average()]
    with torch.inference_mode():
        for batch in BATCHES:
            x = torch.randn(batch, 3, 224, 224)  # one input for every candidate, default (NCHW) layout
            times[batch] = interleaved_ms(
                {name: functools.partial(m, x) for name, m in models.items()}, repeats=REPEATS
            )
            loads.append(load_average())
    rows = [
        [
            name,
            f"{parameter_count(m) / 1e6:.2f}",
            f"{macs[name] / 1e9:.3f}",
            f"{macs[name] / macs['dense']:.3f}",
            *(f"{times[b][name]:.1f} ({times[b][name] / times[b]['dense']:.3f})" for b in BATCHES),
        ]
        for name, m in models.items()
    ]
    equal_layout = ", ".join(f"batch {b}: {times[b][OURS] / times[b][same_layout]:.3f}" for b in BATCHES)
    write_report(
        "pruning",
        table_section(
            "(a) Structured pruning vs masks, ResNet-18 (random weights), 224x224",
            [
                "model",
                "params (M)",
                "GMACs",
                "MACs ratio",
                *(f"batch {b}: median ms (ratio vs dense)" for b in BATCHES),
            ],
            rows,
            "Targets: Kompression structured latency ratio <= 0.35 (anchor ~0.30); masks ~1.0 (dense kernels "
            "still multiply the zeros). Ratios are against the dense model as given (NCHW). Kompression's prune step "
            f"timed both memory layouts and kept {layout}; the direct Torch-Pruning model stays NCHW. Kompression's "
            f"model against the dense model in that same layout (the pruning's share alone): {equal_layout}. "
            f"Every input is NCHW, torch eager fp32 under torch.inference_mode(), {THREADS} threads; the candidates are "
            f"timed interleaved (A,B,C,D,E, then B,C,D,E,A, ...), {REPEATS} repetitions x 5 calls after 3 warm-up "
            "calls, medians of single calls. MACs from torch_pruning.utils.count_ops_and_params at batch 1. "
            f"Kompression's and the direct Torch-Pruning model have {'identical' if identical else 'different'} "
            "weights and shapes, so any gap between those two rows is the layout plus measurement noise. "
            f"Load average (1/5/15 min) before, after batch 1, after batch 8: {' | '.join(loads)}.",
        ),
    )


if __name__ == "__main__":
    main()
