"""P-Tuning (Liu et al. 2021, "GPT Understands, Too"): pseudo-token embeddings through an LSTM or MLP encoder.

The encoder mirrors `peft`'s PromptEncoder module for module (embedding, lstm_head, mlp_head), so one
optimizer step means the same thing in both. Without a template the encoded tokens are prepended; with one
('[P][P] {text} [P] It was') the data pipeline builds input_ids with `templates.template_input_ids`, which marks
pseudo-token positions with PSEUDO_TOKEN_ID around the input and the tokenized discrete prompt text, and
the wrapper writes the encoder's outputs there. `peft` only prepends, so only the prepended form is exported
in its layout (as the encoder's outputs, which is what `peft` saves and loads in inference mode).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..api.spec import PTuningSpec
from .base import PeftMethod
from .families import dims
from .peft_format import head_tensors, prompt_learning_config
from .prompt_wrapper import PromptedModel
from .registry import register
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


@register
class PTuning(PeftMethod):
    """Prompt encoder over `numVirtualTokens` pseudo tokens; the task head trains too (classification)."""

    spec_name = "pTuning"
    families: ClassVar[tuple[str, ...]] = ("bert", "distilbert", "gpt2", "llama")
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
        tensors = {"prompt_embeddings": embeddings} | head_tensors(model.model, heads)
        config = prompt_learning_config(
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
