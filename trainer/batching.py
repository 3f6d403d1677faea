"""Which examples each data-parallel rank reads, in what order, and how they become batches.

Deterministic for the seed and resumable from a position: the order depends only on the seed, the epoch and
the position in it, so N ranks read exactly the global batches one process would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .api.spec import PEFTJobSpec
from .errors import DataError
from .tokens import IGNORE_INDEX


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch: token ids padded to the longest example (attention mask 0, labels ignored on padding)."""
    if "pixel_values" in examples[0]:
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "labels": torch.tensor([example["labels"] for example in examples]),
        }
    width = max(len(example["input_ids"]) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    sequence_labels = isinstance(examples[0]["labels"], list)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long) if sequence_labels else None
    for row, example in enumerate(examples):
        length = len(example["input_ids"])
        ids[row, :length] = torch.tensor(example["input_ids"])
        mask[row, :length] = 1
        if labels is not None:
            labels[row, :length] = torch.tensor(example["labels"])
    batch = {"input_ids": ids, "attention_mask": mask}
    batch["labels"] = labels if labels is not None else torch.tensor([example["labels"] for example in examples])
    return batch


@dataclass(frozen=True)
class Sharding:
    """Which examples each rank reads: global micro batch g is split evenly across the data-parallel ranks.

    Epoch e shuffles with seed + e, so the order depends only on the seed and the position; the union of the
    ranks' micro batches is the same global batch one process would read (what makes N ranks == 1 process).
    """

    examples: int
    micro_batch: int
    world_size: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.world_size

    @property
    def per_epoch(self) -> int:
        """Global micro batches per epoch (an incomplete last one is dropped)."""
        return self.examples // self.global_batch

    def indices(self, position: int, rank: int) -> list[int]:
        """The example indices of rank `rank` for global micro batch number `position`."""
        epoch, index = divmod(position, self.per_epoch)
        order = torch.randperm(self.examples, generator=torch.Generator().manual_seed(self.seed + epoch))
        start = index * self.global_batch + rank * self.micro_batch
        return order[start : start + self.micro_batch].tolist()


def check_size(sharding: Sharding, source: str) -> None:
    if sharding.per_epoch == 0:
        raise DataError(
            f"{source}: {sharding.examples} examples are fewer than one global batch "
            f"(microBatchSize {sharding.micro_batch} x {sharding.world_size} ranks)"
        )


def total_steps(spec: PEFTJobSpec, sharding: Sharding) -> int:
    """Optimizer steps: maxSteps, else epochs over the data."""
    if spec.training.max_steps:
        return spec.training.max_steps
    micro_batches = math.ceil(spec.training.epochs * sharding.per_epoch)
    return max(1, micro_batches // spec.training.gradient_accumulation_steps)


def eval_batches(examples: int, micro_batch: int, world_size: int, rank: int) -> list[list[int]]:
    """This rank's evaluation batches; every rank gets the same count (an empty list pads a short shard),
    because under ZeRO-3 every forward pass is a collective that all ranks must join."""
    shard = list(range(rank, examples, world_size))
    count = math.ceil(math.ceil(examples / world_size) / micro_batch)
    batches = [shard[i : i + micro_batch] for i in range(0, len(shard), micro_batch)]
    return batches + [[] for _ in range(count - len(batches))]
