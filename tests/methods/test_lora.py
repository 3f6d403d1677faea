"""LoRA: exact identity at init, only A/B (and the head) train, closed-form counts, save/load, merge, peft interop."""

from __future__ import annotations

import peft
import pytest
import torch
from peftjob_trainer.api.spec import MethodSpec
from peftjob_trainer.methods import build_method
from peftjob_trainer.methods.families import UnsupportedModel
from peftjob_trainer.methods.lora import lora_layers
from peftjob_trainer.methods.params import StateMismatch

from tests.methods.method_checks import (
    assert_reload_gives_same_logits, counts_over_base, logits, moved_by_a_step, train_step, trainable_names,
)
from tests.methods.tiny_models import (
    FAMILY_TASK_PAIRS, HIDDEN, LAYERS, head_params, head_prefixes, kv_width, query_width, tiny_batch, tiny_model,
)

R = 4
# (in, out) of the default targets per family: query/value (BERT, DistilBERT's q_lin/v_lin, ViT; Llama and Qwen2
# with 2 of 4 heads as key/value heads: v_proj is 32 -> 16; Mistral with head_dim 16 and one key/value head:
# q_proj 32 -> 64, v_proj 32 -> 16), GPT-2's fused c_attn Conv1D 32 -> 96. Qwen2's q/v biases stay frozen.
DEFAULT_TARGET_SHAPES = {
    "bert": [(HIDDEN, HIDDEN), (HIDDEN, HIDDEN)],
    "distilbert": [(HIDDEN, HIDDEN), (HIDDEN, HIDDEN)],
    "vit": [(HIDDEN, HIDDEN), (HIDDEN, HIDDEN)],
    **{family: [(HIDDEN, query_width(family)), (HIDDEN, kv_width(family))] for family in ("llama", "qwen2", "mistral")},
    "gpt2": [(HIDDEN, 3 * HIDDEN)],
}


def lora(task: str, **fields) -> object:
    return build_method(MethodSpec.model_validate({"lora": {"r": R, **fields}}), task)


def trained(family: str, task: str, **fields):
    """A tiny model with LoRA attached and three optimizer steps taken (so B and A are non-zero)."""
    method = lora(task, **fields)
    torch.manual_seed(7)
    model = method.attach(tiny_model(family, task))
    train_step(model, tiny_batch(family, task), steps=3)
    return method, model


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_attached_lora_is_exactly_the_base_model(family, task):
    batch = tiny_batch(family, task)
    base = logits(tiny_model(family, task), batch)
    model = lora(task).attach(tiny_model(family, task))
    assert torch.equal(logits(model, batch), base)


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_a_step_changes_only_lora_and_head(family, task):
    model = lora(task).attach(tiny_model(family, task))
    moved = moved_by_a_step(model, tiny_batch(family, task))
    assert any(name.endswith("lora_B.weight") for name in moved)
    assert all("lora_" in name or name.startswith(head_prefixes(family, task)) for name in trainable_names(model))


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_trainable_count_is_r_times_in_plus_out_per_target(family, task):
    expected = LAYERS * sum(R * (d_in + d_out) for d_in, d_out in DEFAULT_TARGET_SHAPES[family])
    trainable, added = counts_over_base(lora(task), family, task)
    assert trainable == expected + head_params(family, task)
    assert added == expected


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_save_then_load_into_fresh_base_gives_same_logits(family, task, tmp_path):
    method, model = trained(family, task)
    files = assert_reload_gives_same_logits(method, model, family, task, tmp_path)
    assert {path.name for path in files} == {
        "peftjob_method.json", "trainable.safetensors", "adapter_config.json", "adapter_model.safetensors"
    }


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_merged_equals_unmerged_and_unmerge_restores_weights(family, task):
    method, model = trained(family, task)
    batch = tiny_batch(family, task)
    unmerged = logits(model, batch)
    base_weights = {name: layer.base_layer.weight.detach().clone() for name, layer in enumerate(lora_layers(model))}
    method.merge(model)
    assert all(layer.merged for layer in lora_layers(model))
    assert torch.allclose(logits(model, batch), unmerged, atol=1e-5)
    method.unmerge(model)
    for index, layer in enumerate(lora_layers(model)):
        assert torch.allclose(layer.base_layer.weight, base_weights[index], atol=1e-6)
    assert torch.allclose(logits(model, batch), unmerged, atol=1e-5)


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_export_loads_in_peft_with_the_same_logits(family, task, tmp_path):
    method, model = trained(family, task, dropout=0.1)
    method.save(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model(family, task), tmp_path).eval()
    batch = tiny_batch(family, task)
    assert (logits(theirs, batch) - logits(model, batch)).abs().max().item() < 1e-5


