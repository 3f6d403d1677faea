"""What trains and what is saved, shared by every method.

A method freezes the whole model, adds its own modules (trainable), and re-enables what its paper trains
(task head, LayerNorms). Its state is then simply "every trainable parameter, plus the classification head":
the head is kept even when frozen because a freshly loaded base model initialises it at random, so without
it a reload would not reproduce the outputs.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ModelError
from .families import Family, head_names
from .zero import cpu_copy, gathered, numel_of, shape_of


class StateMismatch(ModelError, ValueError):
    """A saved state that does not fit the attached model (other method, config or base model)."""


def freeze(model: torch.nn.Module) -> None:
    """Stop gradients to every existing parameter."""
    for param in model.parameters():
        param.requires_grad_(False)


def unfreeze_heads(model: torch.nn.Module, family: Family, task: str, train_head: bool) -> list[str]:
    """Make the task head trainable when the spec says so; returns the head module names."""
    heads = head_names(model, family, task)
    for name in heads:
        for param in model.get_submodule(name).parameters():
            param.requires_grad_(train_head)
    return heads


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counted at full size also under ZeRO-3."""
    trainable = total = 0
    for param in model.parameters():
        count = numel_of(param)
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


def state_parameters(model: torch.nn.Module, heads: list[str]) -> dict[str, torch.nn.Parameter]:
    """The parameters a method saves: all trainable ones plus the heads', keyed by their names in `model`.

    Heads are matched by identity, not name prefix, because a wrapper that forwards attribute access to the
    base model (the prompt methods' PromptedModel) finds `classifier` although its parameters are named
    `model.classifier.*`.
    """
    head_params = {id(param) for name in heads for param in model.get_submodule(name).parameters()}
    return {
        name: param
        for name, param in model.named_parameters()
        if param.requires_grad or id(param) in head_params
    }


def collect_state(model: torch.nn.Module, heads: list[str]) -> dict[str, Any]:
    """CPU copies of `state_parameters` (a collective under ZeRO-3: call on every rank)."""
    return cpu_copy(state_parameters(model, heads))


def load_state(model: torch.nn.Module, heads: list[str], state: dict[str, Any]) -> None:
    """Copy `state` into the model, refusing missing, unexpected or mis-shaped entries with their names."""
    params = state_parameters(model, heads)
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    for name in sorted(set(params) & set(state)):
        expected = tuple(shape_of(params[name]))
        if tuple(state[name].shape) != expected:
            problems.append(f"{name} has shape {tuple(state[name].shape)}, the model expects {expected}")
    if problems:
        raise StateMismatch("saved state does not fit this model: " + "; ".join(problems))
    with torch.no_grad(), gathered(params.values(), modifier_rank=0):
        for name, param in params.items():
            param.copy_(state[name].to(device=param.device, dtype=param.dtype))
