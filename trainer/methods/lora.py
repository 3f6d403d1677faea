"""LoRA (Hu et al. 2021): W x + (alpha/r) B A x beside chosen Linear layers (and GPT-2's Conv1D).

Each target is wrapped in place by `LoraLinear`, whose children are named as `peft` names them
(`base_layer`, `lora_A`, `lora_B`), so the export is our state with peft's `base_model.model.` prefix.
B starts at zero, A is Kaiming-uniform as in peft, so the model is exactly unchanged at init. Merge and
unmerge add or subtract the scaled B A into the frozen weight, gathering it first under ZeRO-3.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..api.spec import LoraSpec
from .base import PeftMethod
from .families import UnsupportedModel, default_lora_targets, family_of
from .peft_format import PEFT_TASK_TYPES
from .registry import register
from .zero import gathered


class LoraLinear(nn.Module):
    """A frozen Linear/Conv1D plus a trainable low-rank update."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)  # Conv1D stores its weight as (in, out)
        if self.fan_in_fan_out:
            in_features, out_features = base_layer.nx, base_layer.nf
        else:
            in_features, out_features = base_layer.in_features, base_layer.out_features
        factory = {"dtype": base_layer.weight.dtype, "device": base_layer.weight.device}
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, out_features, bias=False, **factory)
        self.scaling = alpha / r
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return result + (update * self.scaling).to(result.dtype)

    def _delta(self) -> torch.Tensor:
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def merge(self) -> None:
        """Add the update into the frozen weight; ZeRO-3 safe (every rank calls it)."""
        self._add_delta(1.0)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the update from the frozen weight again (exact up to floating-point rounding)."""
        self._add_delta(-1.0)
        self.merged = False

    def _add_delta(self, sign: float) -> None:
        weight = self.base_layer.weight
        with torch.no_grad(), gathered([weight, self.lora_A.weight, self.lora_B.weight], modifier_rank=0):
            weight.add_(self._delta().to(weight.dtype), alpha=sign)


def find_targets(model: nn.Module, targets: list[str] | None, pattern: str | None) -> list[str]:
    """Module names to adapt: by suffix (peft's rule: equal or ends with '.name') or by full-name regex."""
    chosen = []
    for name, module in model.named_modules():
        if pattern is not None:
            hit = re.fullmatch(pattern, name) is not None
        else:
            hit = any(name == target or name.endswith(f".{target}") for target in targets or ())
        if not hit or isinstance(module, LoraLinear):
            continue
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise UnsupportedModel(
                f"method.lora: target {name} is a {type(module).__name__}; only Linear and Conv1D layers are supported"
            )
        chosen.append(name)
    if not chosen:
        wanted = f"targetPattern: {pattern!r}" if pattern is not None else f"targetModules: {targets}"
        raise UnsupportedModel(f"method.lora.{wanted} matches no module of {type(model).__name__}")
    return chosen


def lora_layers(model: nn.Module) -> list[LoraLinear]:
    """Every LoRA-wrapped layer of `model`."""
    return [module for module in model.modules() if isinstance(module, LoraLinear)]


@register
class Lora(PeftMethod):
    """LoRA on the family's query/value projections by default, or on the named targets."""

    spec_name: ClassVar[str] = "lora"
    families: ClassVar[tuple[str, ...]] = ("bert", "distilbert", "gpt2", "llama", "vit")
    config: LoraSpec

    def attach(self, model: Any) -> Any:
        self.prepare(model)
        for name in find_targets(model, self._targets(model), self.config.target_pattern):
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent)
            wrapped = LoraLinear(getattr(owner, child), self.config.r, self.config.alpha, self.config.dropout)
            setattr(owner, child, wrapped)
        return model

    def _targets(self, model: Any) -> list[str] | None:
        if self.config.target_pattern is not None:
            return None
        return self.config.target_modules or default_lora_targets(model, family_of(model))

    def merge(self, model: Any) -> None:
        """Fold every update into its base weight: zero extra latency at inference."""
        for layer in lora_layers(model):
            if not layer.merged:
                layer.merge()

    def unmerge(self, model: Any) -> None:
        """Undo `merge` (exact up to floating-point rounding)."""
        for layer in lora_layers(model):
            if layer.merged:
                layer.unmerge()

    def peft_export(self, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """peft's LoraConfig and weights: our keys under `base_model.model.`, heads as modules_to_save."""
        heads = self.task_heads(model)
        state = self.trainable_state(model)
        targets: list[str] | str = self.config.target_pattern or self._targets(model) or []
        config = {
            "peft_type": "LORA",
            "task_type": PEFT_TASK_TYPES.get(self.task),
            "base_model_name_or_path": getattr(model.config, "_name_or_path", None) or None,
            "r": self.config.r,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": targets,
            "fan_in_fan_out": any(layer.fan_in_fan_out for layer in lora_layers(model)),
            "bias": "none",
            "modules_to_save": heads or None,
            "init_lora_weights": True,
            "use_rslora": False,
            "use_dora": False,
            "inference_mode": True,
        }
        return config, {f"base_model.model.{name}": tensor for name, tensor in state.items()}
