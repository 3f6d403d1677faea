"""Preflight: each check refuses one kind of mistake in seconds, with the field and the reason, before the
backbone loads; `peftjob validate` runs the offline ones through the same functions and warns about paths a
cluster pod will not have. Real files, a real moto S3 server, DeepSpeed's real accelerator."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peftjob_trainer.api import load_object
from peftjob_trainer.errors import ModelError, OutputError, SpecError
from peftjob_trainer.preflight import (
    check_model_fits,
    check_model_folder,
    check_output,
    check_output_folder,
    check_precision,
    gpu_problem,
    local_model_path,
    position_limit,
    preflight,
)
from tests.trainer import tiny

PEFTJOB = shutil.which("peftjob", path=str(Path(sys.executable).parent)) or "peftjob"
BERT = {"model_type": "bert", "max_position_embeddings": 64}


def job(**spec: Any):  # noqa: ANN201 - a PEFTJob
    base = {
        "model": {"source": "model", "task": "sequence-classification", "numLabels": 2},
        "method": {"lora": {"r": 4}},
        "data": {"train": {"source": "train.jsonl"}, "maxLength": 16},
    }
    return load_object({"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": "pre"},
                        "spec": {**base, **spec}})


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return tiny.bert_classifier(tmp_path_factory.mktemp("bert") / "model")


def without(folder: Path, target: Path, *dropped: str) -> Path:
    """A copy of a saved model folder without the named files."""
    shutil.copytree(folder, target, ignore=lambda _, names: [name for name in names if name in dropped])
    return target


# ----------------------------------------------------------------------------------------------- output


def test_an_output_folder_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file\n")
    with pytest.raises(OutputError, match=r"^output.uri: .*notes.txt/out: .*notes.txt is a file, not a folder"):
        check_output_folder(tmp_path / "notes.txt" / "out")


def test_an_output_folder_in_proc_is_refused_even_for_root() -> None:
    with pytest.raises(OutputError, match="output.uri: /proc/peftjob-preflight/out: cannot write in /proc"):
        check_output_folder(Path("/proc/peftjob-preflight/out"))


def test_a_writable_output_folder_passes_and_keeps_nothing_of_the_probe(tmp_path: Path) -> None:
    spec = job(output={"uri": str(tmp_path / "out")}).spec
    check_output(spec, "pre")
    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file()) == []


def test_an_s3_output_without_its_bucket_is_refused_and_a_good_one_keeps_nothing(s3_env) -> None:
    missing = job(output={"uri": "s3://no-such-bucket/runs", "s3EndpointUrl": s3_env.endpoint}).spec
    with pytest.raises(OutputError, match="output.uri: s3://no-such-bucket/runs: NoSuchBucket"):
        check_output(missing, "pre")
    good = job(output={"uri": s3_env.bucket("preflight") + "/runs", "s3EndpointUrl": s3_env.endpoint}).spec
    check_output(good, "pre")
    assert s3_env.client().list_objects_v2(Bucket="preflight").get("KeyCount") == 0


# ------------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize(
    ("source", "local"),
    [("gpt2", False), ("org/name", False), ("s3://bucket/model", False), ("./model", True), ("/models/x", True),
     ("models/org/name", True), ("~/models/x", True)],
)
def test_hub_ids_and_s3_prefixes_are_not_taken_for_local_folders(source: str, local: bool) -> None:
    assert (local_model_path(source) is not None) == local


def test_a_source_written_as_a_path_stays_one_after_joining_to_the_yaml_folder() -> None:
    """`./model` beside the YAML becomes `model` when the YAML is in the working directory."""
    assert local_model_path("no-such-model", given="./no-such-model") == Path("no-such-model")
    assert local_model_path("no-such-model", given="no-such-model") is None


def test_a_missing_model_folder_and_a_file_are_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model.source: ./gone: no such folder"):
        check_model_folder(tmp_path / "gone", "causal-lm", "./gone")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="model.source: weights.bin: is a file; expected a folder"):
        check_model_folder(tmp_path / "weights.bin", "causal-lm", "weights.bin")


def test_a_model_folder_without_tokenizer_files_is_refused_naming_them(bert: Path, tmp_path: Path) -> None:
    bare = without(bert, tmp_path / "bare", "tokenizer.json", "tokenizer_config.json")
    with pytest.raises(ModelError, match=r"model.source: bare: no tokenizer files \(none of tokenizer.json, "):
        check_model_folder(bare, "sequence-classification", "bare")
    assert check_model_folder(bert, "sequence-classification", "model")["model_type"] == "bert"


def test_a_model_folder_without_config_or_weights_or_image_processor_is_refused(bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        check_model_folder(without(bert, tmp_path / "a", "config.json"), "causal-lm", "a")
    with pytest.raises(ModelError, match="no weights"):
        check_model_folder(without(bert, tmp_path / "b", "model.safetensors"), "causal-lm", "b")
    with pytest.raises(ModelError, match="no image processor files"):
        check_model_folder(bert, "image-classification", "model")


def test_an_empty_tokenizer_built_from_the_config_alone_is_refused(bert: Path, tmp_path: Path) -> None:
    """What a hub repo or an s3:// prefix without vocabulary files gives: only special tokens."""
    from peftjob_trainer.model_loading import check_vocabulary, load_preprocessor

    bare = without(bert, tmp_path / "bare", "tokenizer.json", "tokenizer_config.json")
    from transformers import AutoTokenizer

    with pytest.raises(ModelError, match="the tokenizer has no vocabulary beyond its 5 special tokens"):
        check_vocabulary(AutoTokenizer.from_pretrained(bare), "s3://models/bare")
    tokenizer, _ = load_preprocessor(job().spec, str(bert))
    assert len(tokenizer) > 60


