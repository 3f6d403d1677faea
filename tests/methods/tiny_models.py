"""Tiny random-weight models of every supported model type, built from small configs with fixed seeds.

Shared by the method tests (`from tests.methods.tiny_models import tiny_model`) and the ZeRO-3 worker script.
Nothing is downloaded. Two layers, hidden 32, so a forward pass takes milliseconds.

The tests' "family" string names a tiny model by its `config.model_type` ("qwen2", "mistral", "distilbert"),
not by the families.py family that claims it (both Qwen2 and Mistral belong to the "llama" family): a model
type that a family claims is only proven once a tiny model of that very type runs through the methods.
"""

from __future__ import annotations

import torch
import transformers

VOCAB = 96
HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2  # Llama uses grouped-query attention here, so prefix code must respect num_key_value_heads
MISTRAL_KV_HEADS = 1  # 4 query heads per key/value head, as Mistral 7B's 32/8
MISTRAL_HEAD_DIM = 16  # set explicitly and not HIDDEN // HEADS (8), as Mistral Nemo's 128 with hidden 5120 / 32 heads
INTERMEDIATE = 64
POSITIONS = 64
IMAGE = 16
PATCH = 4
CHANNELS = 3
LABELS = 3

PAD_IDS = {"bert": 0, "distilbert": 0, "gpt2": 1, "llama": 1, "qwen2": 1, "mistral": 1}

FAMILY_TASKS = {
    "bert": ("sequence-classification",),
    "distilbert": ("sequence-classification",),
    "gpt2": ("causal-lm", "sequence-classification"),
    "llama": ("causal-lm", "sequence-classification"),
    "qwen2": ("causal-lm", "sequence-classification"),
    "mistral": ("causal-lm", "sequence-classification"),
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
    if family == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTERMEDIATE,
            max_position_embeddings=POSITIONS, pad_token_id=0, **labels,
        )
    if family == "qwen2":  # biases on the q/k/v projections (none on o_proj), unlike Llama; tied LM head as 0.5B
        return transformers.Qwen2Config(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE, max_position_embeddings=POSITIONS,
            bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=True, **labels,
        )
    # Mistral keeps its default sliding_window (4096): masks take the sliding-window path, and the window still
    # covers every test sequence (with the prefix), as peft interop needs
    if family == "mistral":
        return transformers.MistralConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=MISTRAL_KV_HEADS, head_dim=MISTRAL_HEAD_DIM, intermediate_size=INTERMEDIATE,
            max_position_embeddings=POSITIONS, bos_token_id=0, eos_token_id=1, pad_token_id=1, **labels,
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

DECODERS = ("gpt2", "llama", "qwen2", "mistral")
"""The families that generate."""

PROMPT_CASES = [*((family, "causal-lm") for family in DECODERS), ("bert", "sequence-classification")]
"""The text families every prompt method is tested on: the decoders as language models, BERT as a classifier."""

INPUT_PROMPT_CASES = [*PROMPT_CASES, ("distilbert", "sequence-classification")]
"""PROMPT_CASES plus DistilBERT, whose family has Prompt Tuning and P-Tuning but no Prefix-Tuning."""


def kv_width(family: str) -> int:
    """Width of one layer's keys (or values): key/value heads x head dim (GQA for Llama, Qwen2, Mistral)."""
    if family == "mistral":
        return MISTRAL_KV_HEADS * MISTRAL_HEAD_DIM
    return (KV_HEADS if family in ("llama", "qwen2") else HEADS) * (HIDDEN // HEADS)


def query_width(family: str) -> int:
    """Width of the query projection's output: HIDDEN except where head_dim is set apart from it (Mistral)."""
    return HEADS * MISTRAL_HEAD_DIM if family == "mistral" else HIDDEN


def head_modules(family: str, task: str) -> tuple[str, ...]:
    """The task-head modules that train (the families' `heads` present on this model); none for LM."""
    if task == "causal-lm":
        return ()
    if family == "distilbert":
        return ("pre_classifier", "classifier")
    return ("classifier",) if family in ("bert", "vit") else ("score",)


def head_prefixes(family: str, task: str, under: str = "") -> tuple[str, ...]:
    """Parameter-name prefixes of the task head, inside a wrapper's `under` (e.g. "model.")."""
    return tuple(f"{under}{name}." for name in head_modules(family, task))


def head_params(family: str, task: str) -> int:
    """Parameters of the task head: classifier (BERT, ViT) has a bias, score (decoders) none; DistilBERT's head
    is pre_classifier (HIDDEN -> HIDDEN, bias) then classifier (bias); no head for LM."""
    if task == "causal-lm":
        return 0
    if family == "distilbert":
        return (HIDDEN * HIDDEN + HIDDEN) + (HIDDEN * LABELS + LABELS)
    return HIDDEN * LABELS + (LABELS if family in ("bert", "vit") else 0)
