"""The trainer's parts, each on its own, in this process (or forked ones, where the behaviour is between
processes): config rendering, environment, data checks, sharding, storage (local and a real moto S3 server),
checkpoint completeness, tracking failures and concurrency, the gang."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from peftjob_trainer import checkpoint, processes
from peftjob_trainer.api import load_object
from peftjob_trainer.api.contract import EXIT_BAD_DATA, is_retryable, worker_environment
from peftjob_trainer.api.deepspeed_config import deepspeed_config
from peftjob_trainer.batching import Sharding, eval_batches
from peftjob_trainer.data import encode, read_records
from peftjob_trainer.errors import DataError, SpecError
from peftjob_trainer.manifest import describe
from peftjob_trainer.progress_server import ProgressServer
from peftjob_trainer.publish import publish_adapter
from peftjob_trainer.storage import open_storage
from peftjob_trainer.tracking import Tracker, flatten
from peftjob_trainer.local_run import free_port

JOBS_AT_ONCE = 6


def make_job(**spec_overrides):
    spec = {
        "model": {"source": "m", "task": "sequence-classification", "numLabels": 2},
        "method": {"lora": {}},
        "data": {"train": {"source": "train.jsonl"}},
    }
    spec.update(spec_overrides)
    return load_object({"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": "unit"}, "spec": spec})


# ------------------------------------------------------------------------------------------ config and env


def test_deepspeed_config_follows_the_spec_and_merges_raw_config_last():
    job = make_job(
        deepspeed={"zeroStage": 3, "offloadOptimizer": "cpu", "offloadParam": "nvme", "nvmePath": "/nvme",
                   "config": {"zero_optimization": {"stage3_param_persistence_threshold": 0}, "bf16": {"enabled": False}}},
        training={"precision": "bf16", "microBatchSize": 4, "gradientAccumulationSteps": 2, "gradientClipping": 0.5},
    )
    config = deepspeed_config(job.spec)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"] == {
        "device": "nvme", "pin_memory": False, "nvme_path": "/nvme"}
    assert config["optimizer"]["type"] == "AdamW" and config["optimizer"]["params"]["torch_adam"] is True
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (4, 2)
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": False}, "the raw config wins over the generated one"


@pytest.mark.parametrize(("gpus", "precision", "bf16", "fp16"), [(0, "auto", False, False), (1, "auto", True, False), (0, "fp16", False, True)])
def test_auto_precision_is_bf16_on_gpus_and_fp32_on_cpu(gpus, precision, bf16, fp16):
    config = deepspeed_config(make_job(workers={"gpusPerWorker": gpus}, training={"precision": precision}).spec)
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (bf16, fp16)


def test_worker_environment_is_the_pod_rendezvous_and_torchrun_names():
    job = make_job(workers={"replicas": 3, "processesPerWorker": 2}, tracking={"mlflowTrackingUri": "http://ml:5000"})
    env = worker_environment(job, 2, "unit-worker-0.unit", 1234)
    assert {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "WORLD_SIZE")} == {
        "MASTER_ADDR": "unit-worker-0.unit", "MASTER_PORT": "1234", "NNODES": "3", "NODE_RANK": "2",
        "NPROC_PER_NODE": "2", "WORLD_SIZE": "6"}
    assert env["PET_NODE_RANK"] == "2" and env["PET_MASTER_ADDR"] == "unit-worker-0.unit"
    assert env["MLFLOW_TRACKING_URI"] == "http://ml:5000", "the spec's server wins over the default"
    assert all(isinstance(value, str) for value in env.values())


# ------------------------------------------------------------------------------------------------- data


class WordTokenizer:
    """Just enough tokenizer for encode(): one id per word."""

    eos_token_id = 1

    def __call__(self, text, pair=None, truncation=False, max_length=None, add_special_tokens=True):
        ids = [2 + len(word) for word in (text + " " + (pair or "")).split()]
        return {"input_ids": ids[:max_length] if max_length else ids}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"text": "ok", "label": 1}\n{"label": 0}\n', "train.jsonl:2: missing field 'text'"),
        ("", "train.jsonl: empty"),
        ('{"text": "ok", "label": 1}\n\n{"text": "ok", "label": 5}\n', "train.jsonl:3: label 5 out of range"),
        ('{"text": "ok", "label": 1}\n{"text": oops}\n', "train.jsonl:2: not valid JSON"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, monkeypatch, content, problem):
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_text(content)
    job = make_job()
    with pytest.raises(DataError) as error:
        encode(read_records(job.spec.data.train, Path), job.spec, WordTokenizer(), None)
    assert problem in str(error.value)
    assert error.value.exit_code == EXIT_BAD_DATA and not is_retryable(EXIT_BAD_DATA)


def test_csv_lines_are_counted_from_the_header(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("train.csv").write_text("text,label\nfine,1\nfine,x\n")
    job = make_job(data={"train": {"source": "train.csv"}})
    with pytest.raises(DataError, match=r"train.csv:3: field 'label' must be an integer class"):
        encode(read_records(job.spec.data.train, Path), job.spec, WordTokenizer(), None)


def test_unreadable_image_is_named(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for cls in ("cat", "dog"):
        Path("images", cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(Path("images", cls, "ok.png"))
    Path("images/dog/broken.png").write_bytes(b"not a png")
    job = make_job(model={"source": "m", "task": "image-classification", "numLabels": 2}, data={"train": {"source": "images"}})
    records = read_records(job.spec.data.train, Path)
    assert [r.values["label"] for r in records] == ["cat", "dog", "dog"]
    with pytest.raises(DataError, match=r"images/dog/broken.png: unreadable image"):
        encode(records, job.spec, None, lambda images, return_tensors: {"pixel_values": [images]})


def test_causal_prompt_is_masked_from_the_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_text('{"q": "a bb", "a": "ccc"}\n')
    job = make_job(model={"source": "m", "task": "causal-lm"}, data={"train": {"source": "train.jsonl"}, "promptField": "q", "completionField": "a"})
    (example,) = encode(read_records(job.spec.data.train, Path), job.spec, WordTokenizer(), None)
    assert example == {"input_ids": [3, 4, 5, 1], "labels": [-100, -100, 5, 1]}


def test_rank_shards_of_a_global_batch_are_what_one_process_reads():
    two_ranks = Sharding(examples=50, micro_batch=4, world_size=2, seed=7)
    one_process = Sharding(examples=50, micro_batch=8, world_size=1, seed=7)
    seen = []
    for position in range(two_ranks.per_epoch * 2 + 1):  # across an epoch boundary
        shards = two_ranks.indices(position, 0) + two_ranks.indices(position, 1)
        assert shards == one_process.indices(position, 0)
        seen += shards
    assert len(set(seen[: two_ranks.per_epoch * 8])) == two_ranks.per_epoch * 8, "no repeats within an epoch"
    assert Sharding(50, 4, 2, 8).indices(0, 0) != two_ranks.indices(0, 0), "the seed changes the order"


def test_every_rank_gets_the_same_number_of_eval_batches():
    shards = [eval_batches(9, 4, 2, rank) for rank in (0, 1)]
    assert [len(s) for s in shards] == [2, 2]
    assert sorted(i for s in shards for batch in s for i in batch) == list(range(9))


# ----------------------------------------------------------------------------------- storage, checkpoints


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(str(tmp_path / "out"))
    server = request.getfixturevalue("s3_env")
    return open_storage(server.bucket("ckpt") + f"/{tmp_path.name}", server.endpoint)


LINEAGE = checkpoint.Lineage("lineage-a", "fingerprint", {}, resumable=True)


def write_checkpoint(storage, tmp_path: Path, step: int, manifest: bool = True, lineage: str = LINEAGE.id) -> None:
    folder = tmp_path / f"src-{step}"
    folder.mkdir()
    (folder / "state.pt").write_bytes(bytes([step]) * 100)
    prefix = f"job/checkpoints/{checkpoint.step_tag(step)}"
    files = describe(folder)
    storage.put_file(folder / "state.pt", f"{prefix}/state.pt")
    if manifest:
        record = {"files": files, "lineage": lineage, "worldSize": 1, "step": step}
        storage.write_bytes(f"{prefix}/manifest.json", json.dumps(record).encode())


def test_latest_complete_checkpoint_is_used(storage, tmp_path):
    for step in (5, 10):
        write_checkpoint(storage, tmp_path, step)
    tag, _ = checkpoint.fetch_latest(storage, "job", LINEAGE, tmp_path / "fetched", 1)
    assert tag == "step-00000010"
    assert (tmp_path / "fetched/step-00000010/state.pt").read_bytes() == bytes([10]) * 100


def test_checkpoint_without_manifest_is_skipped_with_a_warning(storage, tmp_path, caplog):
    write_checkpoint(storage, tmp_path, 5)
    write_checkpoint(storage, tmp_path, 10, manifest=False)
    with caplog.at_level(logging.WARNING):
        tag, _ = checkpoint.fetch_latest(storage, "job", LINEAGE, tmp_path / "fetched", 1)
    assert tag == "step-00000005"
    assert "step-00000010 has no manifest" in caplog.text


def test_truncated_checkpoint_file_is_skipped_with_a_warning(storage, tmp_path, caplog):
    write_checkpoint(storage, tmp_path, 5)
    write_checkpoint(storage, tmp_path, 10)
    (tmp_path / "short").write_bytes(bytes([10]) * 40)
    storage.put_file(tmp_path / "short", "job/checkpoints/step-00000010/state.pt")
    with caplog.at_level(logging.WARNING):
        tag, _ = checkpoint.fetch_latest(storage, "job", LINEAGE, tmp_path / "fetched", 1)
    assert tag == "step-00000005"
    assert "step-00000010 does not match its manifest" in caplog.text


def test_checkpoints_of_another_lineage_or_gang_size_are_never_resumed(storage, tmp_path, caplog):
    write_checkpoint(storage, tmp_path, 5)
    write_checkpoint(storage, tmp_path, 10, lineage="lineage-b")
    with caplog.at_level(logging.WARNING):
        tag, _ = checkpoint.fetch_latest(storage, "job", LINEAGE, tmp_path / "fetched", 1)
    assert tag == "step-00000005" and "step-00000010 belongs to another training" in caplog.text
    with pytest.raises(SpecError, match="written by 1 ranks but this run has 2"):
        checkpoint.fetch_latest(storage, "job", LINEAGE, tmp_path / "again", 2)


def test_a_lineage_is_claimed_once_and_a_different_one_refused_by_field(storage):
    fields = {"method.lora.r": 8, "training.seed": 1}
    first = checkpoint.claim_lineage(storage, "job", fields, "auto", owner="submission-1")
    again = checkpoint.claim_lineage(storage, "job", fields, "auto", owner="submission-2")
    assert (first.resumable, again.resumable, again.id) == (False, True, first.id)
    with pytest.raises(checkpoint.LineageMismatch, match=r"method.lora.r: 8 -> 16.*resume: never"):
        checkpoint.claim_lineage(storage, "job", {**fields, "method.lora.r": 16}, "auto", owner="submission-3")
    own = checkpoint.claim_lineage(storage, "job", fields, "never", owner="submission-1")
    assert own.id == first.id, "a restart of the very job that started the lineage keeps it"
    fresh = checkpoint.claim_lineage(storage, "job", {**fields, "method.lora.r": 16}, "never", owner="submission-4")
    assert fresh.id != first.id and not fresh.resumable


def test_adapter_is_published_with_a_verified_manifest(storage, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights" * 10)
    info = publish_adapter(storage, "job", adapter)
    manifest = json.loads(storage.read_bytes("job/adapter/manifest.json"))
    assert manifest["files"]["adapter_model.safetensors"]["size"] == 70 == info.bytes
    assert info.uri.endswith("job/adapter/") and len(info.sha256) == 64
    assert info.files == ["adapter_model.safetensors"]


# -------------------------------------------------------------------------------- tracking, progress, gang


def test_unreachable_mlflow_only_warns_once_naming_the_server(monkeypatch, caplog):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with caplog.at_level(logging.WARNING):
        tracker = Tracker(make_job(), "lineage-u", {"method.lora.r": 8}, enabled=True)
        tracker.log_metrics({"loss": 1.0}, 1)
        tracker.finish("FINISHED")
    assert tracker.run_id is None
    assert caplog.text.count("retrying in the background, training goes on") == 1 and url in caplog.text
    assert "None" not in tracker.describe() and url in tracker.describe()


def test_one_mlflow_run_per_lineage_is_found_again(mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    job = make_job(tracking={"experiment": "unit-resume"})
    params = {"training.learningRate": 0.0003, "method.lora.r": 8}
    first = Tracker(job, "lineage-1", params, enabled=True)
    first.log_metrics({"loss": 2.0}, 1)
    first.finish("FAILED")
    second = Tracker(job, "lineage-1", params, enabled=True)
    second.log_metrics({"loss": 1.0}, 2)
    second.finish("FINISHED")
    other = Tracker(job, "lineage-2", params, enabled=True)
    other.finish("FINISHED")
    assert first.run_id == second.run_id != other.run_id
    client = MlflowClient(mlflow_server)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and second.previous_status == "FAILED"
    assert run.data.params["training.learningRate"] == "0.0003" and run.data.tags["peftjob.name"] == "unit"
    assert [m.step for m in client.get_metric_history(first.run_id, "loss")] == [1, 2]
    assert flatten({"a": {"b": [1, 2]}}) == {"a.b": "[1, 2]"}


def start_tracker(barrier: Any, uri: str, name: str, results: Any) -> None:
    """One job's rank 0 starting its MLflow run the moment all the others do."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    job = make_job()
    job.metadata.name = name
    barrier.wait()
    tracker = Tracker(job, f"lineage-{name}", {}, enabled=True)
    tracker.finish("FINISHED")
    results.put((name, tracker.run_id))


