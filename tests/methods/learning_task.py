"""A small text-classification task the frozen MiniLM cannot solve but fine-tuning can, and its training loop.

The task: "<animal> and <colour>" or "<colour> and <animal>" phrases; the label says whether the animal comes
first. Both orders contain the same words, so a head on frozen sentence features has little to go on (the
backbone was trained for order-insensitive similarity), while a tuned backbone learns the order. Held-out
examples use animal/colour pairs never seen in training. Everything is seeded; nothing is downloaded.

B's prompt methods reuse `order_task`, `minilm_classifier` and `fit_and_score` (test_learning_prompts.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ANIMALS = ["cat", "dog", "horse", "cow", "sheep", "goat", "lion", "tiger", "bear", "wolf", "fox", "mouse",
           "rabbit", "deer", "duck", "owl", "eagle", "snake", "frog", "whale", "shark", "monkey", "zebra", "camel"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "purple", "orange", "pink", "grey",
           "gold", "silver", "violet", "crimson", "teal"]
TEMPLATES = ["{a} and {b}", "the {a} and the {b}", "{a} then {b}", "a {a} near a {b}"]


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]


def order_task(seed: int = 0, held_out_fraction: float = 0.25) -> tuple[Split, Split]:
    """(train, test): every animal x colour pair in both orders; test pairs never appear in training."""
    rng = random.Random(seed)
    pairs = [(animal, colour) for animal in ANIMALS for colour in COLOURS]
    rng.shuffle(pairs)
    cut = int(len(pairs) * held_out_fraction)
    splits = []
    for chosen in (pairs[cut:], pairs[:cut]):
        texts, labels = [], []
        for animal, colour in chosen:
            template = rng.choice(TEMPLATES)
            texts += [template.format(a=animal, b=colour), template.format(a=colour, b=animal)]
            labels += [1, 0]
        splits.append(Split(texts, labels))
    return splits[0], splits[1]


def minilm_classifier(model_dir: Path, seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer): the real pretrained MiniLM with a fresh 2-class head (same head for a given seed)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def fit_and_score(
    model: torch.nn.Module, tokenizer: Any, train: Split, test: Split, *, lr: float, epochs: int,
    batch_size: int = 32, seed: int = 0,
) -> float:
    """Train the trainable parameters with AdamW, then return the held-out accuracy."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoded = tokenizer(train.texts, padding=True, return_tensors="pt")
    labels = torch.tensor(train.labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(labels), generator=generator).split(batch_size):
            optimizer.zero_grad()
            batch = {key: value[index] for key, value in encoded.items()}
            model(**batch, labels=labels[index]).loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        held_out = tokenizer(test.texts, padding=True, return_tensors="pt")
        predictions = model(**held_out).logits.argmax(-1)
    return (predictions == torch.tensor(test.labels)).float().mean().item()
