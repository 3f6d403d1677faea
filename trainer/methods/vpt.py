"""Visual Prompt Tuning (Jia et al. 2022): learned tokens inserted right after [CLS] in a ViT.

Shallow: one set of prompts inserted after the embeddings (so position embeddings, added inside the
embeddings module, never touch them). Deep: fresh prompts at every block, replacing the previous block's
prompt outputs. The prompts live in one module, `vpt_prompts`, registered on the model and called from
forward hooks on the embeddings and the blocks: calling the module (rather than reading its parameter)
lets ZeRO-3 fetch the partitioned prompts like any other layer's weights. The classifier reads [CLS],
which stays at position 0.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..api.spec import VptSpec
from .base import PeftMethod
from .families import dims, embeddings, layers
from .registry import register

PROMPTS_MODULE = "vpt_prompts"


class VisualPrompts(nn.Module):
    """Prompt tokens per depth (one row when shallow) and the dropout applied to them."""

    def __init__(self, depth: int, tokens: int, hidden: int, patch_area: int, dropout: float, factory: dict) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(depth, tokens, hidden, **factory))
        bound = math.sqrt(6.0 / float(3 * patch_area + hidden))  # Jia et al.'s Xavier-uniform over patch area
        nn.init.uniform_(self.prompts, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        """Insert (depth 0) or replace (deeper) the prompt tokens after [CLS]."""
        tokens = self.prompts.shape[1]
        prompt = self.dropout(self.prompts[depth]).to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        rest = hidden[:, 1:] if depth == 0 else hidden[:, 1 + tokens :]
        return torch.cat([hidden[:, :1], prompt, rest], dim=1)

    def after_embeddings(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the embeddings: insert the first prompts."""
        return self(output, 0)

    def before_block(self, module: nn.Module, args: tuple, kwargs: dict, depth: int) -> tuple[tuple, dict]:
        """Forward pre-hook on block `depth` (deep VPT): swap in that depth's prompts."""
        if args:
            return (self(args[0], depth), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self(kwargs["hidden_states"], depth)}


def _patch_area(config: Any) -> int:
    patch = config.patch_size
    return patch * patch if isinstance(patch, int) else math.prod(patch)


@register
class Vpt(PeftMethod):
    """VPT-shallow or VPT-deep on a ViT image classifier."""

    spec_name: ClassVar[str] = "vpt"
    families: ClassVar[tuple[str, ...]] = ("vit",)
    config: VptSpec

    def attach(self, model: Any) -> Any:
        family = self.prepare(model)
        sizes = dims(model)
        _, blocks = layers(model, family)
        depth = sizes.num_layers if self.config.depth == "deep" else 1
        reference = embeddings(model).cls_token
        prompts = VisualPrompts(
            depth,
            self.config.num_tokens,
            sizes.hidden_size,
            _patch_area(model.config),
            self.config.dropout,
            {"dtype": reference.dtype, "device": reference.device},
        )
        model.add_module(PROMPTS_MODULE, prompts)
        embeddings(model).register_forward_hook(prompts.after_embeddings)
        for index in range(1, depth):
            blocks[index].register_forward_pre_hook(
                functools.partial(prompts.before_block, depth=index), with_kwargs=True
            )
        return model
