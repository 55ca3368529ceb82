"""This process's place in a torch.distributed job (``torchrun``), and the collectives training needs.

Without torchrun the job is one process (world size 1) and every collective is the identity, so the trainer never
asks whether it runs distributed. nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .inference import select_device


@dataclass
class Distributed:
    """This process's rank in the job (rank 0 alone writes files)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on any rank (clocks differ: all ranks must stop after the same step)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over all ranks (in place)."""
        if self.world_size > 1:
            dist.all_reduce(values)
        return values

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun job if there is one (env:// rendezvous); each rank takes its own GPU."""
    device = select_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device
    context = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return context, device


def close_distributed() -> None:
    """Leave the job (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
