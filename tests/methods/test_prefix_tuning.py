"""Prefix-Tuning: only the prefix encoder (and head) trains, closed-form counts, save/load, generation, KV cache."""

from __future__ import annotations

import pytest
import torch
from tests.methods.method_checks import (
    assert_a_step_trains_only, assert_greedy_generation_follows_forward, assert_reload_gives_same_logits,
    counts_over_base, logits, train_step,
)
from tests.methods.tiny_models import (
    DECODERS, HIDDEN, LAYERS, PROMPT_CASES, head_params, head_prefixes, kv_width, tiny_batch, tiny_model,
)

from peftjob_trainer.api.spec import MethodSpec
from peftjob_trainer.methods import build_method

TOKENS = 3
WIDTH = 16
PROJECTION = [True, False]


def prefix_tuning(task: str, **fields):
    spec = {"prefixTuning": {"numVirtualTokens": TOKENS, "projectionHiddenSize": WIDTH, **fields}}
    return build_method(MethodSpec.model_validate(spec), task)


def prefix_params(family: str, projection: bool) -> int:
    """Keys and values for every layer, sized by key/value heads x head dim (GQA: Llama, Qwen2 2 of 4 heads;
    Mistral 1 of 4 with head_dim 16)."""
    out = LAYERS * 2 * kv_width(family)
    if not projection:
        return TOKENS * out
    return TOKENS * HIDDEN + (HIDDEN * WIDTH + WIDTH) + (WIDTH * out + out)


@pytest.mark.parametrize("projection", PROJECTION)
@pytest.mark.parametrize(("family", "task"), PROMPT_CASES)
def test_a_step_changes_only_the_prefix_encoder_and_head(family, task, projection):
    model = prefix_tuning(task, projection=projection).attach(tiny_model(family, task))
    assert_a_step_trains_only(model, tiny_batch(family, task), ("prefix_encoder.", *head_prefixes(family, task)))


@pytest.mark.parametrize("projection", PROJECTION)
@pytest.mark.parametrize(("family", "task"), PROMPT_CASES)
def test_counts_match_the_prefix_formula(family, task, projection):
    trainable, added = counts_over_base(prefix_tuning(task, projection=projection), family, task)
    assert trainable == prefix_params(family, projection) + head_params(family, task)
    assert added == prefix_params(family, projection)


@pytest.mark.parametrize("projection", PROJECTION)
@pytest.mark.parametrize(("family", "task"), PROMPT_CASES)
def test_save_then_load_into_a_fresh_base_gives_the_same_logits(family, task, projection, tmp_path):
    model = (method := prefix_tuning(task, projection=projection)).attach(tiny_model(family, task))
    train_step(model, tiny_batch(family, task), steps=2)
    assert_reload_gives_same_logits(method, model, family, task, tmp_path)


@pytest.mark.parametrize(("family", "task"), PROMPT_CASES)
def test_the_prefix_changes_what_attention_sees(family, task):
    base = logits(tiny_model(family, task), tiny_batch(family, task))
    model = prefix_tuning(task).attach(tiny_model(family, task))
    assert not torch.allclose(logits(model, tiny_batch(family, task)), base, atol=1e-4)


@pytest.mark.parametrize("family", DECODERS)
def test_greedy_generation_follows_the_forward_pass(family):
    model = prefix_tuning("causal-lm").attach(tiny_model(family, "causal-lm"))
    train_step(model, tiny_batch(family, "causal-lm"), steps=2)
    assert_greedy_generation_follows_forward(model, tiny_batch(family, "causal-lm")["input_ids"][:2], new_tokens=5)


@pytest.mark.parametrize("family", DECODERS)
def test_the_kv_cache_never_holds_the_prefix(family):
    model = prefix_tuning("causal-lm").attach(tiny_model(family, "causal-lm"))
    input_ids = tiny_batch(family, "causal-lm")["input_ids"][:1]
    with torch.no_grad():
        cache = model(input_ids=input_ids[:, :6], use_cache=True).past_key_values
        assert cache.get_seq_length() == 6
        step = model(input_ids=input_ids[:, 6:7], past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() == 7
        whole = model(input_ids=input_ids[:, :7]).logits
    assert torch.allclose(step.logits[:, -1], whole[:, -1], atol=1e-5)


@pytest.mark.parametrize("family", DECODERS)
def test_activation_checkpointing_gives_the_same_gradients(family):
    batch = tiny_batch(family, "causal-lm")
    grads = []
    for checkpointing in (False, True):
        model = prefix_tuning("causal-lm").attach(tiny_model(family, "causal-lm"))
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        model(**batch).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
