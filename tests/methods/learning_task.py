"""Small learning tasks where a frozen backbone plus head is clearly worse than tuning, and one training loop.

Text: "<animal> and <colour>" or "<colour> and <animal>" phrases; the label says whether the animal comes
first. Both orders hold the same words, so a head on the frozen MiniLM (trained for order-insensitive sentence
similarity) has little to go on, while a tuned backbone learns the order. Held-out examples use animal/colour
pairs never seen in training.

Images: a tiny ViT is first trained to name the colour of the square in the top half of a 16x16 image that
also has a square in the bottom half; then it is frozen and asked for the bottom square's colour. Its features
were shaped to ignore the bottom, so a head alone does poorly; prompts can steer its attention back.

Everything is seeded and runs on one thread (a reproducible summation order, and no oversubscription on
shared CI cores). Prompt methods reuse `order_task`, `minilm_classifier`, `fit_text` and the session fixture
`text_baselines` (conftest.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ANIMALS = ["cat", "dog", "horse", "cow", "sheep", "goat", "lion", "tiger", "bear", "wolf", "fox", "mouse",
           "rabbit", "deer", "duck", "owl", "eagle", "snake", "frog", "whale", "shark", "monkey", "zebra", "camel"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "purple", "orange", "pink", "grey",
           "gold", "silver", "violet", "crimson", "teal"]
TEMPLATES = ["{a} and {b}", "the {a} and the {b}", "{a} then {b}", "a {a} near a {b}"]

FULL_FINE_TUNING = {"lr": 5e-5, "epochs": 2}
FROZEN_HEAD = {"lr": 1e-2, "epochs": 6}


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]


@contextmanager
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
    test_inputs: dict[str, torch.Tensor], test_labels: torch.Tensor, *, lr: float, epochs: int,
    batch_size: int = 32, seed: int = 0,
) -> float:
    """AdamW on the trainable parameters, then the held-out accuracy."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    with one_thread():
        model.train()
        for _ in range(epochs):
            for index in torch.randperm(len(labels), generator=generator).split(batch_size):
                optimizer.zero_grad()
                model(**{key: value[index] for key, value in inputs.items()}, labels=labels[index]).loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            predictions = model(**test_inputs).logits.argmax(-1)
    return (predictions == test_labels).float().mean().item()


def freeze_all_but_head(model: torch.nn.Module) -> torch.nn.Module:
    """The frozen-backbone baseline: only the classifier trains."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("classifier."))
    return model


# ------------------------------------------------------------------------------------------------ text


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
    """(model, tokenizer): the real pretrained MiniLM with a fresh 2-class head (the same head for a seed)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def fit_text(model: torch.nn.Module, tokenizer: Any, *, lr: float, epochs: int) -> float:
    """Train on the order task's training split; the held-out accuracy."""
    train, test = order_task()
    encode = lambda split: dict(tokenizer(split.texts, padding=True, return_tensors="pt"))  # noqa: E731
    return fit(model, encode(train), torch.tensor(train.labels), encode(test), torch.tensor(test.labels),
               lr=lr, epochs=epochs)


def text_baseline_accuracies(model_dir: Path) -> dict[str, float]:
    """Held-out accuracy of full fine-tuning and of the frozen backbone with a trained head."""
    full = fit_text(*minilm_classifier(model_dir), **FULL_FINE_TUNING)
    model, tokenizer = minilm_classifier(model_dir)
    frozen = fit_text(freeze_all_but_head(model), tokenizer, **FROZEN_HEAD)
    return {"full": full, "frozen": frozen}


# ---------------------------------------------------------------------------------------------- images

IMAGE, PATCH, COLOURS_RGB = 16, 4, 3


def two_squares(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, top square colour, bottom square colour): one 4x4 square in each half, colour = channel."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, COLOURS_RGB, IMAGE, IMAGE, generator=generator) * 0.2
    grid = IMAGE // PATCH
    half = grid * grid // 2
    top = torch.randint(0, half, (count,), generator=generator)
    bottom = torch.randint(half, 2 * half, (count,), generator=generator)
    top_colour = torch.randint(0, COLOURS_RGB, (count,), generator=generator)
    bottom_colour = torch.randint(0, COLOURS_RGB, (count,), generator=generator)
    for index in range(count):
        for cell, colour in ((top[index], top_colour[index]), (bottom[index], bottom_colour[index])):
            row, column = divmod(int(cell), grid)
            images[index, colour, row * PATCH : (row + 1) * PATCH, column * PATCH : (column + 1) * PATCH] += 2.0
    return images, top_colour, bottom_colour


def vit_pretrained_on_top_colour(seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of a tiny ViT fully trained to name the top square's colour (its "pretraining")."""
    model = tiny_vit(seed)
    images, top, _ = two_squares(1024, seed=10)
    test_images, test_top, _ = two_squares(256, seed=11)
    accuracy = fit(model, {"pixel_values": images}, top, {"pixel_values": test_images}, test_top, lr=3e-3, epochs=15)
    assert accuracy > 0.95, f"pretraining the tiny ViT failed ({accuracy:.2f})"
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=IMAGE, patch_size=PATCH, num_channels=COLOURS_RGB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=COLOURS_RGB, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.AutoModelForImageClassification.from_config(config)


def fit_bottom_colour(model: torch.nn.Module, *, lr: float, epochs: int) -> float:
    """Train on the downstream task (the bottom square's colour); the held-out accuracy."""
    images, _, bottom = two_squares(1024, seed=0)
    test_images, _, test_bottom = two_squares(512, seed=1)
    return fit(
        model, {"pixel_values": images}, bottom, {"pixel_values": test_images}, test_bottom, lr=lr, epochs=epochs
    )