def test_jobs_starting_together_on_a_new_sqlite_store_each_get_their_run(tmp_path):
    """Without the store lock, MLflow's schema migration raced in most rounds of six jobs here and left the
    database broken for every later run."""
    context = multiprocessing.get_context("fork")
    for round_ in range(2):
        uri = f"sqlite:///{tmp_path / f'mlflow-{round_}.db'}"
        barrier, results = context.Barrier(JOBS_AT_ONCE), context.Queue()
        starts = [context.Process(target=start_tracker, args=(barrier, uri, f"job{index}", results))
                  for index in range(JOBS_AT_ONCE)]
        for process in starts:
            process.start()
        runs = dict(results.get(timeout=120) for _ in starts)
        for process in starts:
            process.join()
        assert all(runs.values()) and len(set(runs.values())) == JOBS_AT_ONCE, runs


def test_progress_is_served_and_a_busy_port_only_warns(caplog):
    progress = ProgressServer(total_steps=10)
    port = progress.serve(free_port())
    progress.update(step=3, loss=0.5)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress") as response:
        assert json.load(response) == {"jobUid": None, "step": 3, "totalSteps": 10, "loss": 0.5, "throughput": None,
                                       "etaSeconds": None, "mlflow": None}
    with caplog.at_level(logging.WARNING):
        assert ProgressServer(10).serve(port) is None
    assert "progress endpoint disabled" in caplog.text
    assert ProgressServer(10).serve(0) is None, "port 0 disables the endpoint"
    progress.close()


