"""VPT: prompts after [CLS], shallow and deep; only prompts (and head) train; counts; save/load; ViT only."""

from __future__ import annotations

import pytest
import torch
from peftjob_trainer.api.spec import MethodSpec
from peftjob_trainer.methods import build_method
from peftjob_trainer.methods.families import UnsupportedModel

from tests.methods.method_checks import (
    assert_reload_gives_same_logits, counts_over_base, moved_by_a_step, train_step, trainable_names,
)
from tests.methods.tiny_models import HIDDEN, IMAGE, LAYERS, PATCH, head_params, tiny_batch, tiny_model

TOKENS = 5
TASK = "image-classification"
PATCHES = (IMAGE // PATCH) ** 2


def vpt(depth: str, **fields) -> object:
    return build_method(MethodSpec.model_validate({"vpt": {"numTokens": TOKENS, "depth": depth, **fields}}), TASK)


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_prompts_sit_after_cls_and_lengthen_every_layer(depth):
    model = vpt(depth).attach(tiny_model("vit", TASK))
    batch = tiny_batch("vit", TASK)
    with torch.no_grad():
        hidden = model(pixel_values=batch["pixel_values"], output_hidden_states=True).hidden_states
    assert [h.shape[1] for h in hidden] == [1 + TOKENS + PATCHES] * (LAYERS + 1)
    prompts = model.vpt_prompts.prompts
    assert torch.equal(hidden[0][0, 1 : 1 + TOKENS], prompts[0])  # inserted after [CLS], before the patches
    with torch.no_grad():
        plain = tiny_model("vit", TASK)(pixel_values=batch["pixel_values"], output_hidden_states=True).hidden_states
    assert torch.equal(hidden[0][:, 0], plain[0][:, 0])  # [CLS] untouched
    assert torch.equal(hidden[0][:, 1 + TOKENS :], plain[0][:, 1:])  # patches keep their position embeddings


def test_deep_prompts_replace_the_previous_layer_prompts():
    model = vpt("deep").attach(tiny_model("vit", TASK))
    batch = tiny_batch("vit", TASK)
    with torch.no_grad():
        model.vpt_prompts.prompts[1].normal_(generator=torch.Generator().manual_seed(0))
        first = model(pixel_values=batch["pixel_values"], output_hidden_states=True)
        model.vpt_prompts.prompts[1].normal_(generator=torch.Generator().manual_seed(1))
        second = model(pixel_values=batch["pixel_values"], output_hidden_states=True)
    assert torch.equal(first.hidden_states[1], second.hidden_states[1])  # layer 0 did not see layer 1's prompts
    assert not torch.equal(first.logits, second.logits)  # layer 1 did


@pytest.mark.parametrize(("depth", "layers"), [("shallow", 1), ("deep", LAYERS)])
def test_trainable_count_is_tokens_times_hidden_per_prompted_layer(depth, layers):
    trainable, added = counts_over_base(vpt(depth), "vit", TASK)
    assert trainable == TOKENS * HIDDEN * layers + head_params("vit", TASK)
    assert added == TOKENS * HIDDEN * layers


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_a_step_changes_only_prompts_and_head(depth):
    model = vpt(depth, dropout=0.1).attach(tiny_model("vit", TASK))
    assert trainable_names(model) == {"vpt_prompts.prompts", "classifier.weight", "classifier.bias"}
    assert moved_by_a_step(model, tiny_batch("vit", TASK)) == trainable_names(model)


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_save_then_load_into_fresh_base_gives_same_logits(depth, tmp_path):
    method = vpt(depth)
    model = method.attach(tiny_model("vit", TASK))
    train_step(model, tiny_batch("vit", TASK), steps=3)
    assert_reload_gives_same_logits(method, model, "vit", TASK, tmp_path)


def test_vpt_is_refused_on_text_models():
    with pytest.raises(UnsupportedModel, match="vpt is not supported on model_type 'bert'"):
        build_method(MethodSpec.model_validate({"vpt": {}}), "sequence-classification").attach(
            tiny_model("bert", "sequence-classification")
        )
