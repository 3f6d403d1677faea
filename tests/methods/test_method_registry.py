"""The registry and the family table: every spec method has a class; unsupported pairs are refused by name."""

from __future__ import annotations

import pytest
import transformers
from peftjob_trainer.api.spec import METHOD_NAMES, METHOD_TASKS, MethodSpec
from peftjob_trainer.methods import REGISTRY, build_method, method_class
from peftjob_trainer.methods.families import FAMILIES, UnsupportedModel, dims, family_of

from tests.methods.tiny_models import (
    FAMILY_TASK_PAIRS, HEADS, HIDDEN, KV_HEADS, LAYERS, MISTRAL_HEAD_DIM, MISTRAL_KV_HEADS, tiny_config, tiny_model,
)


def test_every_spec_method_is_registered():
    assert set(REGISTRY) == set(METHOD_NAMES)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_registered_class_answers_to_its_spec_name(name):
    assert method_class(name).spec_name == name


@pytest.mark.parametrize(("spec", "cls"), [({"lora": {}}, "Lora"), ({"adapter": {}}, "Adapter"), ({"vpt": {}}, "Vpt")])
def test_build_method_binds_config_and_task(spec, cls):
    method = build_method(MethodSpec.model_validate(spec), "image-classification")
    assert type(method).__name__ == cls
    assert method.task == "image-classification"
    assert method.config == MethodSpec.model_validate(spec).config


@pytest.mark.parametrize(
    ("model_type", "family"),
    [("bert", "bert"), ("roberta", "bert"), ("distilbert", "distilbert"), ("gpt2", "gpt2"), ("llama", "llama"),
     ("qwen2", "llama"), ("mistral", "llama"), ("vit", "vit")],
)
def test_families_come_from_model_type(model_type, family):
    assert family_of(transformers.AutoConfig.for_model(model_type)).name == family


@pytest.mark.parametrize(("family", "task"), FAMILY_TASK_PAIRS)
def test_each_tiny_model_is_named_by_its_model_type(family, task):
    # the tests' family string is the model type, so each claimed model type is proven by a model of that type
    assert tiny_config(family, task).model_type == family


def test_an_unknown_model_type_is_refused_by_name():
    with pytest.raises(UnsupportedModel, match="model_type 't5' is not supported"):
        method_class("lora").family_for(transformers.AutoConfig.for_model("t5"))


@pytest.mark.parametrize(
    ("family", "task", "method"),
    [("vit", "image-classification", "promptTuning"), ("gpt2", "causal-lm", "vpt"), ("qwen2", "causal-lm", "vpt"),
     ("mistral", "sequence-classification", "vpt"), ("distilbert", "sequence-classification", "prefixTuning"),
     ("distilbert", "sequence-classification", "vpt")],
)
def test_an_unsupported_pair_names_model_type_and_method(family, task, method):
    with pytest.raises(UnsupportedModel, match=f"method {method} is not supported on model_type '{family}'"):
        method_class(method).family_for(tiny_model(family, task))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_method_declares_known_families_and_the_api_tasks(name):
    cls = method_class(name)
    assert cls.families and set(cls.families) <= {family.name for family in FAMILIES}
    assert cls.tasks() == METHOD_TASKS[name]


def test_dims_are_read_from_the_config_with_grouped_query_attention():
    sizes = dims(tiny_model("llama", "causal-lm"))
    assert (sizes.hidden_size, sizes.num_layers, sizes.num_attention_heads) == (HIDDEN, LAYERS, HEADS)
    assert (sizes.num_key_value_heads, sizes.head_dim) == (KV_HEADS, HIDDEN // HEADS)
    assert dims(tiny_model("gpt2", "causal-lm")).num_key_value_heads == HEADS
    mistral = dims(tiny_model("mistral", "causal-lm"))  # head_dim set in the config, not HIDDEN // HEADS
    assert (mistral.num_key_value_heads, mistral.head_dim) == (MISTRAL_KV_HEADS, MISTRAL_HEAD_DIM)
    distilbert = dims(tiny_model("distilbert", "sequence-classification"))  # dim / n_layers / n_heads in its config
    assert (distilbert.hidden_size, distilbert.num_layers, distilbert.num_attention_heads) == (HIDDEN, LAYERS, HEADS)
