"""Small helpers the per-method tests share: one optimizer step, parameter snapshots, logits."""

from __future__ import annotations

import torch

from tests.methods.tiny_models import tiny_model


def fresh_base(family: str, task: str) -> torch.nn.Module:
    """The same tiny backbone with a newly drawn head, as `from_pretrained(..., num_labels=n)` gives."""
    model = tiny_model(family, task)
    for name in ("classifier", "score"):
        if hasattr(model, name):
            torch.nn.init.normal_(getattr(model, name).weight, std=1.0)
    return model


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter, by name."""
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    """Names of parameters that are not bit-identical to `before`."""
    return {name for name, param in model.named_parameters() if not torch.equal(param.detach(), before[name])}


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], lr: float = 1e-2, steps: int = 1) -> None:
    """AdamW steps on the trainable parameters only (what the trainer hands DeepSpeed); leaves eval mode."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()


@torch.no_grad()
def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Eval-mode logits for `batch` (labels dropped)."""
    return model(**{key: value for key, value in batch.items() if key != "labels"}).logits
