"""Several GPUs under torchrun: every rank runs the pipeline, so that distillation's
DistributedDataParallel collectives line up, but only rank 0 reports and publishes.

The other steps run redundantly on every rank; they are cheap next to training, and DDP starts
from rank 0's weights, so small differences between ranks before distillation do not matter. A
choice made by timing (a memory layout) is another matter: DDP refuses parameters whose strides
differ between ranks, so every rank takes rank 0's choice (`agree`).
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_leader() -> bool:
    """Whether this process reports progress and publishes (always, without torchrun)."""
    return rank() == 0


def join_group(device: str) -> tuple[int, int, str]:
    """(rank, world size, this rank's device); joins the torchrun process group when there is one."""
    world = world_size()
    if world <= 1:
        return 0, 1, device
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def leave_group() -> None:
    """Shut this rank's process group down before the interpreter exits. Left to the interpreter's
    teardown, gloo's threads can abort a rank (std::terminate) after its work succeeded, and
    torchrun then reports the whole run as failed."""
    if dist.is_initialized():
        dist.destroy_process_group()


def agree(value: T, device: str) -> T:
    """Rank 0's value, on every rank (the value itself when there is one process)."""
    if world_size() <= 1:
        return value
    join_group(device)
    box: list[T] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def bind_device() -> None:
    """Give each rank its own GPU before anything lands on cuda:0."""
    if world_size() > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m kompression <argv>` on `nproc` local ranks (torchrun's standalone mode) and
    return the worker's own exit code, not torchrun's generic 1, so that the Job's
    podFailurePolicy still sees a model or data error as permanent."""
    # torchrun is slow to import: only when ranks are launched
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    args = get_args_parser().parse_args(
        ["--standalone", "--nnodes=1", f"--nproc-per-node={nproc}", "--module", "kompression", *argv]
    )
    try:
        torchrun(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as exc:
        # The first rank to fail takes the others down with SIGTERM (a negative exit code): the
        # worker's own verdict is the lowest rank's real exit code.
        codes = [f.exitcode for _, f in sorted(exc.failures.items())]
        return next((c for c in codes if c > 0), 1)
    return 0
