"""The interface every PEFT method implements (one file per method, as `peft`'s tuners do).

A method is built from its spec section (pure), then attached to a Hugging Face model: it adds its own
parameters, freezes everything else (except what the method says trains, e.g. the task head), and wraps the
model when it must change the inputs (soft prompts). The trainer only ever talks to this interface.
What a method saves is the same rule for all of them (params.py: every trainable parameter plus the task
head), so `trainable_state` and its inverse are implemented here once.

Each method module declares what it is (its spec name, the model families it supports) and registers its
class with `@register` (registry.py); the tasks a method serves come from the torch-free API table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from ..api.spec import METHOD_TASKS, MethodBase
from . import saving
from .families import Family, UnsupportedModel, family_of, head_names
from .params import collect_state, freeze, load_state, unfreeze_heads


class PeftMethod(ABC):
    """One PEFT method bound to its hyperparameters and the model's task."""

    spec_name: ClassVar[str]
    """The method's key under `spec.method` (e.g. "prefixTuning")."""
    families: ClassVar[tuple[str, ...]]
    """The model families (families.py) this method is implemented for: the README's method x family table."""

    @classmethod
    def tasks(cls) -> tuple[str, ...]:
        """The tasks this method serves (the API model's table, which the CRD's CEL rules also come from)."""
        return METHOD_TASKS[cls.spec_name]

    @classmethod
    def family_for(cls, model: Any) -> Family:
        """The model's family, or UnsupportedModel naming the model type and this method."""
        family = family_of(model)
        if family.name not in cls.families:
            supporting = ", ".join(sorted(cls.families))
            model_type = getattr(getattr(model, "config", model), "model_type", None)
            raise UnsupportedModel(
                f"method {cls.spec_name} is not supported on model_type {model_type!r} "
                f"(family {family.name}; {cls.spec_name} supports the families {supporting})"
            )
        return family

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
        family = self.family_for(model)
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

    def record(self, model: Any = None) -> dict[str, Any]:
        """What peftjob_method.json says about this method: enough to rebuild it, and, given the trained model,
        its class names (from its config), so that predictions read by name wherever the adapter goes."""
        labels = saving.class_labels(model, self.task) if model is not None else None
        return saving.method_record(self.spec_name, self.config.model_dump(mode="json", by_alias=True), self.task,
                                    labels)

    def save(self, model: Any, directory: str | Path) -> list[Path]:
        """Write the trainable state and config (plus the peft layout where supported); return the files.

        Every rank calls it (gathering ZeRO-3 partitions is a collective); rank 0 writes."""
        return saving.write_method(Path(directory), self.record(model), self.trainable_state(model),
                                   self.peft_export(model))

    def load(self, model: Any, directory: str | Path) -> None:
        """Load what `save` wrote into a freshly attached model, class names included."""
        self.load_trainable_state(model, saving.read_state(Path(directory), self.record()))
        labels = saving.read_record(Path(directory)).get("labels")
        if labels is not None:
            saving.name_classes(model, labels)
