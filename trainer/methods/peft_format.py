"""What `peft`'s adapter layout needs from every method that exports to it: shared, so methods stand alone.

Only the format lives here (task types, the prompt-learning config fields, head tensor names); each method
decides what it exports.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .families import dims
from .zero import cpu_copy

PEFT_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS"}
"""Our task -> peft's task_type (peft has none for image classification: the head goes in modules_to_save)."""


def prompt_learning_config(
    kind: str, task: str, model: Any, virtual: int, heads: list[str], **extra: Any
) -> dict[str, Any]:
    """The adapter_config.json fields `peft` reads for a prompt-learning method, in inference mode."""
    size = dims(model)
    return {
        "peft_type": kind,
        "task_type": PEFT_TASK_TYPES[task],
        "inference_mode": True,
        "base_model_name_or_path": getattr(model, "name_or_path", None) or None,
        "revision": None,
        "num_virtual_tokens": virtual,
        "token_dim": size.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": size.num_attention_heads,
        "num_layers": size.num_layers,
        "modules_to_save": heads or None,
        **extra,
    }


def head_tensors(model: nn.Module, heads: list[str]) -> dict[str, torch.Tensor]:
    """Task-head tensors under the names `peft` saves them with (modules_to_save: `base_model.<name>`)."""
    params = {name: p for name, p in model.named_parameters() if name.split(".", 1)[0] in heads}
    return {f"base_model.{name}": tensor for name, tensor in cpu_copy(params).items()}
