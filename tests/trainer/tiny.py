"""Tiny random-weight backbones and data sets saved to disk, so the trainer loads them by local path.

A BERT sequence classifier (head included, so nothing is initialised at random on load) and a GPT-2, with a
word-level tokenizer over a small vocabulary. Dropout is off so runs are comparable across world sizes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

WORDS = [f"w{i}" for i in range(60)] + ["good", "bad", "great", "awful", "fine", "poor"]
POSITIVE, NEGATIVE = ["good", "great", "fine"], ["bad", "awful", "poor"]


def tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        eos_token="[EOS]",
    ).save_pretrained(directory)


def bert_classifier(directory: Path, hidden: int = 64, layers: int = 2, dropout: float = 0.0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=hidden * 2, max_position_embeddings=64, num_labels=2,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, classifier_dropout=dropout,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer(directory)
    return directory


def sentiment(path: Path, count: int, seed: int) -> Path:
    """Sentences of filler words with one sentiment word; label 1 for positive."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(count):
            label = rng.randrange(2)
            words = rng.sample(WORDS[:60], rng.randint(3, 8)) + [rng.choice(POSITIVE if label else NEGATIVE)]
            rng.shuffle(words)
            handle.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return path


def sentiment_folder(root: Path, train: int, eval: int, dropout: float = 0.0) -> Path:
    """A work folder with `model/` (a tiny BERT classifier), train.jsonl and eval.jsonl: what a text job reads."""
    bert_classifier(root / "model", dropout=dropout)
    sentiment(root / "train.jsonl", train, seed=1)
    sentiment(root / "eval.jsonl", eval, seed=2)
    return root


def job(name: str, spec: dict[str, Any], path: Path) -> Path:
    """Write a PEFTJob YAML."""
    path.write_text(yaml.safe_dump({"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": name}, "spec": spec}))
    return path
