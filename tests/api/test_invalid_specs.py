"""Broken PEFTJobs: each is refused with a message that names the field and says why, never a traceback."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from peftjob_trainer.api import InvalidSpec, load_object, load_text

VALID: dict[str, Any] = {
    "apiVersion": "peft.dev/v1alpha1",
    "kind": "PEFTJob",
    "metadata": {"name": "demo"},
    "spec": {
        "model": {"source": "gpt2", "task": "causal-lm"},
        "method": {"lora": {"r": 8}},
        "data": {"train": {"source": "train.jsonl"}},
    },
}


def with_changes(path: str, value: Any) -> dict[str, Any]:
    """VALID with the dotted `path` set to `value` (or removed when value is DELETE)."""
    doc = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()


def classifier_naming(label_names: list[str]) -> dict[str, Any]:
    """VALID as a two-class sequence classifier whose data names `label_names`."""
    doc = with_changes("spec.model", {"source": "bert", "task": "sequence-classification", "numLabels": 2})
    doc["spec"]["data"]["labelNames"] = label_names
    return doc

# (case id, document, field the message must name, words the reason must contain)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("lora-rank-zero", with_changes("spec.method.lora.r", 0), "spec.method.lora.r", "greater than 0"),
    ("lora-rank-negative", with_changes("spec.method.lora.r", -4), "spec.method.lora.r", "greater than 0"),
    ("lora-dropout-one", with_changes("spec.method.lora.dropout", 1.0), "spec.method.lora.dropout", "less than 1"),
    ("lora-dropout-negative", with_changes("spec.method.lora.dropout", -0.1), "spec.method.lora.dropout", "greater"),
    ("lora-typo", with_changes("spec.method.lora.alfa", 16), "spec.method.lora.alfa", "did you mean 'alpha'"),
    ("lora-bad-regex", with_changes("spec.method.lora.targetPattern", "(q_proj"), "spec.method.lora.targetPattern",
     "regular expression"),
    ("lora-empty-targets", with_changes("spec.method.lora.targetModules", []), "spec.method.lora.targetModules",
     "at least one"),
    ("no-method", with_changes("spec.method", {}), "spec.method", "exactly one method"),
    ("two-methods", with_changes("spec.method", {"lora": {}, "adapter": {}}), "spec.method", "exactly one method"),
    ("unknown-method", with_changes("spec.method", {"qlora": {}}), "spec.method.qlora", "unknown field"),
    ("vpt-on-text", with_changes("spec.method", {"vpt": {}}), "spec", "vpt does not support model.task causal-lm"),
    ("negative-replicas", with_changes("spec.workers", {"replicas": -1}), "spec.workers.replicas", "greater than"),
    ("zero-batch", with_changes("spec.training", {"microBatchSize": 0}), "spec.training.microBatchSize", "greater"),
    ("string-lr", with_changes("spec.training", {"learningRate": "fast"}), "spec.training.learningRate", "number"),
    ("zero-stage-4", with_changes("spec.deepspeed", {"zeroStage": 4}), "spec.deepspeed.zeroStage", "less than"),
    ("param-offload-stage-2", with_changes("spec.deepspeed", {"zeroStage": 2, "offloadParam": "cpu"}),
     "spec.deepspeed", "offloadParam needs zeroStage 3"),
    ("nvme-without-path", with_changes("spec.deepspeed", {"offloadOptimizer": "nvme"}), "spec.deepspeed", "nvmePath"),
    ("bad-task", with_changes("spec.model.task", "translation"), "spec.model.task", "causal-lm"),
    ("classification-without-labels", with_changes("spec.model.task", "sequence-classification"), "spec.model",
     "numLabels is required"),
    ("one-label", with_changes("spec.model", {"source": "bert", "task": "sequence-classification", "numLabels": 1}),
     "spec.model.numLabels", "greater than or equal to 2"),
    ("missing-model", with_changes("spec.model", DELETE), "spec.model", "required"),
    ("missing-train-data", with_changes("spec.data", {}), "spec.data.train", "required"),
    ("bad-data-format", with_changes("spec.data.train", {"source": "x", "format": "xlsx"}),
     "spec.data.train.format", "jsonl"),
    ("prompt-without-completion", with_changes("spec.data.promptField", "q"), "spec.data",
     "promptField and completionField"),
    ("inline-s3-secret", with_changes("spec.output", {"uri": "s3://b/p", "secretAccessKey": "abc"}), "spec.output",
     "inline credentials"),
    ("credentials-in-uri", with_changes("spec.output", {"uri": "s3://key:secret@bucket/p"}), "spec.output.uri",
     "credentials"),
    ("mlflow-password-in-uri", with_changes("spec.tracking", {"mlflowTrackingUri": "http://u:p@mlflow:5000"}),
     "spec.tracking.mlflowTrackingUri", "credentials"),
    ("secret-env-inline", with_changes("spec.workers", {"env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}),
     "spec.workers.env[0]", "secretKeyRef"),
    ("name-too-long", with_changes("metadata.name", "a" * 60), "metadata.name", "63"),
    ("name-uppercase", with_changes("metadata.name", "MyJob"), "metadata.name", "DNS-1035"),
    ("wrong-kind", with_changes("kind", "PyTorchJob"), "kind", "expected PEFTJob"),
    ("wrong-api-version", with_changes("apiVersion", "peft.dev/v1"), "apiVersion", "expected peft.dev/v1alpha1"),
    ("unknown-top-level-spec-field", with_changes("spec.trainer", {}), "spec.trainer", "did you mean 'training'"),
    ("p-tuning-template-mismatch",
     with_changes("spec.method", {"pTuning": {"numVirtualTokens": 3, "template": "[P] {text} [P]"}}),
     "spec.method.pTuning", "2 [P] markers"),
    ("prompt-text-init-without-text", with_changes("spec.method", {"promptTuning": {"init": "text"}}),
     "spec.method.promptTuning", "initText is required"),
    ("bad-shm-size", with_changes("spec.workers", {"sharedMemorySize": "lots"}), "spec.workers.sharedMemorySize",
     "pattern"),
    ("bad-resources-key", with_changes("spec.workers", {"resources": {"claims": {}}}), "spec.workers.resources",
     "requests and limits"),
    ("negative-backoff", with_changes("spec.runPolicy", {"backoffLimit": -1}), "spec.runPolicy.backoffLimit",
     "greater than or equal to 0"),
    ("labels-for-causal-lm", with_changes("spec.model.numLabels", 3), "spec.model",
     "numLabels is only for classification tasks"),
    ("label-names-for-causal-lm", with_changes("spec.data.labelNames", ["a", "b"]), "spec",
     "data.labelNames is only for classification tasks"),
    ("label-names-repeated", with_changes("spec.data.labelNames", ["cat", "dog", "cat"]), "spec.data.labelNames",
     "unique: 'cat' repeated"),
    ("label-names-empty-name", with_changes("spec.data.labelNames", ["cat", ""]), "spec.data.labelNames",
     "must not be empty"),
    ("label-names-count", classifier_naming(["a", "b", "c"]), "spec",
     "data.labelNames names 3 classes but model.numLabels is 2"),
    ("bad-resume", with_changes("spec.training", {"resume": "sometimes"}), "spec.training.resume", "'auto' or 'never'"),
]


@pytest.mark.parametrize(("document", "field", "reason"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_broken_job_is_refused_naming_field_and_reason(document: dict, field: str, reason: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        load_object(document)
    matching = [p for p in refused.value.problems if p.startswith(f"{field}:") or p.startswith(field)]
    assert matching, f"no problem names {field}: {refused.value.problems}"
    assert any(reason in p for p in matching), f"{reason!r} not in {matching}"


def test_prompt_on_vit_is_refused() -> None:
    doc = with_changes("spec.model", {"source": "vit", "task": "image-classification", "numLabels": 10})
    doc["spec"]["method"] = {"promptTuning": {}}
    with pytest.raises(InvalidSpec, match="promptTuning does not support model.task image-classification"):
        load_object(doc)


def test_valid_job_is_accepted_with_defaults() -> None:
    job = load_object(VALID)
    assert job.spec.method.name == "lora"
    assert job.spec.deepspeed.zero_stage == 3
    assert job.spec.workers.world_size == 1


def test_at_least_25_broken_jobs_are_covered() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("spec: [unclosed", "malformed YAML: line 1"),
        ("", "empty"),
        ("- a\n- b\n", "expected a mapping, got a list"),
        (yaml.safe_dump(VALID) + "---\n" + yaml.safe_dump(VALID), "2 YAML documents"),
        ("just text", "expected a mapping, got a string"),
        ("key: !!python/object:os.system ls", "malformed YAML"),
    ],
)
def test_unparseable_input_gets_a_clean_message(text: str, reason: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        load_text(text)
    assert any(reason in problem for problem in refused.value.problems), refused.value.problems


def test_label_names_that_fit_num_labels_and_resume_are_accepted() -> None:
    doc = classifier_naming(["negative", "positive"])
    doc["spec"]["training"] = {"resume": "never"}
    spec = load_object(doc).spec
    assert spec.data.label_names == ["negative", "positive"] and spec.training.resume == "never"
    assert load_object(VALID).spec.training.resume == "auto"


def test_the_crd_refuses_num_labels_and_label_names_for_causal_lm_too() -> None:
    """The pydantic rules' CEL twins, so `kubectl apply` refuses them before the operator sees them."""
    from peftjob_trainer.api.crd import crd

    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    model_rules = {rule["rule"] for rule in spec["properties"]["model"]["x-kubernetes-validations"]}
    assert "self.task != 'causal-lm' || !has(self.numLabels)" in model_rules
    spec_rules = {rule["rule"] for rule in spec["x-kubernetes-validations"]}
    assert "!has(self.data.labelNames) || self.model.task != 'causal-lm'" in spec_rules
    assert any("size(self.data.labelNames) == self.model.numLabels" in rule for rule in spec_rules)