def test_a_failing_rank_stops_the_gang_and_a_user_error_wins():
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    gang = [processes.start(sleeper, {}), processes.start([sys.executable, "-c", "raise SystemExit(3)"], {})]
    assert processes.supervise(gang) == 3
    assert gang[0].returncode == -15, "the healthy rank was stopped with SIGTERM"
    assert processes.gang_exit_code([143, 137]) == 143 and processes.gang_exit_code([0, 0]) == 0
    assert processes.exit_code(-9) == 137 and is_retryable(137)


def test_local_run_needs_no_torch():
    code = "import sys, peftjob_trainer.local_run, peftjob_trainer.api.deepspeed_config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_pruning_old_checkpoints_never_fails_the_job(storage, tmp_path, caplog, monkeypatch):
    """An S3 outage right after a checkpoint once killed the gang through pruning: housekeeping only warns."""
    for step in (5, 10, 15):
        write_checkpoint(storage, tmp_path, step)

    def outage(*_args, **_kwargs):
        raise ConnectionError("storage unreachable")

    monkeypatch.setattr(storage, "delete", outage)
    with caplog.at_level(logging.WARNING):
        checkpoint.prune(storage, "job", kept=1)
    assert "could not prune old checkpoints of job" in caplog.text and "storage unreachable" in caplog.text
