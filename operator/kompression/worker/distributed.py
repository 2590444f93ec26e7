"""Several GPUs under torchrun: every rank runs the pipeline, so that distillation's
DistributedDataParallel collectives line up, but only rank 0 reports and publishes.

The other steps run redundantly on every rank; they are cheap next to training, and DDP starts
from rank 0's weights, so small differences between ranks before distillation do not matter.
"""

from __future__ import annotations

import os

import torch


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_leader() -> bool:
    """Whether this process reports progress and publishes (always, without torchrun)."""
    return rank() == 0


def bind_device() -> None:
    """Give each rank its own GPU before anything lands on cuda:0."""
    if world_size() > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m kompression <argv>` on `nproc` local ranks (torchrun's standalone mode) and
    return the worker's own exit code, not torchrun's generic 1, so that the Job's
    podFailurePolicy still sees a model or data error as permanent."""
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
