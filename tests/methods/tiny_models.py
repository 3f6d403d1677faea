"""Tiny random-weight models of every supported family, built from small configs with fixed seeds.

Shared by the method tests (`from tests.methods.tiny_models import tiny_model`) and the ZeRO-3 worker script.
Nothing is downloaded. Two layers, hidden 32, so a forward pass takes milliseconds.
"""

from __future__ import annotations

import torch
import transformers

VOCAB = 96
HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2  # Llama uses grouped-query attention here, so prefix code must respect num_key_value_heads
INTERMEDIATE = 64
POSITIONS = 64
IMAGE = 16
PATCH = 4
CHANNELS = 3
LABELS = 3

PAD_IDS = {"bert": 0, "gpt2": 1, "llama": 1}

FAMILY_TASKS = {
    "bert": ("sequence-classification",),
    "gpt2": ("causal-lm", "sequence-classification"),
    "llama": ("causal-lm", "sequence-classification"),
    "vit": ("image-classification",),
}

AUTO_CLASSES = {
    "causal-lm": transformers.AutoModelForCausalLM,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "image-classification": transformers.AutoModelForImageClassification,
}


def tiny_config(family: str, task: str) -> transformers.PretrainedConfig:
    """A small config of `family`, with labels for classification tasks."""
    labels = {} if task == "causal-lm" else {"num_labels": LABELS}
    if family == "bert":
        return transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS, **labels,
        )
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, **labels,
        )
    if family == "llama":
        return transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, **labels,
        )
    if family == "vit":
        return transformers.ViTConfig(
            image_size=IMAGE, patch_size=PATCH, num_channels=CHANNELS, hidden_size=HIDDEN,
            num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE, **labels,
        )
    raise ValueError(f"no tiny config for family {family}")


def tiny_model(family: str, task: str, seed: int = 0) -> torch.nn.Module:
    """A fresh random-weight model; the same seed gives bit-identical weights. Dropout off (eval mode)."""
    torch.manual_seed(seed)
    model = AUTO_CLASSES[task].from_config(tiny_config(family, task))
    return model.eval()


def tiny_batch(family: str, task: str, batch: int = 4, length: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    """A reproducible batch with labels for `task` (right padding in the last row for text models)."""
    generator = torch.Generator().manual_seed(seed)
    if family == "vit":
        pixels = torch.randn(batch, CHANNELS, IMAGE, IMAGE, generator=generator)
        return {"pixel_values": pixels, "labels": torch.randint(0, LABELS, (batch,), generator=generator)}
    input_ids = torch.randint(2, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, length - 3 :] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD_IDS[family])
    if task == "causal-lm":
        labels = input_ids.masked_fill(attention_mask == 0, -100)
    else:
        labels = torch.randint(0, LABELS, (batch,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


FAMILY_TASK_PAIRS = [(family, task) for family, tasks in FAMILY_TASKS.items() for task in tasks]

PROMPT_CASES = [("gpt2", "causal-lm"), ("llama", "causal-lm"), ("bert", "sequence-classification")]
"""The text families the prompt methods are tested on: both decoders as language models, BERT as a classifier."""

DECODERS = ("gpt2", "llama")
"""The families that generate."""


def head_params(family: str, task: str) -> int:
    """Parameters of the task head: classifier (BERT, ViT) has a bias, score (GPT-2, Llama) none; no head for LM."""
    if task == "causal-lm":
        return 0
    return HIDDEN * LABELS + (LABELS if family in ("bert", "vit") else 0)
