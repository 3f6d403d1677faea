"""Our Prompt Tuning, P-Tuning and Prefix-Tuning exports load with `peft` and give the same logits (fp32)."""

from __future__ import annotations

import peft
import pytest
import torch
from tests.methods.method_checks import logits, train_step
from tests.methods.tiny_models import tiny_batch, tiny_model

from peftjob_trainer.api.spec import MethodSpec
from peftjob_trainer.methods import build_method

TOKENS = 3
METHODS = {
    "promptTuning": {"numVirtualTokens": TOKENS, "init": "vocab"},
    "pTuning-mlp": {"numVirtualTokens": TOKENS, "encoder": "mlp", "encoderHiddenSize": 16},
    "pTuning-lstm": {"numVirtualTokens": TOKENS, "encoder": "lstm", "encoderHiddenSize": 16},
    "prefixTuning": {"numVirtualTokens": TOKENS, "projection": True, "projectionHiddenSize": 16},
    "prefixTuning-direct": {"numVirtualTokens": TOKENS, "projection": False},
}
CASES = [("gpt2", "causal-lm"), ("llama", "causal-lm"), ("bert", "sequence-classification")]


def fresh_base(family: str, task: str) -> torch.nn.Module:
    """The same backbone with a newly drawn head: peft must take the head from the export."""
    model = tiny_model(family, task)
    for name in ("classifier", "score"):
        if hasattr(model, name):
            torch.nn.init.normal_(getattr(model, name).weight, std=1.0)
    return model


@pytest.mark.parametrize(("family", "task"), CASES)
@pytest.mark.parametrize("variant", METHODS)
def test_peft_loads_our_export_with_the_same_logits(variant, family, task, tmp_path):
    name = variant.split("-")[0]
    method = build_method(MethodSpec.model_validate({name: METHODS[variant]}), task)
    model = method.attach(tiny_model(family, task))
    batch = tiny_batch(family, task)
    train_step(model, batch, steps=2)
    method.save(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(fresh_base(family, task), tmp_path).eval()
    theirs = logits(loaded, batch)
    if task == "causal-lm" and name != "prefixTuning":
        theirs = theirs[:, TOKENS:]  # peft returns logits for the virtual tokens too; ours line up with input_ids
    ours = logits(model, batch)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-5
