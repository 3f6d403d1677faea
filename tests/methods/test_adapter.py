"""Houlsby adapters: near identity at init, adapters + LayerNorms + head train, closed-form counts, save/load."""

from __future__ import annotations

import pytest
import torch
from peftjob_trainer.api.spec import MethodSpec
from peftjob_trainer.methods import build_method, parameter_counts
from peftjob_trainer.methods.adapter import WithAdapter

from tests.methods.method_checks import (
    assert_reload_gives_same_logits, counts_over_base, logits, moved_by_a_step, train_step, trainable_names,
)
from tests.methods.tiny_models import FAMILY_TASK_PAIRS, HIDDEN, LAYERS, head_params, tiny_batch, tiny_model

M = 8
# Norm modules and their parameter count per family: (Distil)BERT/ViT/GPT-2 LayerNorms have weight+bias, the
# RMSNorms of Llama, Qwen2 and Mistral a weight only.
RMS_NORM_PARAMS = (2 * LAYERS + 1) * HIDDEN  # two RMSNorms per block + final
NORM_PARAMS = {
    "bert": (1 + 2 * LAYERS) * 2 * HIDDEN,  # embeddings + two per block
    "distilbert": (1 + 2 * LAYERS) * 2 * HIDDEN,  # embeddings + sa_layer_norm, output_layer_norm per block
    "vit": (2 * LAYERS + 1) * 2 * HIDDEN,  # two per block + final
    "gpt2": (2 * LAYERS + 1) * 2 * HIDDEN,  # ln_1, ln_2 per block + ln_f
    "llama": RMS_NORM_PARAMS,
    "qwen2": RMS_NORM_PARAMS,
    "mistral": RMS_NORM_PARAMS,
}
ADAPTER_SITES = {
    "bert": {"attention.output.dense", "output.dense"},
    "distilbert": {"attention.out_lin", "ffn.lin2"},
    "vit": {"attention.o_proj", "mlp.fc2"},
    "gpt2": {"attn.c_proj", "mlp.c_proj"},
    "llama": {"self_attn.o_proj", "mlp.down_proj"},
    "qwen2": {"self_attn.o_proj", "mlp.down_proj"},
    "mistral": {"self_attn.o_proj", "mlp.down_proj"},
}


def adapter(task: str, **fields) -> object:
    return build_method(MethodSpec.model_validate({"adapter": {"bottleneckSize": M, **fields}}), task)


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_attached_adapters_are_near_identity(family, task):
    batch = tiny_batch(family, task)
    base = logits(tiny_model(family, task), batch)
    ours = logits(adapter(task).attach(tiny_model(family, task)), batch)
    assert not torch.equal(ours, base)  # the adapters are really in the forward path
    assert torch.allclose(ours, base, atol=1e-3)


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_two_adapters_per_block_after_attention_and_ffn_output(family, task):
    model = adapter(task).attach(tiny_model(family, task))
    sites = {name for name, module in model.named_modules() if isinstance(module, WithAdapter)}
    assert len(sites) == 2 * LAYERS
    assert {suffix for suffix in ADAPTER_SITES[family] if any(name.endswith(suffix) for name in sites)} == (
        ADAPTER_SITES[family]
    )


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_trainable_count_follows_the_per_layer_formula(family, task):
    per_adapter = HIDDEN * M + M + M * HIDDEN + HIDDEN
    trainable, added = counts_over_base(adapter(task), family, task)
    assert trainable == LAYERS * 2 * per_adapter + NORM_PARAMS[family] + head_params(family, task)
    assert added == LAYERS * 2 * per_adapter


def test_layer_norms_and_head_follow_the_spec():
    model = adapter("sequence-classification", trainLayerNorms=False, trainHead=False).attach(
        tiny_model("bert", "sequence-classification")
    )
    assert parameter_counts(model)[0] == LAYERS * 2 * (2 * HIDDEN * M + M + HIDDEN)
    assert all(".adapter." in name for name in trainable_names(model))


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_a_step_changes_only_adapters_norms_and_head(family, task):
    model = adapter(task).attach(tiny_model(family, task))
    moved = moved_by_a_step(model, tiny_batch(family, task))
    assert any(".adapter.up." in name for name in moved)


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_save_then_load_into_fresh_base_gives_same_logits(family, task, tmp_path):
    method = adapter(task)
    model = method.attach(tiny_model(family, task))
    train_step(model, tiny_batch(family, task), steps=3)
    files = assert_reload_gives_same_logits(method, model, family, task, tmp_path)
    assert {path.name for path in files} == {"peftjob_method.json", "trainable.safetensors"}