def test_causal_lm_on_an_encoder_is_refused() -> None:
    spec = job(model={"source": "bert", "task": "causal-lm"}).spec
    with pytest.raises(ModelError, match="model.task: causal-lm needs a decoder, but bert is a bert encoder"):
        check_model_fits(spec, BERT)
    check_model_fits(spec, {"model_type": "gpt2", "n_positions": 64})


def test_a_text_task_on_a_vision_model_and_the_reverse_are_refused() -> None:
    with pytest.raises(ModelError, match="needs a text model"):
        check_model_fits(job().spec, {"model_type": "vit", "image_size": 16})
    image = job(model={"source": "vit", "task": "image-classification", "numLabels": 2}, method={"vpt": {}}).spec
    with pytest.raises(ModelError, match="needs a vision model"):
        check_model_fits(image, BERT)
    check_model_fits(image, {"model_type": "vit", "image_size": 16})


def test_max_length_over_the_models_positions_is_refused_with_the_limit() -> None:
    check_model_fits(job(data={"train": {"source": "t.jsonl"}, "maxLength": 64}).spec, BERT)
    with pytest.raises(SpecError, match="data.maxLength: 65 tokens exceed the 64 positions of model .*at most 64"):
        check_model_fits(job(data={"train": {"source": "t.jsonl"}, "maxLength": 65}).spec, BERT)
    with pytest.raises(SpecError, match=r"data.maxLength: 256 tokens \(the default\) exceed the 64 positions"):
        check_model_fits(job(data={"train": {"source": "t.jsonl"}}).spec, BERT)


@pytest.mark.parametrize("method", [{"promptTuning": {"numVirtualTokens": 8}},
                                    {"prefixTuning": {"numVirtualTokens": 8}},
                                    {"pTuning": {"numVirtualTokens": 8}}])
def test_prepended_virtual_tokens_count_against_the_positions(method: dict[str, Any]) -> None:
    spec = job(method=method, data={"train": {"source": "t.jsonl"}, "maxLength": 60}).spec
    with pytest.raises(SpecError, match=f"60 tokens plus 8 virtual tokens of method.{next(iter(method))} .*at most 56"):
        check_model_fits(spec, BERT)


def test_a_p_tuning_template_holds_its_tokens_inside_max_length() -> None:
    template = "[P][P] {text} [P]"
    spec = job(method={"pTuning": {"numVirtualTokens": 3, "template": template}},
               data={"train": {"source": "t.jsonl"}, "maxLength": 64}).spec
    check_model_fits(spec, BERT)


