"""The learning-rate schedule: linear warmup, then linear, cosine or constant decay (a pure factor of the step)."""

from __future__ import annotations

import math
from typing import Any

from .api.spec import TrainingSpec


def lr_factor(step: int, training: TrainingSpec, total_steps: int) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    warmup = training.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if training.scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if training.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def lr_scheduler(optimizer: Any, training: TrainingSpec, total_steps: int) -> Any:
    """A torch LambdaLR for `optimizer`; its state is saved with every checkpoint."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, training, total_steps))
