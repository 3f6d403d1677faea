"""P-Tuning: only the prompt encoder (and head) trains, closed-form counts, templates, save/load, generation."""

from __future__ import annotations

import pytest
import torch
import transformers
from tests.methods.method_checks import (
    assert_a_step_trains_only, assert_greedy_generation_follows_forward, assert_reload_gives_same_logits,
    counts_over_base, logits, train_step,
)
from tests.methods.tiny_models import (
    DECODERS, HIDDEN, INPUT_PROMPT_CASES, head_params, head_prefixes, tiny_batch, tiny_model,
)

from peftjob_trainer.api.spec import MethodSpec
from peftjob_trainer.methods import build_method
from peftjob_trainer.templates import template_input_ids
from peftjob_trainer.tokens import PSEUDO_TOKEN_ID

TOKENS = 3
WIDTH = 16
TEMPLATE = "[P][P] {text} [P] It was"
ENCODERS = ["mlp", "lstm"]


def p_tuning(task: str, **fields):
    spec = {"pTuning": {"numVirtualTokens": TOKENS, "encoderHiddenSize": WIDTH, **fields}}
    return build_method(MethodSpec.model_validate(spec), task)


def encoder_params(encoder: str, h: int = HIDDEN, e: int = WIDTH, tokens: int = TOKENS) -> int:
    """Embedding + peft's heads: MLP h->e->e->h; or a 2-layer biLSTM (4 gates, two biases) then 2e->2e->h."""
    if encoder == "mlp":
        return tokens * h + (h * e + e) + (e * e + e) + (e * h + h)
    lstm = 2 * (4 * e * (h + e) + 8 * e) + 2 * (4 * e * (2 * e + e) + 8 * e)
    return tokens * h + lstm + (2 * e * 2 * e + 2 * e) + (2 * e * h + h)


def templated(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with pseudo-token markers at positions 0, 1 and 5, as template_input_ids places them."""
    input_ids = batch["input_ids"].clone()
    input_ids[:, [0, 1, 5]] = PSEUDO_TOKEN_ID
    return {**batch, "input_ids": input_ids}


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize(("family", "task"), INPUT_PROMPT_CASES)
def test_a_step_changes_only_the_encoder_and_head(family, task, encoder):
    model = p_tuning(task, encoder=encoder).attach(tiny_model(family, task))
    assert_a_step_trains_only(model, tiny_batch(family, task), ("prompt.", *head_prefixes(family, task, "model.")))


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize(("family", "task"), INPUT_PROMPT_CASES)
def test_counts_match_the_encoder_formula(family, task, encoder):
    trainable, added = counts_over_base(p_tuning(task, encoder=encoder), family, task)
    assert trainable == encoder_params(encoder) + head_params(family, task)
    assert added == encoder_params(encoder)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize(("family", "task"), INPUT_PROMPT_CASES)
def test_save_then_load_into_a_fresh_base_gives_the_same_logits(family, task, encoder, tmp_path):
    model = (method := p_tuning(task, encoder=encoder)).attach(tiny_model(family, task))
    train_step(model, tiny_batch(family, task), steps=2)
    assert_reload_gives_same_logits(method, model, family, task, tmp_path)


@pytest.mark.parametrize("template", [None, TEMPLATE])
@pytest.mark.parametrize("family", DECODERS)
def test_greedy_generation_follows_the_forward_pass(family, template):
    model = p_tuning("causal-lm", template=template).attach(tiny_model(family, "causal-lm"))
    batch = tiny_batch(family, "causal-lm")
    batch = batch if template is None else templated(batch)
    train_step(model, batch, steps=2)
    assert_greedy_generation_follows_forward(model, batch["input_ids"][:2], new_tokens=4)


def test_template_puts_encoder_outputs_at_the_marked_positions():
    method = p_tuning("sequence-classification", template=TEMPLATE)
    model = method.attach(tiny_model("bert", "sequence-classification"))
    batch = templated(tiny_batch("bert", "sequence-classification"))
    pseudo = batch["input_ids"] == PSEUDO_TOKEN_ID
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch["input_ids"].masked_fill(pseudo, 0))
        embeds[pseudo] = model.prompt().repeat(embeds.shape[0], 1)
        expected = model.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    assert torch.equal(logits(model, batch), expected)
    assert method.peft_export(model) is None


def test_template_rows_without_all_markers_are_refused():
    model = p_tuning("sequence-classification", template=TEMPLATE).attach(tiny_model("bert", "sequence-classification"))
    with pytest.raises(ValueError, match="pseudo-token markers"):
        logits(model, tiny_batch("bert", "sequence-classification"))


def test_template_input_ids_wrap_markers_prompt_and_truncated_text(minilm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    words = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    text = "the film was a quiet triumph of patience and craft"
    P = PSEUDO_TOKEN_ID
    full = template_input_ids(tokenizer, TEMPLATE, text, max_length=64)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert full == [cls, P, P, *words(text), P, *words("It was"), sep]
    short = template_input_ids(tokenizer, TEMPLATE, text, max_length=10)
    assert short == [cls, P, P, *words(text)[:3], P, *words("It was"), sep]
    with pytest.raises(ValueError, match="data.maxLength"):
        template_input_ids(tokenizer, TEMPLATE, text, max_length=7)
