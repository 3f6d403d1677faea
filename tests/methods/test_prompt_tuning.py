"""Prompt Tuning: only the soft prompt (and head) trains, closed-form counts, the three inits, save/load, generation."""

from __future__ import annotations

import pytest
import torch
import transformers
from tests.methods.method_checks import (
    assert_a_step_trains_only, assert_greedy_generation_follows_forward, assert_reload_gives_same_logits,
    counts_over_base, train_step,
)
from tests.methods.tiny_models import (
    DECODERS, HIDDEN, INPUT_PROMPT_CASES, head_params, head_prefixes, tiny_batch, tiny_model,
)

from peftjob_trainer.api.spec import MethodSpec
from peftjob_trainer.methods import build_method
from peftjob_trainer.methods.prompt_tuning import text_token_ids

TOKENS = 5


def prompt_tuning(task: str, **fields):
    return build_method(MethodSpec.model_validate({"promptTuning": {"numVirtualTokens": TOKENS, **fields}}), task)


@pytest.mark.parametrize(("family", "task"), INPUT_PROMPT_CASES)
def test_a_step_changes_only_the_prompt_and_head(family, task):
    model = prompt_tuning(task).attach(tiny_model(family, task))
    assert_a_step_trains_only(model, tiny_batch(family, task), ("prompt.", *head_prefixes(family, task, "model.")))


@pytest.mark.parametrize(("family", "task"), INPUT_PROMPT_CASES)
def test_counts_are_tokens_times_hidden_plus_head(family, task):
    trainable, added = counts_over_base(prompt_tuning(task), family, task)
    assert trainable == TOKENS * HIDDEN + head_params(family, task)
    assert added == TOKENS * HIDDEN


def test_vocab_init_copies_rows_of_the_embedding_matrix():
    base = tiny_model("gpt2", "causal-lm")
    matrix = base.get_input_embeddings().weight.detach().clone()
    prompt = prompt_tuning("causal-lm", init="vocab").attach(base).prompt.embedding.weight.detach()
    for row in prompt:
        assert (matrix == row).all(dim=1).any()


def test_random_init_has_the_embeddings_scale():
    base = tiny_model("gpt2", "causal-lm")
    prompt = prompt_tuning("causal-lm", init="random").attach(base).prompt.embedding.weight.detach()
    assert 0.2 * base.config.initializer_range < prompt.std() < 5 * base.config.initializer_range


def test_text_init_copies_the_text_tokens_repeated(minilm_dir):
    text = "positive or negative"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    matrix = model.get_input_embeddings().weight.detach().clone()
    prompt = prompt_tuning("sequence-classification", init="text", initText=text).attach(model).prompt
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected_ids = text_token_ids(tokenizer, text, TOKENS)
    assert expected_ids == (ids * TOKENS)[:TOKENS]
    assert torch.equal(prompt.embedding.weight.detach(), matrix[expected_ids])


@pytest.mark.parametrize(("family", "task"), INPUT_PROMPT_CASES)
def test_save_then_load_into_a_fresh_base_gives_the_same_logits(family, task, tmp_path):
    method = prompt_tuning(task)
    model = method.attach(tiny_model(family, task))
    train_step(model, tiny_batch(family, task), steps=2)
    assert_reload_gives_same_logits(method, model, family, task, tmp_path)


@pytest.mark.parametrize("family", DECODERS)
def test_greedy_generation_follows_the_forward_pass(family):
    method = prompt_tuning("causal-lm")
    model = method.attach(tiny_model(family, "causal-lm"))
    train_step(model, tiny_batch(family, "causal-lm"), steps=2)
    assert_greedy_generation_follows_forward(model, tiny_batch(family, "causal-lm")["input_ids"][:2], new_tokens=4)


def test_logits_line_up_with_input_ids():
    model = prompt_tuning("causal-lm").attach(tiny_model("gpt2", "causal-lm"))
    batch = tiny_batch("gpt2", "causal-lm")
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
