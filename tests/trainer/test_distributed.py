"""The trainer for real: `peftjob run` launching DeepSpeed ranks on CPU (gloo), a real MLflow server, a real
moto S3 server. Launches are slow on small machines, so each fixture launches once and several tests read it.

Equivalence tolerance: fp32 on CPU; ZeRO-3 reduces gradients across ranks in another order than one process
sums them, so trainable tensors agree to 1e-5 absolute after 40 steps, not bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from peftjob_trainer.local_run import free_port
from tests.trainer import tiny
from tests.trainer.local_job import LAUNCH_TIMEOUT, finish, launch

pytestmark = pytest.mark.slow
STEPS, CHECKPOINT_EVERY = 40, 5
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny BERT classifier (weights and tokenizer on disk) and a learnable sentiment data set."""
    return tiny.sentiment_folder(tmp_path_factory.mktemp("trainer"), 96, 24)


def spec(method: dict[str, Any], replicas: int = 1, processes: int = 2, **overrides: Any) -> dict[str, Any]:
    base = {
        "model": {"source": "model", "task": "sequence-classification", "numLabels": 2},
        "method": method,
        "data": {"train": {"source": "train.jsonl"}, "eval": {"source": "eval.jsonl"}, "maxLength": 16},
        "training": {
            "maxSteps": STEPS, "microBatchSize": 4, "learningRate": 0.01, "warmupSteps": 2, "logInterval": 1,
            "evalInterval": 20, "checkpointInterval": CHECKPOINT_EVERY, "seed": 3,
        },
        # Partition every frozen weight, even the tiny model's small ones (the default keeps them whole).
        "deepspeed": {"zeroStage": 3, "config": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}},
        "workers": {"replicas": replicas, "processesPerWorker": processes},
        "output": {"uri": "out"},
    }
    base.update(overrides)
    return base


LORA = {"lora": {"r": 4, "targetModules": ["query", "value"]}}
PROMPT = {"promptTuning": {"numVirtualTokens": 4, "init": "vocab"}}


def result(workdir: Path, name: str) -> dict[str, Any]:
    return json.loads((workdir / ".peftjob" / name / "result.json").read_text())


