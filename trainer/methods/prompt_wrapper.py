"""Feed virtual-token embeddings to a frozen model: the input side shared by Prompt Tuning and P-Tuning.

A prompt source (a module returning `(num_virtual_tokens, hidden)` embeddings) is either prepended to the
input embeddings or, for P-Tuning templates, written into the positions the data pipeline marked with
`PSEUDO_TOKEN_ID`. Prepending also extends attention_mask and token_type_ids and pads causal-LM labels with
IGNORE_INDEX, as `peft` does, so a `peft` export gives the same logits. The returned logits cover the caller's tokens
only (the virtual positions are dropped), so they line up with input_ids and labels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tokens import IGNORE_INDEX, PSEUDO_TOKEN_ID



class PromptedModel(nn.Module):
    """A base model whose inputs carry virtual tokens; forward/generate take the base model's batch keys."""

    def __init__(self, model: nn.Module, prompt: nn.Module, task: str, prepend: bool = True) -> None:
        super().__init__()
        self.model = model
        self.prompt = prompt
        self.task = task
        self.prepend = prepend

    def __getattr__(self, name: str) -> Any:
        """Everything else (config, gradient_checkpointing_enable, device, ...) is the base model's."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)

    def _embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(inputs_embeds, attention_mask, token_type_ids) with the virtual tokens in place."""
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pseudo = input_ids == PSEUDO_TOKEN_ID
        embedding = self.model.get_input_embeddings()
        embeds = embedding(input_ids.masked_fill(pseudo, 0))
        prompts = self.prompt().to(embeds.dtype)
        virtual = prompts.shape[0]
        if self.prepend:
            embeds = torch.cat([prompts.unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(batch, virtual), attention_mask], dim=1)
            if token_type_ids is not None:
                token_type_ids = torch.cat([token_type_ids.new_zeros(batch, virtual), token_type_ids], dim=1)
            return embeds, attention_mask, token_type_ids
        counts = pseudo.sum(dim=1)
        if not bool((counts == virtual).all()):
            raise ValueError(
                f"every row of input_ids must hold {virtual} pseudo-token markers ({PSEUDO_TOKEN_ID}) from the "
                f"template; got {counts.tolist()}: build inputs with templates.template_input_ids"
            )
        source = prompts.unsqueeze(0).expand(batch, -1, -1)
        embeds = embeds.masked_scatter(pseudo.unsqueeze(-1), source)
        return embeds, attention_mask, token_type_ids

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        embeds, attention_mask, token_type_ids = self._embed(input_ids, attention_mask, token_type_ids)
        virtual = embeds.shape[1] - input_ids.shape[1]
        if labels is not None and self.task == "causal-lm":
            labels = labels.masked_fill(input_ids == PSEUDO_TOKEN_ID, IGNORE_INDEX)
            if virtual:
                labels = torch.cat([labels.new_full((labels.shape[0], virtual), IGNORE_INDEX), labels], dim=1)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        output = self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        if virtual and self.task == "causal-lm":
            output.logits = output.logits[:, virtual:]
        return output

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The base model's generate from the prompted embeddings; returns input_ids followed by the new tokens."""
        embeds, attention_mask, _ = self._embed(input_ids, attention_mask, None)
        new_tokens = self.model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return torch.cat([input_ids, new_tokens], dim=1)