def test_qwen2_projection_biases_stay_in_the_frozen_base_layer():
    model = lora("causal-lm").attach(tiny_model("qwen2", "causal-lm"))
    assert len(lora_layers(model)) == 2 * LAYERS
    for layer in lora_layers(model):
        assert layer.base_layer.bias is not None and not layer.base_layer.bias.requires_grad


def test_target_modules_are_matched_by_suffix():
    model = lora("causal-lm", targetModules=["c_attn", "mlp.c_proj"]).attach(tiny_model("gpt2", "causal-lm"))
    wrapped = {name for name, module in model.named_modules() if module in lora_layers(model)}
    assert wrapped == {f"transformer.h.{i}.{suffix}" for i in range(LAYERS) for suffix in ("attn.c_attn", "mlp.c_proj")}


def test_target_pattern_is_a_full_match_regex():
    model = lora("causal-lm", targetPattern=r"model\.layers\.1\.self_attn\.(k|o)_proj").attach(
        tiny_model("llama", "causal-lm")
    )
    wrapped = {name for name, module in model.named_modules() if module in lora_layers(model)}
    assert wrapped == {"model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.o_proj"}


def test_a_target_that_matches_nothing_is_refused_by_name():
    with pytest.raises(UnsupportedModel, match="targetModules.*nope"):
        lora("sequence-classification", targetModules=["nope"]).attach(tiny_model("bert", "sequence-classification"))


def test_a_target_that_is_not_linear_is_refused():
    with pytest.raises(UnsupportedModel, match="wte is a Embedding"):
        lora("causal-lm", targetModules=["wte"]).attach(tiny_model("gpt2", "causal-lm"))


def test_frozen_head_is_still_saved_because_a_fresh_head_is_random(tmp_path):
    method = lora("sequence-classification", trainHead=False)
    model = method.attach(tiny_model("bert", "sequence-classification"))
    assert not model.classifier.weight.requires_grad
    assert {"classifier.weight", "classifier.bias"} <= set(method.trainable_state(model))


def test_loading_a_state_of_another_rank_names_the_mismatch(tmp_path):
    method, model = trained("bert", "sequence-classification")
    method.save(model, tmp_path)
    other = lora("sequence-classification", r=2)
    with pytest.raises(StateMismatch, match="config"):
        other.load(other.attach(tiny_model("bert", "sequence-classification")), tmp_path)
    with pytest.raises(StateMismatch, match="lora_A.weight has shape"):
        fresh = other.attach(tiny_model("bert", "sequence-classification"))
        other.load_trainable_state(fresh, method.trainable_state(model))


def test_loading_from_a_folder_without_a_saved_method_names_the_file(tmp_path):
    method = lora("sequence-classification")
    model = method.attach(tiny_model("bert", "sequence-classification"))
    with pytest.raises(StateMismatch, match="peftjob_method.json: not found"):
        method.load(model, tmp_path)
    method.save(model, tmp_path)
    (tmp_path / "trainable.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(StateMismatch, match="trainable.safetensors: cannot read"):
        method.load(model, tmp_path)
