"""(a) Structured pruning vs masks vs dense on ResNet-18, batch 1, 2 threads: latency ratios."""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
import torchvision
from torch.nn.utils import prune as torch_prune

from common import THREADS, job_context, median_ms, workdir, write_report
from kompression.worker.model import TorchModel
from kompression.worker.steps import TECHNIQUES
from kompression.worker.steps.base import DataSets
from kompression.worker.steps.modules import parameter_count


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    dense = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)

    ctx = job_context(
        {"name": "p", "prune": {"method": "L1Structured", "sparsity": 0.5}}, workdir(), [-1, 3, 224, 224], DataSets()
    )
    result = TECHNIQUES["prune"](TorchModel(dense, (x,)), ctx)
    assert isinstance(result.model, TorchModel)
    structured = result.model.module.eval()

    direct = copy.deepcopy(dense)
    tp.pruner.BasePruner(
        direct, x, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=0.5, ignored_layers=[direct.fc]
    ).step()
    direct.eval()

    masked = copy.deepcopy(dense)
    for m in masked.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch_prune.ln_structured(m, "weight", amount=0.5, n=1, dim=0)  # same channel sparsity, kept as masks
            torch_prune.remove(m, "weight")

    models = {
        "dense": dense,
        "Kompression L1Structured 0.5": structured,
        "Torch-Pruning direct 0.5": direct,
        "torch.nn.utils.prune masks 0.5": masked,
    }
    with torch.inference_mode():
        times = {name: median_ms(lambda m=m: m(x)) for name, m in models.items()}
    rows = [
        [name, f"{parameter_count(m) / 1e6:.2f}", f"{times[name]:.2f}", f"{times[name] / times['dense']:.3f}"]
        for name, m in models.items()
    ]
    write_report(
        "pruning",
        "(a) Structured pruning vs masks, ResNet-18 (random weights), batch 1, 224x224",
        ["model", "params (M)", "median latency (ms)", "ratio vs dense"],
        rows,
        "Targets: Kompression structured <= 0.35; masks ~1.0 (dense kernels still multiply the zeros). "
        "Medians of 7 repetitions x 5 calls after 3 warm-up calls, torch eager fp32.",
    )


if __name__ == "__main__":
    main()
