"""Houlsby adapters (2019): a bottleneck with a skip connection after each attention and feed-forward output.

Two per block, placed on the output projection (BERT's `attention.output.dense` and `output.dense`, GPT-2's
`c_proj`s, Llama's `o_proj`/`down_proj`, ViT's `o_proj`/`fc2`), i.e. before the residual add and LayerNorm.
The wrapper applies the adapter to the projection's output, so the block's own dropout then follows the
adapter (Houlsby apply it after that dropout; identical in eval, a negligible difference while training),
which keeps one placement rule for every family. Projections start near zero (std `initScale`), so the
model starts near identity. LayerNorms (RMSNorms for Llama) and the task head train too, as in the paper.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..api.spec import AdapterSpec
from .base import PeftMethod
from .families import adapter_sites, backbone, dims
from .registry import register

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "swish": nn.SiLU}


class Bottleneck(nn.Module):
    """h + up(act(down(h))): the adapter proper."""

    def __init__(self, hidden: int, size: int, activation: str, init_scale: float, factory: dict[str, Any]) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size, **factory)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden, **factory)
        for layer in (self.down, self.up):
            if init_scale > 0:
                nn.init.trunc_normal_(layer.weight, std=init_scale, a=-2 * init_scale, b=2 * init_scale)
            else:
                nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class WithAdapter(nn.Module):
    """A frozen output projection followed by its adapter."""

    def __init__(self, base_layer: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.adapter(self.base_layer(*args, **kwargs))


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, or an RMSNorm-style module (Llama, Qwen, Mistral define their own classes)."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


@register
class Adapter(PeftMethod):
    """Houlsby adapters in every block of the backbone."""

    spec_name: ClassVar[str] = "adapter"
    families: ClassVar[tuple[str, ...]] = ("bert", "distilbert", "gpt2", "llama", "vit")
    config: AdapterSpec

    def attach(self, model: Any) -> Any:
        family = self.prepare(model)
        hidden = dims(model).hidden_size
        for site in adapter_sites(model, family):
            parent, _, child = site.rpartition(".")
            owner = model.get_submodule(parent)
            base_layer = getattr(owner, child)
            weight = base_layer.weight
            factory = {"dtype": weight.dtype, "device": weight.device}
            adapter = Bottleneck(
                hidden, self.config.bottleneck_size, self.config.non_linearity, self.config.init_scale, factory
            )
            setattr(owner, child, WithAdapter(base_layer, adapter))
        if self.config.train_layer_norms:
            for module in backbone(model).modules():
                if is_norm(module):
                    module.requires_grad_(True)
        return model
