"""Our Prompt Tuning, P-Tuning and Prefix-Tuning exports load with `peft` and give the same logits (fp32)."""

from __future__ import annotations

import inspect

import peft
import pytest
import transformers
from tests.methods.method_checks import fresh_base, logits, train_step
from tests.methods.tiny_models import INPUT_PROMPT_CASES, tiny_batch, tiny_model

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


CASES = [
    pytest.param(variant, family, task, id=f"{variant}-{family}-{task}")
    for variant in METHODS
    for family, task in INPUT_PROMPT_CASES
    if not (variant.startswith("prefixTuning") and family == "distilbert")  # the family has no Prefix-Tuning
]
"""Every prompt method on every text model its family claims it for (LoRA's peft check is in test_lora.py)."""


@pytest.mark.parametrize(("variant", "family", "task"), CASES)
def test_peft_loads_our_export_with_the_same_logits(variant, family, task, tmp_path):
    name = variant.split("-")[0]
    if name == "prefixTuning" and family == "bert" and not peft_can_prefix_tune_bert():
        pytest.skip(
            f"peft {peft.__version__} cannot run prefix tuning on BERT with transformers {transformers.__version__}: "
            "BertModel.forward no longer takes past_key_values (ours injects inside attention and still works)"
        )
    method = build_method(MethodSpec.model_validate({name: METHODS[variant]}), task)
    model = method.attach(tiny_model(family, task))
    batch = tiny_batch(family, task)
    train_step(model, batch, steps=2)
    method.save(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(fresh_base(family, task), tmp_path).eval()  # head from the export
    theirs = logits(loaded, batch)
    if task == "causal-lm" and name != "prefixTuning":
        theirs = theirs[:, TOKENS:]  # peft returns logits for the virtual tokens too; ours line up with input_ids
    ours = logits(model, batch)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-5


def peft_can_prefix_tune_bert() -> bool:
    """peft feeds prefixes to encoders through past_key_values, which transformers 5.24 removed from BERT."""
    return "past_key_values" in inspect.signature(transformers.BertModel.forward).parameters
