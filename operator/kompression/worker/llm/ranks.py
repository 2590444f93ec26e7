"""Several GPUs sharing one model: llm-compressor's distributed oneshot under torchrun, and the
memory a calibration takes.

`kompression run --nproc-per-node N` (what the operator runs for resources.gpus > 1) starts N
ranks in one pod. Rank 0 is the job: it fetches the model and the text, scores the original,
then hands every rank the plan (the model folder, the step's config, the calibration samples). Each rank
calibrates a disjoint share of the samples; llm-compressor sums the GPTQ Hessians across ranks
and spreads the layers' quantization over them. Only rank 0 holds the weights in memory (the
others load on the meta device and map rank 0's offloaded tensors), and only rank 0 writes the
checkpoint, scores it and publishes. The other ranks only calibrate and exit.

One process or many, the model is loaded with compressed-tensors' offloading (CPU, then disk),
and the sequential pipeline onloads one decoder layer at a time to the GPU, so the GPU holds
about one layer and its activations, not the model.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import resource
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from compressed_tensors.offload import load_offloaded_model
from transformers import AutoModelForCausalLM

from kompression.api.v1alpha1 import LLMQuantizeStep, LLMSparsifyStep
from kompression.worker import distributed
from kompression.worker.errors import DataError
from kompression.worker.formats import hf_folder
from kompression.worker.formats.hf_folder import MODEL_URI
from kompression.worker.model import CheckpointFolder

Config = LLMQuantizeStep | LLMSparsifyStep

# Ranks other than 0 wait in a collective while rank 0 downloads the model and scores the
# original, which for a large model takes far longer than torch's default 10 minutes; the Job's
# activeDeadlineSeconds, not this, bounds a run.
RANK_WAIT = datetime.timedelta(hours=12)


def world() -> int:
    """How many ranks share the model now: 1 without torchrun, and 1 again once the ranks have
    parted after the first step's save (rank 0 runs any later step alone)."""
    return distributed.world_size() if dist.is_initialized() else 1


def leads() -> bool:
    """Whether this process scores, saves and publishes (rank 0, or the only process)."""
    return distributed.is_leader()


def join(device: str) -> None:
    """Join the torchrun group: NCCL on this rank's GPU, gloo on a CPU. compressed-tensors'
    `init_dist` does the same on an accelerator only, and with torch's default timeout."""
    if distributed.world_size() <= 1 or dist.is_initialized():
        return
    if device == "cuda":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=RANK_WAIT, device_id=local)
    else:
        dist.init_process_group("gloo", timeout=RANK_WAIT)


@dataclass(frozen=True)
class Plan:
    """What rank 0 hands the other ranks: its local copy of the model, vetted (the ranks share the
    pod's disk), the step's config, and every calibration sample (each rank takes its own share)."""

    model: CheckpointFolder
    config: Config
    calibration: list[list[int]] | None


def share(model: CheckpointFolder, config: Config, calibration: list[list[int]] | None) -> list[list[int]] | None:
    """Rank 0: hand the plan to the other ranks, and return rank 0's own share of the samples.
    One process: the samples unchanged."""
    if world() <= 1:
        return calibration
    box: list[Plan | None] = [Plan(model, config, calibration)]
    dist.broadcast_object_list(box, src=0)
    return part(calibration)


def follow(
    apply: Callable[[Config, CheckpointFolder, Path, list[list[int]] | None], Any], workroot: Path | None
) -> None:
    """Ranks other than 0: wait for rank 0's plan, calibrate this rank's share of the first step
    with the same `apply` rank 0 runs (its collectives must line up), and return without publishing."""
    box: list[Plan | None] = [None]
    dist.broadcast_object_list(box, src=0)
    plan = box[0]
    assert plan is not None
    with tempfile.TemporaryDirectory(prefix="kompression-llm-rank-", dir=workroot) as tmp:
        # save_pretrained is collective, but only rank 0 writes: this folder stays empty.
        apply(plan.config, plan.model, Path(tmp) / "out", part(plan.calibration))


def disband() -> None:
    """After the collective save every rank leaves the group: rank 0 goes on alone, since
    compressed-tensors, which loads the checkpoint to score it, waits for the other ranks as long
    as a group exists."""
    distributed.leave_group()


def part(calibration: list[list[int]] | None) -> list[list[int]] | None:
    """This rank's contiguous share of the samples (sizes differ by at most one)."""
    if calibration is None or world() <= 1:
        return calibration
    n, r, w = len(calibration), dist.get_rank(), dist.get_world_size()
    if n < w:
        raise DataError(
            f"spec.data.calibration: {n} samples cannot be shared by {w} ranks (resources.gpus); "
            f"use at least {w} samples or fewer GPUs"
        )
    return calibration[n * r // w : n * (r + 1) // w]


def load(model: CheckpointFolder, offload_dir: Path) -> Any:
    """The model for calibration, offloaded as llm-compressor intends: held in CPU memory (and on
    disk beyond it), never on the GPU as a whole; the sequential pipeline onloads one layer at a
    time. Under torchrun rank 0 reads the weights and the other ranks map them.

    Offloading alone, not llm-compressor's load_context: its load-time MoE linearization patches
    classes across every imported transformers module, and listing them imports optional vision
    code (torchvision) the worker-llm image does not have. oneshot linearizes the experts after
    loading instead (moe.py)."""
    with hf_folder.loading(MODEL_URI, "a causal LM"), load_offloaded_model(AutoModelForCausalLM):
        return AutoModelForCausalLM.from_pretrained(
            model.path,
            dtype="auto",
            device_map="auto_offload",
            offload_folder=str(offload_dir),
            **hf_folder.load_options(model, AutoModelForCausalLM),
        )


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[list[int]]:
    """The peak memory of what runs inside, in bytes, in the yielded one-item list: GPU memory
    allocated by torch on a GPU (the largest over the ranks), resident memory on a CPU."""
    box = [0]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_resident_peak()
    yield box
    box[0] = int(torch.cuda.max_memory_allocated()) if device == "cuda" else _resident_peak()
    if world() > 1:
        peak = torch.tensor([box[0]], dtype=torch.int64, device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        box[0] = int(peak.item())


def _reset_resident_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, the peak resident set, to the current one.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _resident_peak() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_notes(peak: int, weights: int | None, device: str, ranks: int) -> dict[str, Any]:
    """report.json's record of what calibration took against the model's size."""
    return {
        "peakMemoryBytes": peak,
        "peakMemoryDevice": "GPU" if device == "cuda" else "CPU",
        "weightsBytes": weights,
        "peakMemoryToWeights": round(peak / weights, 4) if weights else None,
        "ranks": ranks,
    }