def test_position_limits_follow_each_family_config() -> None:
    assert position_limit({"model_type": "gpt2", "n_positions": 1024}) == 1024
    assert position_limit({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert position_limit({"model_type": "llama"}) is None


# ----------------------------------------------------------------------------------------------- device


def test_precision_is_checked_against_deepspeeds_accelerator_here() -> None:
    """bf16 runs on any DeepSpeed accelerator this project supports (CPUs included); fp16 only where the
    accelerator says so, and a refusal names the field that asked for it."""
    from deepspeed.accelerator import get_accelerator

    check_precision(job(training={"precision": "bf16"}).spec)
    check_precision(job(training={"precision": "fp32"}).spec)
    if get_accelerator().is_fp16_supported():
        check_precision(job(training={"precision": "fp16"}).spec)
        return
    with pytest.raises(SpecError, match=r"^training.precision: fp16 is not supported on this machine's"):
        check_precision(job(training={"precision": "fp16"}).spec)
    raw = job(training={"precision": "fp32"}, deepspeed={"config": {"fp16": {"enabled": True}}}).spec
    with pytest.raises(SpecError, match=r"^deepspeed.config.fp16: fp16 is not supported"):
        check_precision(raw)


def test_gpus_asked_for_and_absent_warn_locally_and_fail_in_a_pod() -> None:
    spec = job(workers={"gpusPerWorker": 1}).spec
    warning = gpu_problem(spec, visible=0, in_pod=False)
    assert warning == "workers.gpusPerWorker: 1 GPU(s) per worker asked for, but torch sees none here: " \
                      "training runs on the CPU"
    with pytest.raises(SpecError, match="workers.gpusPerWorker: 1 GPU.*workers.image a CUDA build"):
        gpu_problem(spec, visible=0, in_pod=True)
    assert gpu_problem(spec, visible=1, in_pod=True) is None
    assert gpu_problem(job().spec, visible=0, in_pod=True) is None
    with pytest.raises(SpecError, match="workers.processesPerWorker: 2 ranks per worker, but only 1 GPU"):
        gpu_problem(job(workers={"gpusPerWorker": 1, "processesPerWorker": 2}).spec, visible=1, in_pod=False)


def test_preflight_of_a_good_job_passes_and_logs_the_gpu_warning_on_a_cpu_machine(bert, tmp_path, caplog,
                                                                                  monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    good = job(model={"source": str(bert), "task": "sequence-classification", "numLabels": 2},
               output={"uri": str(tmp_path / "out")}, workers={"gpusPerWorker": 1})
    with caplog.at_level(logging.WARNING, logger="peftjob"):
        preflight(good, str(bert))
    assert "workers.gpusPerWorker: 1 GPU(s) per worker asked for, but torch sees none here" in caplog.text
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(SpecError, match="workers.gpusPerWorker"):
        preflight(good, str(bert))


# ---------------------------------------------------------------------------------------------- the CLI


def peftjob(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    return subprocess.run([PEFTJOB, *args], capture_output=True, text=True, cwd=workdir, env=env)


def write_job(path: Path, **spec: Any) -> Path:
    base = {"model": {"source": "model", "task": "sequence-classification", "numLabels": 2},
            "method": {"lora": {"r": 4}}, "data": {"train": {"source": "train.jsonl"}, "maxLength": 16}}
    return tiny.job("pre", {**base, **spec}, path)


def test_validate_refuses_what_run_would_refuse_on_this_machine(bert: Path, tmp_path: Path) -> None:
    without(bert, tmp_path / "model", "tokenizer.json", "tokenizer_config.json")
    (tmp_path / "notes.txt").write_text("a file\n")
    write_job(tmp_path / "job.yaml", data={"train": {"source": "train.jsonl"}, "maxLength": 16},
              output={"uri": "notes.txt/out"})
    result = peftjob(tmp_path, "validate", "job.yaml")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "job.yaml: invalid" in result.stderr
    assert "  model.source: model: no tokenizer files (none of tokenizer.json" in result.stderr
    assert "  output.uri: notes.txt/out: notes.txt is a file, not a folder" in result.stderr


def test_validate_checks_max_length_against_the_model_beside_the_yaml(bert: Path, tmp_path: Path) -> None:
    """Relative paths are the YAML file's folder's, as for `peftjob run`, from wherever validate runs."""
    shutil.copytree(bert, tmp_path / "model")
    write_job(tmp_path / "job.yaml", data={"train": {"source": "train.jsonl"}, "maxLength": 100})
    result = peftjob(tmp_path.parent, "validate", f"{tmp_path.name}/job.yaml")
    assert result.returncode == 1
    assert f"  data.maxLength: 100 tokens exceed the 64 positions of {tmp_path.name}/model" in result.stderr


def test_validate_and_render_warn_about_relative_paths_without_failing(bert: Path, tmp_path: Path) -> None:
    shutil.copytree(bert, tmp_path / "model")
    write_job(tmp_path / "job.yaml", output={"uri": "out"})
    for command in ("validate", "render"):
        result = peftjob(tmp_path, command, "job.yaml")
        assert result.returncode == 0, result.stderr
        for field, value in (("model.source", "model"), ("data.train.source", "train.jsonl"), ("output.uri", "out")):
            assert f"job.yaml: warning: {field}: {value!r} is a relative local path" in result.stderr
    assert "valid PEFTJob 'pre'" in peftjob(tmp_path, "validate", "job.yaml").stdout


def test_validate_only_warns_about_a_model_folder_that_is_not_on_this_machine(tmp_path: Path) -> None:
    """A pod's volume path (or a quickstart model not linked yet) need not exist where the YAML is checked."""
    write_job(tmp_path / "job.yaml", model={"source": "/models/tiny-bert", "task": "sequence-classification",
                                            "numLabels": 2}, output={"uri": "s3://bucket/runs"})
    result = peftjob(tmp_path, "validate", "job.yaml")
    assert result.returncode == 0, result.stderr
    assert "warning: model.source: /models/tiny-bert: no such folder on this machine" in result.stderr
