"""Prefix-Tuning (Li & Liang 2021): trained key/value prefixes in every attention layer.

How the prefixes get in: a custom attention function registered with transformers' AttentionInterface (and
its mask twin with AttentionMaskInterface), selected by setting `config._attn_implementation`. Inside each
attention call it concatenates the layer's prefix keys/values in front of key_states/value_states (after the
KV cache update, so the cache never holds them and the prefix is added exactly once per layer and call,
however long generation runs) and prepends always-visible columns to the attention mask, then runs SDPA.
Why not `past_key_values` (what `peft` does): the Cache API changes between transformers releases and has
broken `peft`'s prefix tuning repeatedly; the attention-function signature is the stable, documented
extension point. Why not forward hooks on k/v projections: their outputs are pre-RoPE (Llama), per-step,
and cached, so a hook could neither keep the prefix out of the cache nor avoid rotating it.
Prefix keys/values have `num_key_value_heads` heads, so GQA models (Llama) work unchanged (SDPA repeats them).

The prefixes (through the optional MLP reparameterisation, `peft`'s PrefixEncoder module for module) are
computed once per model call by a forward pre-hook on the model, so `forward` and `generate` both see them
and the MLP runs once per step, not once per layer. They are kept until the next call, so activation
checkpointing can recompute layers during backward. SDPA is always the kernel underneath (flash kernels take
no arbitrary mask); on CPU and for these shapes it is what transformers picks anyway.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..api.spec import PrefixTuningSpec
from .base import PeftMethod
from .families import UnsupportedModel, dims, family_of, layers
from .peft_format import head_tensors, prompt_learning_config
from .registry import register
from .zero import gathered

ATTENTION = "peftjob_prefix"
"""The name the prefix attention function and its mask function are registered under."""

ENCODER = "prefix_encoder"
"""Where the PrefixEncoder lives in the model (its parameters are named `prefix_encoder.*`)."""


class PrefixEncoder(nn.Module):
    """Prefix tokens -> (MLP ->) keys and values for every layer: (num_layers*2, kv_heads, tokens, head_dim)."""

    def __init__(self, tokens: int, hidden: int, layers_: int, kv_heads: int, head_dim: int, projection: int | None):
        super().__init__()
        self.shape = (tokens, layers_ * 2, kv_heads, head_dim)
        width = layers_ * 2 * kv_heads * head_dim
        self.register_buffer("indices", torch.arange(tokens), persistent=False)
        if projection is None:
            self.embedding = nn.Embedding(tokens, width)
            self.transform = None
        else:
            self.embedding = nn.Embedding(tokens, hidden)
            self.transform = nn.Sequential(nn.Linear(hidden, projection), nn.Tanh(), nn.Linear(projection, width))

    def flat(self) -> torch.Tensor:
        """(tokens, num_layers*2*kv_heads*head_dim): the layout `peft` saves as prompt_embeddings."""
        prefix = self.embedding(self.indices)
        return prefix if self.transform is None else self.transform(prefix)

    def forward(self) -> torch.Tensor:
        return self.flat().view(self.shape).permute(1, 2, 0, 3)


class PrefixSlot:
    """The current call's prefixes, shared by the model's pre-hook (writer) and its attention layers (readers)."""

    def __init__(self) -> None:
        self.kv: torch.Tensor | None = None


def prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA over [prefix keys/values; the layer's keys/values], the prefix visible to every query."""
    slot: PrefixSlot = module.peftjob_prefix_slot
    layer = module.peftjob_prefix_layer
    batch = query.shape[0]
    prefix_key = slot.kv[2 * layer].to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    prefix_value = slot.kv[2 * layer + 1].to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    key = torch.cat([prefix_key, key], dim=2)
    value = torch.cat([prefix_value, value], dim=2)
    visible = attention_mask.new_ones if attention_mask.dtype == torch.bool else attention_mask.new_zeros
    columns = visible((*attention_mask.shape[:-1], prefix_key.shape[2]))
    attention_mask = torch.cat([columns, attention_mask], dim=-1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def materialised_mask(*args: Any, **kwargs: Any) -> torch.Tensor:
    """SDPA's boolean mask, never skipped as "plain causal/bidirectional": prefix columns get prepended to it."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False, "allow_is_bidirectional_skip": False})


AttentionInterface.register(ATTENTION, prefix_attention)
AttentionMaskInterface.register(ATTENTION, materialised_mask)


def shifted_positions(args: tuple, kwargs: dict[str, Any], tokens: int) -> torch.Tensor:
    """The call's position ids moved past the prefix, which occupies positions 0..tokens-1.

    That is the original formulation (prefix activations as the past of GPT-2) and what `peft` computes, so
    exported adapters give the same logits; explicit position_ids (as generate passes) are shifted alike.
    """
    given = kwargs.get("position_ids")
    if given is not None:
        return given + tokens
    inputs = kwargs.get("input_ids", args[0] if args else None)
    if inputs is None:
        inputs = kwargs["inputs_embeds"]
    cache = kwargs.get("past_key_values")
    start = tokens + (cache.get_seq_length() if cache is not None else 0)
    return torch.arange(start, start + inputs.shape[1], device=inputs.device).unsqueeze(0)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Each block's self-attention module (the one that calls the attention interface), in layer order."""
    _, blocks = layers(model, family_of(model))
    found = []
    for block in blocks:
        candidates = [m for m in block.modules() if hasattr(m, "layer_idx") and hasattr(m, "is_causal")]
        if len(candidates) != 1:
            raise UnsupportedModel(f"{type(block).__name__}: expected one self-attention module, found {len(candidates)}")
        found.append(candidates[0])
    return found


@register
class PrefixTuning(PeftMethod):
    """Per-layer key/value prefixes of `numVirtualTokens`; the task head trains too (classification)."""

    spec_name = "prefixTuning"
    families: ClassVar[tuple[str, ...]] = ("bert", "gpt2", "llama")
    config: PrefixTuningSpec

    def attach(self, model: Any) -> Any:
        self.prepare(model)
        size = dims(model)
        encoder = PrefixEncoder(
            self.config.num_virtual_tokens,
            size.hidden_size,
            size.num_layers,
            size.num_key_value_heads,
            size.head_dim,
            self.config.projection_hidden_size if self.config.projection else None,
        )
        model.add_module(ENCODER, encoder)
        slot = PrefixSlot()
        for index, attention in enumerate(attention_modules(model)):
            attention.peftjob_prefix_slot = slot
            attention.peftjob_prefix_layer = index

        tokens = self.config.num_virtual_tokens

        def before_call(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
            slot.kv = module.get_submodule(ENCODER)()
            return args, {**kwargs, "position_ids": shifted_positions(args, kwargs, tokens)}

        model.register_forward_pre_hook(before_call, with_kwargs=True)
        model.config._attn_implementation = ATTENTION
        return model

    def peft_export(self, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        encoder: PrefixEncoder = model.get_submodule(ENCODER)
        with torch.no_grad(), gathered(encoder.parameters()):
            prefixes = encoder.flat().detach().to("cpu", torch.float32).contiguous()
        size = dims(model)
        heads = self.task_heads(model)
        config = prompt_learning_config(
            "PREFIX_TUNING",
            self.task,
            model,
            self.config.num_virtual_tokens,
            heads,
            prefix_projection=self.config.projection,
            encoder_hidden_size=self.config.projection_hidden_size,
        )
        # peft sizes prefixes by key/value heads (GQA), see its _prepare_prompt_learning_config
        config |= {"token_dim": size.num_key_value_heads * size.head_dim, "num_attention_heads": size.num_key_value_heads}
        return config, {"prompt_embeddings": prefixes} | head_tensors(model, heads)
