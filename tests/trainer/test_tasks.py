"""The two tasks besides text classification, and the DeepSpeed settings the text tests leave out, end to end
through `peftjob run` with real DeepSpeed ranks on CPU:

- a causal LM on prompt/completion data (ZeRO-1, bf16, loss on the completion only);
- an image classifier (VPT, ZeRO-2) whose backbone and image folders are s3:// prefixes on the moto server,
  read by two local ranks that start together and share one download, then resumed with more steps;
- a backbone named by hub id (offline, from a pre-filled Hugging Face cache) under ZeRO-3 with optimizer and
  parameter offload to the CPU (on a CPU-only machine this can only show that DeepSpeed accepts and reports
  the offload, not that it saves memory).

The launches start together in one folder, because start-up dominates and because jobs sharing the embedded
MLflow store there is what a user does too.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer import tiny
from tests.trainer.local_job import finish, launch

pytestmark = pytest.mark.slow
CAUSAL_LORA = {"lora": {"r": 4, "targetModules": ["q_proj", "v_proj"]}}
COLOURS = {"blue": (20, 40, 220), "red": (220, 30, 30)}


def llama(directory: Path) -> Path:
    """A tiny random Llama with the word-level tokenizer. Weights at 15x the usual init scale: with the default
    0.02 a frozen random LM head caps every logit near +-0.6, so no adapter could make a confident prediction."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny.WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=4,
        initializer_range=0.3,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tiny.tokenizer(directory)
    return directory


def copy_task(path: Path, count: int, seed: int) -> Path:
    """Prompt: two filler words; completion: the first one again."""
    rng = random.Random(seed)
    with path.open("w") as handle:
        for _ in range(count):
            first, second = rng.sample(tiny.WORDS[:60], 2)
            handle.write(json.dumps({"question": f"{first} {second}", "answer": first}) + "\n")
    return path


def vit(directory: Path) -> Path:
    """A tiny random ViT (16 px images) and its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(directory)
    return directory


def colour_folder(root: Path, per_class: int, seed: int) -> Path:
    """root/<colour>/<n>.png: noisy squares of one colour each."""
    from PIL import Image

    rng = random.Random(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = [tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in rgb) for _ in range(24 * 24)]
            image = Image.new("RGB", (24, 24))
            image.putdata(pixels)
            image.save(root / name / f"{index}.png")
    return root


def training(**overrides: Any) -> dict[str, Any]:
    return {"maxSteps": 30, "microBatchSize": 8, "learningRate": 0.01, "warmupSteps": 2, "logInterval": 5,
            "evalInterval": 0, "checkpointInterval": 10, "seed": 5, **overrides}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    llama(root / "llama")
    copy_task(root / "copy-train.jsonl", 160, seed=1)
    copy_task(root / "copy-eval.jsonl", 32, seed=2)
    vit(root / "vit")
    colour_folder(root / "images-train", 24, seed=3)
    colour_folder(root / "images-eval", 8, seed=4)
    return root


def hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """`folder` as the Hugging Face cache holds a downloaded `repo_id` at `main`: what a pre-warmed node cache or
    PVC gives a job whose model.source is a hub id, offline."""
    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(folder, repo / "snapshots" / revision)
    return cache


HUB_ID = "peftjob-tests/tiny-llama"
COPY_DATA = {"train": {"source": "copy-train.jsonl"}, "eval": {"source": "copy-eval.jsonl"},
             "promptField": "question", "completionField": "answer", "maxLength": 16}
CAUSAL = {
    "model": {"source": "llama", "task": "causal-lm"},
    "method": CAUSAL_LORA,
    "data": COPY_DATA,
    "training": training(maxSteps=60, learningRate=0.05, precision="bf16"),
    "deepspeed": {"zeroStage": 1},
    "workers": {"replicas": 1, "processesPerWorker": 1},
    "output": {"uri": "out"},
}


def job_specs(s3_endpoint: str) -> dict[str, dict[str, Any]]:
    """The three jobs, by name; the image job reads its backbone and data from the S3 server at `s3_endpoint`."""
    return {
        "causal": CAUSAL,
        "image": {
            "model": {"source": "s3://tasks/models/vit", "task": "image-classification", "numLabels": 2},
            "method": {"vpt": {"numTokens": 4, "depth": "deep"}},
            "data": {"train": {"source": "s3://tasks/images-train"}, "eval": {"source": "s3://tasks/images-eval"}},
            "training": training(microBatchSize=2, learningRate=0.02),
            "deepspeed": {"zeroStage": 2},
            "workers": {"replicas": 1, "processesPerWorker": 2},
            "output": {"uri": "out", "s3EndpointUrl": s3_endpoint},
        },
        "offload": {
            "model": {"source": HUB_ID, "task": "causal-lm"},
            "method": CAUSAL_LORA,
            "data": COPY_DATA,
            "training": training(maxSteps=60, learningRate=0.05),
            "deepspeed": {"zeroStage": 3, "offloadOptimizer": "cpu", "offloadParam": "cpu"},
            "workers": {"replicas": 1, "processesPerWorker": 1},
            "output": {"uri": "out"},
        },
    }


@pytest.fixture(scope="module")
def specs(s3_server: Any) -> dict[str, dict[str, Any]]:
    return job_specs(s3_server.endpoint)


@pytest.fixture(scope="module")
def environment(workdir: Path, s3_server: Any) -> dict[str, str]:
    """The backbone and image folders in S3, the tiny Llama in a hub cache: what every launch adds to its environment."""
    s3_server.upload_folder(workdir / "vit", "s3://tasks/models/vit")
    for split in ("train", "eval"):
        s3_server.upload_folder(workdir / f"images-{split}", f"s3://tasks/images-{split}")
    return {**s3_server.env, "PEFTJOB_CACHE_DIR": str(workdir / "cache"), "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(hub_cache(workdir / "hub", HUB_ID, workdir / "llama"))}


def completed(workdir: Path, name: str, process: subprocess.Popen[str]) -> tuple[str, dict[str, Any]]:
    """Output and the result file of a job that must succeed, read at once (a rerun of the job rewrites it)."""
    code, output = finish(process)
    assert code == 0, output[-4000:]
    return output, json.loads((workdir / ".peftjob" / name / "result.json").read_text())


@pytest.fixture(scope="module")
def runs(workdir: Path, specs: dict[str, dict[str, Any]], environment: dict[str, str]) -> dict[str, tuple[str, dict[str, Any]]]:
    launches = {name: launch(workdir, name, spec, environment) for name, spec in specs.items()}
    return {name: completed(workdir, name, process) for name, process in launches.items()}


def test_causal_lm_learns_the_completion_in_bf16_and_peft_reads_the_adapter(workdir: Path, runs) -> None:
    _, outcome = runs["causal"]
    before, after = outcome["initialMetrics"], outcome["metrics"]
    assert after["eval_loss"] < before["eval_loss"] - 0.5, (before, after)
    assert after["eval_perplexity"] < before["eval_perplexity"]
    adapter = workdir / "out" / "causal" / "adapter"
    assert {tensor.dtype for tensor in load_file(adapter / "adapter_model.safetensors").values()} == {torch.bfloat16}
    assert_peft_logits_match(workdir / "llama", adapter)


def assert_peft_logits_match(backbone: Path, adapter: Path) -> None:
    """peft's reading of the exported LoRA gives the logits our own loader gives, and training moved them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from peftjob_trainer.api import load_object
    from peftjob_trainer.methods import build_method

    ids = torch.tensor([[2, 10, 20, 3, 10]])
    base = AutoModelForCausalLM.from_pretrained(backbone).eval()
    with torch.no_grad():
        untrained = base(input_ids=ids).logits
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(backbone), adapter).eval()
    job = load_object({"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": "x"},
                       "spec": CAUSAL})
    method = build_method(job.spec.method, job.spec.model.task)
    ours = method.attach(AutoModelForCausalLM.from_pretrained(backbone))
    method.load(ours, adapter)
    ours.eval()
    with torch.no_grad():
        expected, actual = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    assert (expected - actual).abs().max().item() < 1e-5
    assert (expected - untrained).abs().max().item() > 1e-3


