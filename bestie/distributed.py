"""Multi-process training and inference through ``torchrun``: gloo on the CPU, nccl on CUDA.

A plain ``python`` start is a world of one and touches no process group, so the same code
runs on a laptop, one GPU, or ``torchrun --nproc_per_node=4``.

Inference over a list of images shards it: each process takes its contiguous part
(:func:`shard`), and :func:`gather_shards` concatenates the parts' results on the main
process in rank order, which is the list's order: the merged result is the one process's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from bestie.errors import BestieError
from bestie.runtime import select_device

__all__ = [
    "DistContext", "init_distributed", "distributed", "all_reduce_mean", "shard", "gather_shards", "shutdown_distributed",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Each process takes the GPU of its ``LOCAL_RANK`` when CUDA is there; the backend is
    nccl on CUDA and gloo on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(0, 1, select_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    chosen = select_device(device)
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise BestieError(
                f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} CUDA devices here"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return DistContext(rank, world_size, chosen)


def all_reduce_mean(value: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The mean of ``value`` over all processes (the value itself in a world of one)."""
    if not context.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / context.world_size


def shard(items: Sequence[T], context: DistContext | None) -> Sequence[T]:
    """This process's contiguous part of ``items`` (all of them for ``context`` None: one
    process); the parts' sizes differ by at most one."""
    if context is None:
        return items
    count = len(items)
    return items[count * context.rank // context.world_size : count * (context.rank + 1) // context.world_size]


def gather_shards(part: list[T], context: DistContext | None) -> list[T] | None:
    """Every process's ``part`` concatenated in rank order, on the main process; None on the others.

    ``part`` must pickle (``torch.distributed.gather_object``); every process must call this.
    """
    if context is None or not context.distributed:
        return list(part)
    parts = [None] * context.world_size if context.is_main else None
    dist.gather_object(part, parts, dst=0)
    return [item for p in parts for item in p] if context.is_main else None


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed(device: str = "auto") -> Iterator[DistContext]:
    """:func:`init_distributed` for the ``with`` block; the process group is left at its end."""
    context = init_distributed(device)
    try:
        yield context
    finally:
        shutdown_distributed()
