"""Learning, not only wiring: each prompt method on the frozen pretrained MiniLM beats the frozen-backbone-plus-head
baseline on held-out examples of the order task (tests/methods/learning_task.py)."""

from __future__ import annotations

import pytest
from tests.methods.learning_task import fit_text, minilm_classifier

from peftjob_trainer.api.spec import MethodSpec
from peftjob_trainer.methods import build_method

MARGIN = 0.1  # "clearly better" than the frozen baseline, in held-out accuracy
RECIPES = [  # (method, its fields, the training schedule)
    pytest.param("promptTuning", {"numVirtualTokens": 10}, {"lr": 1e-2, "epochs": 3}, id="promptTuning"),
    # The default (MLP) encoder at peft's P-Tuning example rate. Adam moves every encoder weight by ~lr, so at
    # Prompt Tuning's 1e-2 the encoded tokens' norms reach hundreds of times the word embeddings' (~1) within an
    # epoch; after the embedding LayerNorm the LSTM encoder's tokens collapse to one vector (held-out 0.51).
    pytest.param("pTuning", {"numVirtualTokens": 10, "encoder": "mlp"}, {"lr": 1e-3, "epochs": 4}, id="pTuning"),
    pytest.param("prefixTuning", {"numVirtualTokens": 10, "projectionHiddenSize": 128}, {"lr": 1e-3, "epochs": 3},
                 id="prefixTuning"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fields", "schedule"), RECIPES)
def test_prompt_method_beats_the_frozen_backbone_baseline(name, fields, schedule, minilm_dir, text_baselines):
    model, tokenizer = minilm_classifier(minilm_dir)
    model = build_method(MethodSpec.model_validate({name: fields}), "sequence-classification").attach(model)
    accuracy = fit_text(model, tokenizer, **schedule)
    assert accuracy >= text_baselines["frozen"] + MARGIN, (accuracy, text_baselines)
