"""The process group: nccl on GPUs, gloo (and DeepSpeed's CPU accelerator) on CPU-only machines.

Reads the torchrun-style environment the entry point sets for each rank (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). DS_ACCELERATOR must be set before DeepSpeed is first imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

TIMEOUT = timedelta(minutes=30)
T = TypeVar("T")


@dataclass(frozen=True)
class Rank:
    """Who this process is in the gang."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> Rank:
    """Join the process group of the gang (a gang of one works too)."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=TIMEOUT)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Rank(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


def barrier() -> None:
    torch.distributed.barrier()


def gather_objects(value: Any) -> list[Any]:
    """`value` from every rank, in rank order, on every rank."""
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def decided_by_main(decide: Callable[[], T]) -> T:
    """Rank 0 decides (`decide()`), every rank gets the same answer; an error rank 0 meets is raised on every
    rank, so no rank waits in a collective for a peer that has already given up."""
    outcome: list[Any] = [None]
    if torch.distributed.get_rank() == 0:
        try:
            outcome = [(True, decide())]
        except Exception as error:  # noqa: BLE001 (re-raised below, on every rank)
            outcome = [(False, error)]
    torch.distributed.broadcast_object_list(outcome, src=0)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum across ranks."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if torch.cuda.is_available():
        tensor = tensor.cuda()
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
