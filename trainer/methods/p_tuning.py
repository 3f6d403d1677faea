"""P-Tuning (Liu et al. 2021, "GPT Understands, Too"): pseudo-token embeddings through an LSTM or MLP encoder.

The encoder mirrors `peft`'s PromptEncoder module for module (embedding, lstm_head, mlp_head), so one
optimizer step means the same thing in both. Without a template the encoded tokens are prepended; with one
('[P][P] {text} [P] It was') the data pipeline builds input_ids with `template_input_ids`, which marks
pseudo-token positions with PSEUDO_TOKEN_ID around the input and the tokenized discrete prompt text, and
the wrapper writes the encoder's outputs there. `peft` only prepends, so only the prepended form is exported
in its layout (as the encoder's outputs, which is what `peft` saves and loads in inference mode).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..api.spec import PTuningSpec
from .base import PeftMethod
from .families import dims
from .prompt_tuning import peft_config, peft_heads
from .prompt_wrapper import PSEUDO_TOKEN_ID, PromptedModel
from .zero import gathered

LSTM_LAYERS = 2
"""Bidirectional LSTM depth, `peft`'s default (Liu et al. use a 2-layer biLSTM)."""


class PromptEncoder(nn.Module):
    """Pseudo-token embeddings -> (biLSTM ->) MLP -> one embedding per virtual token."""

    def __init__(self, num_virtual_tokens: int, hidden_size: int, encoder: str, encoder_hidden_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, hidden_size)
        self.register_buffer("indices", torch.arange(num_virtual_tokens), persistent=False)
        if encoder == "lstm":
            self.lstm_head = nn.LSTM(
                input_size=hidden_size,
                hidden_size=encoder_hidden_size,
                num_layers=LSTM_LAYERS,
                bidirectional=True,
                batch_first=True,
            )
            width = encoder_hidden_size * 2
            self.mlp_head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, hidden_size))
        else:
            self.lstm_head = None
            self.mlp_head = nn.Sequential(
                nn.Linear(hidden_size, encoder_hidden_size),
                nn.ReLU(),
                nn.Linear(encoder_hidden_size, encoder_hidden_size),
                nn.ReLU(),
                nn.Linear(encoder_hidden_size, hidden_size),
            )

    def forward(self) -> torch.Tensor:
        tokens = self.embedding(self.indices).unsqueeze(0)
        if self.lstm_head is not None:
            tokens = self.lstm_head(tokens)[0]
        return self.mlp_head(tokens)[0]


_TEMPLATE_PARTS = re.compile(r"(\[P\]|\{text\})")


def template_input_ids(tokenizer: Any, template: str, text: str, max_length: int) -> list[int]:
    """input_ids for one example: the template's text, the input, PSEUDO_TOKEN_ID at every [P].

    The tokenizer's special tokens ([CLS] ... [SEP], BOS) wrap the whole (transformers 5 tokenizers have no
    build_inputs_with_special_tokens, so they are read off a probe); only the input is truncated, so the
    pseudo tokens and the discrete prompt always survive.
    """
    pieces: list[list[int] | str] = []
    for part in _TEMPLATE_PARTS.split(template):
        if part == "[P]":
            pieces.append([PSEUDO_TOKEN_ID])
        elif part == "{text}":
            pieces.append("{text}")
        elif part.strip():
            pieces.append(tokenizer(part.strip(), add_special_tokens=False)["input_ids"])
    before, after = special_tokens_around(tokenizer)
    fixed = sum(len(piece) for piece in pieces if isinstance(piece, list)) + len(before) + len(after)
    if fixed >= max_length:
        raise ValueError(f"pTuning.template: needs {fixed} tokens, more than data.maxLength {max_length}")
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_length - fixed]
    ids = [token for piece in pieces for token in (text_ids if piece == "{text}" else piece)]
    return before + ids + after


def special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] / [SEP], BOS, nothing)."""
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    wrapped = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(wrapped)) if wrapped[i : i + len(probe)] == probe)
    return wrapped[:start], wrapped[start + len(probe) :]


class PTuning(PeftMethod):
    """Prompt encoder over `numVirtualTokens` pseudo tokens; the task head trains too (classification)."""

    spec_name = "pTuning"
    config: PTuningSpec

    def attach(self, model: Any) -> PromptedModel:
        self.prepare(model)
        encoder = PromptEncoder(
            self.config.num_virtual_tokens,
            dims(model).hidden_size,
            self.config.encoder,
            self.config.encoder_hidden_size,
        )
        return PromptedModel(model, encoder, self.task, prepend=self.config.template is None)

    def peft_export(self, model: PromptedModel) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if self.config.template is not None:
            return None
        with torch.no_grad(), gathered(model.prompt.parameters()):
            embeddings = model.prompt().detach().to("cpu", torch.float32).contiguous()
        heads = self.task_heads(model)
        tensors = {"prompt_embeddings": embeddings} | peft_heads(model.model, heads)
        config = peft_config(
            "P_TUNING",
            self.task,
            model.model,
            self.config.num_virtual_tokens,
            heads,
            encoder_reparameterization_type=self.config.encoder.upper(),
            encoder_hidden_size=self.config.encoder_hidden_size,
            encoder_num_layers=LSTM_LAYERS,
            encoder_dropout=0.0,
        )
        return config, tensors