def reference_state(workdir: Path, method_spec: dict[str, Any], world_size: int) -> dict[str, torch.Tensor]:
    """The same training in one plain PyTorch process, no DeepSpeed: global batch = world x micro batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftjob_trainer.api import load_object
    from peftjob_trainer.batching import Sharding, collate
    from peftjob_trainer.data import encode, read_records
    from peftjob_trainer.methods import build_method
    from peftjob_trainer.schedule import lr_scheduler

    job = load_object({"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": "ref"},
                       "spec": spec(method_spec)})
    training = job.spec.training
    model = AutoModelForSequenceClassification.from_pretrained(workdir / "model", num_labels=2)
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        train_set = encode(read_records(job.spec.data.train, Path), job.spec, tokenizer, None)
    finally:
        os.chdir(cwd)
    method = build_method(job.spec.method, job.spec.model.task)
    random.seed(training.seed)
    torch.manual_seed(training.seed)
    model = method.attach(model)
    model.train()
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    scheduler = lr_scheduler(optimizer, training, STEPS)
    order = Sharding(len(train_set), training.micro_batch_size * world_size, 1, training.seed)
    for step in range(STEPS):
        batch = collate([train_set[i] for i in order.indices(step, 0)], tokenizer.pad_token_id)
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, training.gradient_clipping)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return method.trainable_state(model)


def assert_same_state(trained: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert trained.keys() == reference.keys()
    for key in reference:
        difference = (trained[key] - reference[key]).abs().max().item()
        assert difference <= TOLERANCE, f"{key}: differs by {difference}"


def adapter_state(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "trainable.safetensors")


@pytest.fixture(scope="module")
def runs(workdir, mlflow_server) -> dict[str, tuple[int, str]]:
    """Three launches at once (their start-up overlaps): LoRA and Prompt Tuning on one worker with two ranks
    (the pod launcher starts them) tracked in MLflow, and LoRA on a single rank with gradient checkpointing
    and MLflow unreachable."""
    tracked = {"MLFLOW_TRACKING_URI": mlflow_server}
    one_rank = spec(LORA, processes=1)
    one_rank["training"]["gradientCheckpointing"] = True  # recomputation through a frozen, sharded backbone
    launches = {
        "lora2": launch(workdir, "lora2", spec(LORA), tracked),
        "prompt2": launch(workdir, "prompt2", spec(PROMPT), tracked),
        "lora1": launch(workdir, "lora1", one_rank, {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}),
    }
    return {name: finish(process) for name, process in launches.items()}


@pytest.mark.parametrize(("name", "method"), [("lora2", LORA), ("prompt2", PROMPT)])
def test_zero3_on_two_ranks_trains_what_one_plain_process_trains(workdir, runs, name, method):
    code, output = runs[name]
    assert code == 0, output[-3000:]
    outcome = result(workdir, name)
    assert outcome["worldSize"] == 2 and outcome["steps"] == STEPS
    assert outcome["trainableParams"] < outcome["totalParams"] / 5
    assert_same_state(adapter_state(workdir / "out" / name / "adapter"), reference_state(workdir, method, 2))


def test_training_learns_and_is_tracked_in_one_mlflow_run(workdir, runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    code, output = runs["lora2"]
    assert code == 0, output[-3000:]
    assert "step 0/40 (before training): eval_loss=" in output
    outcome = result(workdir, "lora2")
    client = MlflowClient(mlflow_server)
    run = client.get_run(outcome["mlflowRunId"])
    assert run.info.status == "FINISHED" and run.data.params["method.lora.r"] == "4"
    before = client.get_metric_history(run.info.run_id, "eval_accuracy")
    assert [m.step for m in before] == [0, 20, 40]
    assert before[-1].value > before[0].value, "the adapter learned something"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts and client.list_artifacts(run.info.run_id, "spec")


def test_zero3_shards_the_frozen_backbone_across_ranks(workdir, runs):
    assert runs["lora1"][0] == 0, runs["lora1"][1][-3000:]
    (alone,) = result(workdir, "lora1")["frozenBytesPerRank"]
    shared = result(workdir, "lora2")["frozenBytesPerRank"]
    assert len(shared) == 2 and max(shared) <= 0.55 * alone, (shared, alone)


def test_training_completes_with_warnings_when_mlflow_is_unreachable(workdir, runs):
    code, output = runs["lora1"]
    assert code == 0, output[-3000:]
    assert "cannot open the run" in output and "training goes on" in output
    assert "MLflow run None" not in output and "no MLflow run was recorded in http://127.0.0.1:" in output
    outcome = result(workdir, "lora1")
    assert outcome["mlflowRunId"] is None and (workdir / "out/lora1/adapter/manifest.json").is_file()


def test_sigkill_of_one_rank_then_rerun_resumes_without_losing_or_repeating_steps(
    workdir, runs, mlflow_server, s3_server
):
    """Two workers of one rank each, data and output in S3; rank 1 dies mid-run; the rerun resumes."""
    import psutil

    bucket = s3_server.bucket("resume")
    client = s3_server.client()
    for name in ("train.jsonl", "eval.jsonl"):
        client.upload_file(str(workdir / name), "resume", f"data/{name}")
    job_spec = spec(
        LORA, replicas=2, processes=1,
        data={"train": {"source": f"{bucket}/data/train.jsonl"}, "eval": {"source": f"{bucket}/data/eval.jsonl"}, "maxLength": 16},
        output={"uri": f"{bucket}/jobs", "s3EndpointUrl": s3_server.endpoint},
        tracking={"experiment": "resume"},
    )
    env = {"MLFLOW_TRACKING_URI": mlflow_server, **s3_server.env}
    first = launch(workdir, "killed", job_spec, env)
    manifest = f"jobs/killed/checkpoints/step-{CHECKPOINT_EVERY:08d}/manifest.json"
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while first.poll() is None and time.monotonic() < deadline:
        if client.list_objects_v2(Bucket="resume", Prefix=manifest).get("KeyCount"):
            break
        time.sleep(0.05)
    launchers = psutil.Process(first.pid).children()
    (victim,) = [p for p in launchers if p.environ().get("NODE_RANK") == "1"]
    victim.kill()
    code, output = finish(first)
    assert code == 137, f"expected the gang to fail with the killed rank's SIGKILL (137): {code}\n{output[-3000:]}"
    assert not client.list_objects_v2(Bucket="resume", Prefix="jobs/killed/adapter/").get("KeyCount")

    code, output = finish(launch(workdir, "killed", job_spec, env))
    assert code == 0, output[-3000:]
    outcome = result(workdir, "killed")
    assert outcome["resumedFromStep"] >= CHECKPOINT_EVERY and outcome["resumedFromStep"] % CHECKPOINT_EVERY == 0
    assert outcome["artifactUri"] == f"{bucket}/jobs/killed/adapter/"
    fetched = workdir / "fetched"
    fetched.mkdir()
    client.download_file("resume", "jobs/killed/adapter/trainable.safetensors", str(fetched / "trainable.safetensors"))
    # Same seed, data and world size as the uninterrupted lora2 run: any lost or repeated step would show.
    assert_same_state(adapter_state(fetched), adapter_state(workdir / "out" / "lora2" / "adapter"))

    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(mlflow_server)
    experiment = mlflow.get_experiment_by_name("resume")
    found = mlflow.search_runs([experiment.experiment_id], "tags.`peftjob.name` = 'killed'")
    assert [run.info.run_id for run in found] == [outcome["mlflowRunId"]], "one run, resumed"
    steps = {metric.step for metric in mlflow.get_metric_history(outcome["mlflowRunId"], "loss")}
    assert steps == set(range(1, STEPS + 1))

    # Running the finished job again trains nothing: it resumes at the final checkpoint and publishes the same adapter.
    code, output = finish(launch(workdir, "killed", job_spec, env))
    assert code == 0, output[-3000:]
    again = result(workdir, "killed")
    assert again["resumedFromStep"] == STEPS and again["sha256"] == outcome["sha256"]
    assert again["mlflowRunId"] == outcome["mlflowRunId"]
    assert {metric.step for metric in mlflow.get_metric_history(outcome["mlflowRunId"], "loss")} == steps


def test_bad_data_fails_with_a_clear_message_and_a_user_error_code(workdir):
    (workdir / "bad.jsonl").write_text('{"text": "good w1", "label": 1}\n{"text": "bad w2", "label": 0}\n{"text": "w3", "label": 7}\n')
    job_spec = spec(LORA, processes=1, data={"train": {"source": "train.jsonl"}, "eval": {"source": "bad.jsonl"},
                                             "maxLength": 16})
    code, output = finish(launch(workdir, "baddata", job_spec, {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}))
    assert code == 3, output[-3000:]
    message = result(workdir, "baddata")["error"]
    assert message.startswith("bad.jsonl:3: label 7 out of range")
    assert "Traceback" not in output and "bad.jsonl:3: label 7 out of range" in output


def test_ctrl_c_stops_every_rank(workdir):
    import psutil

    process = launch(workdir, "interrupted", spec(LORA, replicas=2, processes=1), {})
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while len(parent.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = parent.children(recursive=True)
    assert len(ranks) >= 2
    process.send_signal(signal.SIGINT)
    code, output = finish(process)
    assert code == 130 and "stopped all ranks" in output
    gone, alive = psutil.wait_procs(ranks, timeout=5)
    assert not alive, f"ranks still running after Ctrl-C: {alive}"
