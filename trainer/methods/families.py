"""Model families: where each architecture keeps the modules the methods touch, read from `config.model_type`.

Methods never hard-code module paths; they ask the family. Paths are relative to `model.base_model` (the
backbone without its task head) and list alternatives newest-first, because transformers renames modules
between releases (ViT's `encoder.layer.N.output.dense` became `layers.N.mlp.fc2` in 5.x). Shapes come from
the config, never from weights, so everything here is ZeRO-3 safe (placeholders hold no data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ModelError


class UnsupportedModel(ModelError, ValueError):
    """A model type, or a model type x method pair, that peftjob does not implement."""


@dataclass(frozen=True)
class Family:
    """What the methods need to know about one architecture."""

    name: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...]
    """Candidate paths (from the backbone) of the ModuleList of transformer blocks."""
    attention_output: tuple[str, ...]
    """Candidate paths (from a block) of the attention output projection (adapter after it)."""
    ffn_output: tuple[str, ...]
    """Candidate paths (from a block) of the feed-forward output projection (adapter after it)."""
    lora_targets: tuple[tuple[str, ...], ...]
    """Candidate default LoRA target suffix sets: the attention query and value projections."""
    heads: tuple[str, ...]
    """Names of task heads that train with the method (classifier, score); never the tied lm_head."""


FAMILIES: tuple[Family, ...] = (
    Family(
        name="bert",
        model_types=("bert", "roberta", "xlm-roberta"),
        layers=("encoder.layer",),
        attention_output=("attention.output.dense",),
        ffn_output=("output.dense",),
        lora_targets=(("query", "value"),),
        heads=("classifier",),
    ),
    Family(
        name="distilbert",
        model_types=("distilbert",),
        layers=("transformer.layer",),
        attention_output=("attention.out_lin",),
        ffn_output=("ffn.lin2",),
        lora_targets=(("q_lin", "v_lin"),),
        heads=("pre_classifier", "classifier"),
    ),
    Family(
        name="gpt2",
        model_types=("gpt2",),
        layers=("h",),
        attention_output=("attn.c_proj",),
        ffn_output=("mlp.c_proj",),
        lora_targets=(("c_attn",),),
        heads=("score",),
    ),
    Family(
        name="llama",
        model_types=("llama", "qwen2", "mistral"),
        layers=("layers",),
        attention_output=("self_attn.o_proj",),
        ffn_output=("mlp.down_proj",),
        lora_targets=(("q_proj", "v_proj"),),
        heads=("score",),
    ),
    Family(
        name="vit",
        model_types=("vit",),
        layers=("layers", "encoder.layer"),
        attention_output=("attention.o_proj", "attention.output.dense"),
        ffn_output=("mlp.fc2", "output.dense"),
        lora_targets=(("q_proj", "v_proj"), ("query", "value")),
        heads=("classifier",),
    ),
)


def family_of(model: Any) -> Family:
    """The family of a transformers model (or config). Which methods a family supports, each method says."""
    config = getattr(model, "config", model)
    model_type = getattr(config, "model_type", None)
    family = next((f for f in FAMILIES if model_type in f.model_types), None)
    if family is None:
        supported = ", ".join(t for f in FAMILIES for t in f.model_types)
        raise UnsupportedModel(f"model_type {model_type!r} is not supported (supported: {supported})")
    return family


def _resolve(root: torch.nn.Module, candidates: tuple[str, ...], what: str) -> tuple[str, torch.nn.Module]:
    for path in candidates:
        try:
            return path, root.get_submodule(path)
        except AttributeError:
            continue
    raise UnsupportedModel(f"{type(root).__name__} has none of {', '.join(candidates)} ({what})")


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its task head (`model.base_model`, or the model itself)."""
    return getattr(model, "base_model", model)


def backbone_path(model: torch.nn.Module) -> str:
    """The backbone's path inside `model` ("" when the model is the backbone)."""
    core = backbone(model)
    return next(name for name, module in model.named_modules() if module is core)


def layers(model: torch.nn.Module, family: Family) -> tuple[str, list[torch.nn.Module]]:
    """(full path of the block list, the blocks)."""
    path, blocks = _resolve(backbone(model), family.layers, "transformer blocks")
    prefix = backbone_path(model)
    return (f"{prefix}.{path}" if prefix else path), list(blocks)


def adapter_sites(model: torch.nn.Module, family: Family) -> list[str]:
    """Full module paths where Houlsby adapters go: per block, attention output then feed-forward output."""
    root, blocks = layers(model, family)
    sites = []
    for index, block in enumerate(blocks):
        for candidates, what in ((family.attention_output, "attention output"), (family.ffn_output, "FFN output")):
            path, _ = _resolve(block, candidates, what)
            sites.append(f"{root}.{index}.{path}")
    return sites


def default_lora_targets(model: torch.nn.Module, family: Family) -> list[str]:
    """The family's query/value projection suffixes, as present in this transformers release."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for targets in family.lora_targets:
        if set(targets) <= names:
            return list(targets)
    raise UnsupportedModel(f"no default LoRA targets found for {family.name}: set targetModules")


def head_names(model: torch.nn.Module, family: Family, task: str) -> list[str]:
    """Top-level task-head modules that exist on this model (none for causal LM: lm_head is tied)."""
    if task == "causal-lm":
        return []
    return [name for name in family.heads if isinstance(getattr(model, name, None), torch.nn.Module)]


def embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """The input embedding module: token embeddings for text, the patch/position embeddings for ViT."""
    core = backbone(model)
    vit_embeddings = getattr(core, "embeddings", None)
    if getattr(model.config, "model_type", None) == "vit" and vit_embeddings is not None:
        return vit_embeddings
    return model.get_input_embeddings()


@dataclass(frozen=True)
class Dims:
    """Sizes the methods need, from the config (ZeRO-3 safe: no weight is read)."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int | None


def dims(model: Any) -> Dims:
    """Read the sizes from `model.config` (GQA aware: Llama's key/value heads may be fewer than query heads)."""
    config = getattr(model, "config", model)
    hidden = config.hidden_size
    heads = config.num_attention_heads
    return Dims(
        hidden_size=hidden,
        num_layers=config.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or hidden // heads,
        vocab_size=getattr(config, "vocab_size", None),
    )
