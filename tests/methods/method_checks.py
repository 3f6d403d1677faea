"""Checks the per-method tests share (one optimizer step, counts, save/reload, generation), so each method's
test states only what is particular to it."""

from __future__ import annotations

from pathlib import Path

import torch
from peftjob_trainer.methods import PeftMethod, parameter_counts

from tests.methods.tiny_models import tiny_batch, tiny_model


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
    """Names of the parameters that train."""
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


def moved_by_a_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> set[str]:
    """Names of the parameters one optimizer step changed, having checked that none of them is frozen."""
    before = snapshot(model)
    train_step(model, batch)
    moved = changed(model, before)
    assert moved <= trainable_names(model)  # the backbone stays bit-identical
    return moved


def assert_a_step_trains_only(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], prefixes: tuple[str, ...]
) -> None:
    """One step moves every trainable parameter and nothing else, and all of them live under `prefixes`."""
    moved = moved_by_a_step(model, batch)
    assert moved == trainable_names(model)
    assert all(name.startswith(prefixes) for name in moved)


def counts_over_base(method: PeftMethod, family: str, task: str) -> tuple[int, int]:
    """(trainable parameters, parameters added to the base) once `method` is attached to the tiny model."""
    base_total = sum(param.numel() for param in tiny_model(family, task).parameters())
    trainable, total = parameter_counts(method.attach(tiny_model(family, task)))
    return trainable, total - base_total


def assert_reload_gives_same_logits(
    method: PeftMethod, model: torch.nn.Module, family: str, task: str, directory: Path
) -> list[Path]:
    """Save `model`, load it into a fresh base under a new, equal method: same logits. Returns the saved files.

    The fresh model must differ before loading, so the equality comes from the saved state, not the init.
    """
    files = method.save(model, directory)
    again = type(method)(method.config, method.task)
    reloaded = again.attach(fresh_base(family, task))
    batch = tiny_batch(family, task)
    assert not torch.equal(logits(reloaded, batch), logits(model, batch))
    again.load(reloaded, directory)
    assert torch.equal(logits(reloaded, batch), logits(model, batch))
    return files


def assert_greedy_generation_follows_forward(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int) -> None:
    """Greedy `generate` (inputs_embeds and KV cache) picks each forward pass's argmax over the whole sequence."""
    generated = model.generate(
        input_ids=input_ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.pad_token_id
    )
    sequence = input_ids
    for _ in range(new_tokens):
        sequence = torch.cat([sequence, logits(model, {"input_ids": sequence})[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, sequence)
