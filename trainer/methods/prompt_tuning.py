"""Prompt Tuning (Lester et al. 2021): a trained soft prompt prepended to the frozen model's input embeddings.

Init "random" draws from N(0, initializer_range), the distribution transformers gives the token embeddings
themselves (a unit-variance prompt would drown GPT-2's 0.02-scale embeddings); "vocab" copies the embeddings of
uniformly sampled vocabulary ids; "text" copies those of initText's tokens, repeated or cut to the prompt length.
Both read the frozen embedding matrix, so under ZeRO-3 it is gathered on every rank first (a collective).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..api.spec import PromptTuningSpec
from ..errors import SpecError
from .base import PeftMethod
from .families import dims
from .peft_format import head_tensors, prompt_learning_config
from .prompt_wrapper import PromptedModel
from .registry import register
from .zero import cpu_copy, gathered


class SoftPrompt(nn.Module):
    """`num_virtual_tokens` trainable embeddings; called (not read) so ZeRO-3 hooks gather them."""

    def __init__(self, num_virtual_tokens: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, hidden_size)
        self.register_buffer("indices", torch.arange(num_virtual_tokens), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.embedding(self.indices)


def text_token_ids(tokenizer: Any, text: str, count: int) -> list[int]:
    """initText's token ids (no special tokens), repeated or truncated to `count`, as `peft` does."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SpecError("promptTuning.initText: tokenizes to no tokens")
    return (ids * math.ceil(count / len(ids)))[:count]


def embedding_rows(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Float32 copies of rows of a (possibly ZeRO-3-partitioned) frozen embedding matrix; all ranks call it."""
    with gathered([embedding.weight]):
        return embedding.weight[ids.to(embedding.weight.device)].detach().to("cpu", torch.float32).clone()


@register
class PromptTuning(PeftMethod):
    """Soft prompt of `numVirtualTokens` embeddings; the task head trains too (classification)."""

    spec_name = "promptTuning"
    families: ClassVar[tuple[str, ...]] = ("bert", "distilbert", "gpt2", "llama")
    config: PromptTuningSpec
    tokenizer: Any = None
    """Used by init "text"; the trainer sets it, else it is loaded from the model's name_or_path."""

    def attach(self, model: Any) -> PromptedModel:
        self.prepare(model)
        size = dims(model)
        prompt = SoftPrompt(self.config.num_virtual_tokens, size.hidden_size)
        initial = self._initial_embeddings(model)
        with torch.no_grad():
            if initial is None:
                prompt.embedding.weight.normal_(0.0, getattr(model.config, "initializer_range", 0.02))
            else:
                prompt.embedding.weight.copy_(initial)
        return PromptedModel(model, prompt, self.task)

    def _initial_embeddings(self, model: Any) -> torch.Tensor | None:
        count = self.config.num_virtual_tokens
        if self.config.init == "random":
            return None
        if self.config.init == "vocab":
            ids = torch.randint(0, dims(model).vocab_size, (count,))
        else:
            tokenizer = self.tokenizer
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
            ids = torch.tensor(text_token_ids(tokenizer, self.config.init_text or "", count))
        return embedding_rows(model.get_input_embeddings(), ids)

    def peft_export(self, model: PromptedModel) -> tuple[dict[str, Any], dict[str, Any]]:
        tensors = {"prompt_embeddings": cpu_copy({"w": model.prompt.embedding.weight})["w"]}
        heads = self.task_heads(model)
        tensors |= head_tensors(model.model, heads)
        init = {"random": "RANDOM", "vocab": "SAMPLE_VOCAB", "text": "TEXT"}[self.config.init]
        config = prompt_learning_config(
            "PROMPT_TUNING",
            self.task,
            model.model,
            self.config.num_virtual_tokens,
            heads,
            prompt_tuning_init=init,
            prompt_tuning_init_text=self.config.init_text,
            tokenizer_name_or_path=getattr(model.model, "name_or_path", None) or None,
        )
        return config, tensors
