"""ZeRO-3 safety in two helpers: read shapes without touching data, gather before reading or writing values.

Under `deepspeed.zero.Init` a parameter is a placeholder of size 0 whose real shape is `ds_shape` and whose
values live in shards across ranks. Every method reads frozen weights only through these helpers, and calls
them on every rank (gathering is a collective). Without DeepSpeed they cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


def is_partitioned(param: torch.nn.Parameter) -> bool:
    """True for a ZeRO-3 parameter (it carries a DeepSpeed id)."""
    return hasattr(param, "ds_id")


def shape_of(param: torch.Tensor) -> torch.Size:
    """The full shape, also for a ZeRO-3 placeholder."""
    return getattr(param, "ds_shape", param.shape)


def numel_of(param: torch.Tensor) -> int:
    """The full element count, also for a ZeRO-3 placeholder."""
    return int(getattr(param, "ds_numel", param.numel()))


@contextmanager
def gathered(params: Iterable[torch.nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """Materialise ZeRO-3 parameters for the block (all ranks must enter); a no-op for plain parameters.

    With `modifier_rank`, what that rank writes into the gathered parameters is kept and re-partitioned.
    """
    partitioned = [param for param in params if is_partitioned(param)]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank):
        yield


def is_writer() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def cpu_copy(params: dict[str, torch.nn.Parameter]) -> dict[str, Any]:
    """Full-size CPU copies of `params` (gathered on every rank under ZeRO-3)."""
    with gathered(params.values()):
        return {name: param.detach().to("cpu", copy=True).contiguous() for name, param in params.items()}