def test_image_folders_and_backbone_from_s3_train_vpt_under_zero2(workdir: Path, runs) -> None:
    output, outcome = runs["image"]
    before, after = outcome["initialMetrics"], outcome["metrics"]
    assert after["eval_loss"] < before["eval_loss"], (before, after)
    assert after["eval_accuracy"] >= 0.9, (before, after)
    assert outcome["worldSize"] == 2 and outcome["steps"] == 30
    assert "DeepSpeed ZeRO-2 on 2 rank(s), fp32" in output
    # Both ranks loaded the backbone from one download in the node cache, made complete exactly once.
    (cached,) = [path for path in (workdir / "cache" / "models").iterdir() if path.suffix != ".lock"]
    assert (cached / ".peftjob-complete").exists() and (cached / "config.json").exists()


def test_a_finished_zero2_job_given_more_steps_resumes_on_both_ranks(workdir: Path, runs, specs, environment) -> None:
    """Resume under ZeRO-2 (the SIGKILL test covers ZeRO-3): each rank reloads its own partition of the optimizer
    state from the final checkpoint and goes on."""
    longer = copy.deepcopy(specs["image"])
    longer["training"]["maxSteps"] = 40
    output, outcome = completed(workdir, "image", launch(workdir, "image", longer, environment))
    assert output.count("resumed from checkpoint step-00000030 (step 30)") == 2, output[-4000:]
    assert outcome["resumedFromStep"] == 30 and outcome["steps"] == 40
    assert outcome["metrics"]["eval_accuracy"] >= 0.9


def test_a_hub_id_backbone_trains_under_zero3_with_optimizer_and_parameter_offload(workdir: Path, runs) -> None:
    output, outcome = runs["offload"]
    assert "DeepSpeed ZeRO-3 on 1 rank(s), fp32, optimizer AdamW, optimizer state offloaded to cpu, " \
           "parameters offloaded to cpu" in output
    assert outcome["metrics"]["eval_loss"] < outcome["initialMetrics"]["eval_loss"] - 0.5


def test_jobs_started_together_share_the_embedded_mlflow_store(workdir: Path, runs, specs) -> None:
    """The launches created and migrated `mlflow.db` at the same moment; each job has its one run, FINISHED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    finished = {run.data.tags["peftjob.name"]: run.info.status for run in client.search_runs(
        [experiment.experiment_id for experiment in client.search_experiments()])}
    assert finished == {name: "FINISHED" for name in specs}
    for output, _ in runs.values():
        assert "MLflow: cannot" not in output, output[-4000:]
