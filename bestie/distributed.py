"""Multi-process training through ``torchrun``: gloo on the CPU, nccl on CUDA.

A plain ``python`` start is a world of one and touches no process group, so the same code
runs on a laptop, one GPU, or ``torchrun --nproc_per_node=4``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bestie.errors import BestieError
from bestie.runtime import select_device

__all__ = ["DistContext", "init_distributed", "all_reduce_mean", "shutdown_distributed"]


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


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
