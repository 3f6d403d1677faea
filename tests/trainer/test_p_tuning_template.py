"""A P-Tuning template reaches the model: the data pipeline places pseudo tokens and prompt text around the input,
and the attached model fills those places with the prompt encoder's output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from peftjob_trainer.api import load_object
from peftjob_trainer.batching import collate
from peftjob_trainer.data import encode, read_records
from peftjob_trainer.errors import DataError
from peftjob_trainer.methods import build_method
from peftjob_trainer.tokens import PSEUDO_TOKEN_ID
from tests.trainer.tiny import bert_classifier

TEMPLATE = "[P][P] {text} [P] good"


def template_job(template: str, max_length: int = 32):  # noqa: ANN201 - a PEFTJob
    return load_object({
        "apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": "tpl"},
        "spec": {
            "model": {"source": "m", "task": "sequence-classification", "numLabels": 2},
            "method": {"pTuning": {"numVirtualTokens": template.count("[P]"), "template": template}},
            "data": {"train": {"source": "train.jsonl"}, "maxLength": max_length},
        },
    })


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_classifier(tmp_path_factory.mktemp("bert"))


def test_template_places_pseudo_tokens_and_prompt_text(tmp_path, monkeypatch, model_dir) -> None:
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_text('{"text": "w1 w2 w3", "label": 1}\n')
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    job = template_job(TEMPLATE)
    [example] = encode(read_records(job.spec.data.train, Path), job.spec, tokenizer, None)
    ids = example["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    words = tokenizer("w1 w2 w3 good", add_special_tokens=False)["input_ids"]
    marker = PSEUDO_TOKEN_ID
    assert ids == [cls, marker, marker, *words[:3], marker, words[3], sep]

    method = build_method(job.spec.method, job.spec.model.task)
    model = method.attach(AutoModelForSequenceClassification.from_pretrained(model_dir))
    batch = collate([example], tokenizer.pad_token_id)
    logits = model(**batch).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    with torch.no_grad():
        next(model.prompt.parameters()).add_(1.0)
    assert not torch.allclose(model(**batch).logits, logits), "the pseudo-token positions must use the encoder"


def test_template_longer_than_max_length_is_a_data_error(tmp_path, monkeypatch, model_dir) -> None:
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_text('{"text": "w1", "label": 0}\n')
    job = template_job("[P][P][P][P] {text} good good good", max_length=6)
    with pytest.raises(DataError, match="pTuning.template: needs"):
        encode(read_records(job.spec.data.train, Path), job.spec, AutoTokenizer.from_pretrained(model_dir), None)
