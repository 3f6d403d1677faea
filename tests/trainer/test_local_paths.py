"""Relative paths in a job are relative to its YAML file: `resolve_local_paths` on its own, then `peftjob run
sub/job.yaml` from another working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peftjob_trainer.api import PEFTJob, load_object
from peftjob_trainer.api.paths import MODEL_SOURCE_GIVEN, resolve_local_paths
from peftjob_trainer.local_run import free_port
from tests.trainer import tiny
from tests.trainer.local_job import LAUNCH_TIMEOUT, RUN


def job(**overrides: Any) -> PEFTJob:
    spec = {
        "model": {"source": "org/name", "task": "sequence-classification", "numLabels": 2},
        "method": {"lora": {}},
        "data": {"train": {"source": "train.jsonl"}, "eval": {"source": "data/eval.jsonl"}},
        "output": {"uri": "out"},
    }
    spec.update(overrides)
    return load_object({"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": "paths"}, "spec": spec})


def test_data_output_and_nvme_paths_are_joined_to_the_yaml_folder():
    given = job(deepspeed={"zeroStage": 3, "offloadParam": "nvme", "nvmePath": "nvme"})
    resolved = resolve_local_paths(given, Path("sub"))
    assert resolved.spec.data.train.source == str(Path("sub/train.jsonl"))
    assert resolved.spec.data.eval.source == str(Path("sub/data/eval.jsonl"))
    assert resolved.spec.output.uri == str(Path("sub/out"))
    assert resolved.spec.deepspeed.nvme_path == str(Path("sub/nvme"))
    assert given.spec.data.train.source == "train.jsonl", "the job given is left as it was"


def test_s3_and_absolute_paths_are_left_alone(tmp_path):
    absolute = str(tmp_path / "train.jsonl")
    given = job(
        data={"train": {"source": absolute}, "eval": {"source": "s3://bucket/eval.jsonl"}},
        output={"uri": "s3://bucket/jobs"},
    )
    resolved = resolve_local_paths(given, Path("sub"))
    assert resolved.spec.data.train.source == absolute
    assert resolved.spec.data.eval.source == "s3://bucket/eval.jsonl"
    assert resolved.spec.output.uri == "s3://bucket/jobs"


@pytest.mark.parametrize("source", ["org/name", "gpt2", "s3://bucket/models/tiny"])
def test_a_model_source_that_is_no_folder_beside_the_yaml_is_a_hub_id_or_uri_and_stays(tmp_path, source):
    resolved = resolve_local_paths(job(model={"source": source, "task": "causal-lm"}), tmp_path)
    assert resolved.spec.model.source == source


@pytest.mark.parametrize("source", ["org/name", "./elsewhere", "../models/tiny"])
def test_a_model_folder_beside_the_yaml_or_a_dotted_path_is_joined_to_it(tmp_path, source):
    (tmp_path / "org" / "name").mkdir(parents=True)
    resolved = resolve_local_paths(job(model={"source": source, "task": "causal-lm"}), tmp_path)
    assert resolved.spec.model.source == os.path.normpath(tmp_path / source)


def test_the_model_source_as_given_is_kept_in_an_annotation(tmp_path):
    (tmp_path / "model").mkdir()
    resolved = resolve_local_paths(job(model={"source": "model", "task": "causal-lm"}), tmp_path)
    assert resolved.spec.model.source == str(tmp_path / "model")
    assert resolved.metadata.annotations[MODEL_SOURCE_GIVEN] == "model"


@pytest.mark.slow
def test_peftjob_run_of_a_yaml_in_another_folder_finds_its_model_and_data(tmp_path):
    """`peftjob run sub/job.yaml` from the folder above: model, data and output all live in sub/."""
    sub = tmp_path / "sub"
    sub.mkdir()
    tiny.bert_classifier(sub / "model", hidden=32)
    tiny.sentiment(sub / "data.jsonl", 8, seed=1)
    spec = {
        "model": {"source": "model", "task": "sequence-classification", "numLabels": 2},
        "method": {"lora": {"r": 2, "targetModules": ["query"]}},
        "data": {"train": {"source": "data.jsonl"}, "maxLength": 16},
        "training": {"maxSteps": 2, "microBatchSize": 4},
        "workers": {"replicas": 1, "processesPerWorker": 1},
        "tracking": {"mlflowTrackingUri": f"http://127.0.0.1:{free_port()}"},  # unreachable: a warning, no store
        "output": {"uri": "out"},
    }
    tiny.job("elsewhere", spec, sub / "job.yaml")
    run = subprocess.run(
        [sys.executable, "-c", RUN, "sub/job.yaml"], cwd=tmp_path, env=dict(os.environ),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=LAUNCH_TIMEOUT,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert (sub / "out" / "elsewhere" / "adapter" / "manifest.json").is_file()
    assert (tmp_path / ".peftjob" / "elsewhere" / "result.json").is_file(), "the state stays in the working folder"
    config = json.loads((tmp_path / ".peftjob" / "elsewhere" / "config.json").read_text())
    assert config["metadata"]["annotations"][MODEL_SOURCE_GIVEN] == "model"
