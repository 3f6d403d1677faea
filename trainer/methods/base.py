"""The interface every PEFT method implements (one file per method, as `peft`'s tuners do).

A method is built from its spec section (pure), then attached to a Hugging Face model: it adds its own
parameters, freezes everything else (except what the method says trains, e.g. the task head), and wraps the
model when it must change the inputs (soft prompts). The trainer only ever talks to this interface.
What a method saves is the same rule for all of them (params.py: every trainable parameter plus the task
head), so `trainable_state` and its inverse are implemented here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from ..api.spec import MethodBase
from .families import Family, family_of, head_names
from .params import collect_state, freeze, load_state, unfreeze_heads


class PeftMethod(ABC):
    """One PEFT method bound to its hyperparameters and the model's task."""

    spec_name: ClassVar[str]
    """The method's key under `spec.method` (e.g. "prefixTuning")."""

    def __init__(self, config: MethodBase, task: str) -> None:
        self.config = config
        self.task = task

    @abstractmethod
    def attach(self, model: Any) -> Any:
        """Add the method's parameters to `model`, freeze the rest, and return the module to train.

        The returned module's forward takes the same batch keys as the base model (input_ids, attention_mask,
        labels, pixel_values) and returns a transformers ModelOutput with `.loss` and `.logits`; for
        causal LMs it also has `generate(...)`. Under ZeRO-3 the base weights are partitioned placeholders:
        read `ds_shape` or gather with `deepspeed.zero.GatheredParameters`, on every rank.
        """

    def prepare(self, model: Any) -> Family:
        """What every `attach` starts with: refuse an unsupported model x method pair by name, freeze every
        weight, and let the task head train as `trainHead` says; returns the model's family."""
        family = family_of(model, self.spec_name)
        freeze(model)
        unfreeze_heads(model, family, self.task, self.config.train_head)
        return family

    def task_heads(self, model: Any) -> list[str]:
        """The attached model's task-head modules: saved even when frozen, as a fresh base draws them at random."""
        return head_names(model, family_of(model), self.task)

    def trainable_state(self, model: Any) -> dict[str, Any]:
        """The full trainable state (CPU tensors, gathered on every rank under ZeRO-3), keyed stably."""
        return collect_state(model, self.task_heads(model))

    def load_trainable_state(self, model: Any, state: dict[str, Any]) -> None:
        """Inverse of `trainable_state` on a freshly attached model."""
        load_state(model, self.task_heads(model), state)

    def peft_export(self, model: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(adapter_config.json content, adapter_model.safetensors tensors) in `peft`'s layout, or None."""
        return None

    def save(self, model: Any, directory: str | Path) -> list[Path]:
        """Write the trainable state and config (plus the peft layout where supported); return the files."""
        from .saving import save_method

        return save_method(self, model, Path(directory))

    def load(self, model: Any, directory: str | Path) -> None:
        """Load what `save` wrote into a freshly attached model."""
        from .saving import load_method

        load_method(self, model, Path(directory))
