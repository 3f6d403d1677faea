"""The user's mistakes end a job at once with the contract's user exit code (never retried) and one message
naming the field and the reason; the store's trouble is waited out, and past the budget is infrastructure.

End to end through `peftjob run` (one rank, DeepSpeed on CPU) where the behaviour is the whole job's; the
storage layer against a real moto S3 server on loopback. The launches start together, because start-up
dominates and each fails before anything trains.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from peftjob_trainer.api.contract import EXIT_INVALID_SPEC, EXIT_OUTPUT, EXIT_UNSUPPORTED_MODEL, is_retryable
from peftjob_trainer.errors import ModelError, OutputError, SpecError, UserError
from peftjob_trainer.local_run import free_port
from peftjob_trainer.storage import RETRY_SECONDS_ENV, StorageUnavailable, open_storage
from tests.trainer import tiny
from tests.trainer.local_job import finish, launch

LORA = {"lora": {"r": 4, "targetModules": ["query", "value"]}}


def spec(**overrides: Any) -> dict[str, Any]:
    """A tiny BERT sentiment job that would train 2 steps on one rank."""
    base = {
        "model": {"source": "model", "task": "sequence-classification", "numLabels": 2},
        "method": LORA,
        "data": {"train": {"source": "train.jsonl"}, "maxLength": 16},
        "training": {"maxSteps": 2, "microBatchSize": 4, "logInterval": 1, "checkpointInterval": 1,
                     "precision": "fp32"},
        "deepspeed": {"zeroStage": 2},
        "workers": {"replicas": 1, "processesPerWorker": 1},
        "output": {"uri": "out"},
    }
    return {**base, **overrides}


def cpu_runs_fp16() -> bool:
    """Whether this machine's DeepSpeed accelerator trains fp16 (a GPU, or a CPU whose oneDNN has fp16)."""
    import torch

    if torch.cuda.is_available():
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


# (job name, spec, expected exit code, words the output must hold)
REFUSED: dict[str, tuple[dict[str, Any], int, tuple[str, ...]]] = {
    "unwritable-output": (spec(output={"uri": "blocker/out"}), EXIT_OUTPUT,
                          ("output.uri: ", "blocker/out: ", "blocker is a file, not a folder")),
    "no-tokenizer": (spec(model={"source": "no-tokenizer", "task": "sequence-classification", "numLabels": 2}),
                     EXIT_UNSUPPORTED_MODEL, ("model.source: ", "no-tokenizer: no tokenizer files", "tokenizer.json")),
    "too-long": (spec(data={"train": {"source": "train.jsonl"}, "maxLength": 100}), EXIT_INVALID_SPEC,
                 ("data.maxLength: 100 tokens exceed the 64 positions", "at most 64")),
    "missing-model": (spec(model={"source": "./no-such-model", "task": "sequence-classification", "numLabels": 2}),
                      EXIT_UNSUPPORTED_MODEL, ("model.source: ", "no-such-model: no such folder",)),
    "causal-on-encoder": (spec(model={"source": "model", "task": "causal-lm"}), EXIT_UNSUPPORTED_MODEL,
                          ("model.task: causal-lm needs a decoder", "bert")),
    "no-such-target": (spec(method={"lora": {"targetModules": ["nope"]}}), EXIT_UNSUPPORTED_MODEL,
                       ("method.lora.targetModules: ['nope'] matches no module",)),
}
if not cpu_runs_fp16():
    REFUSED["fp16-here"] = (spec(training={"maxSteps": 2, "precision": "fp16"}), EXIT_INVALID_SPEC,
                            ("training.precision: fp16 is not supported on this machine's cpu accelerator",))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The tiny BERT, a copy of it without tokenizer files, data, and a regular file where a folder would go."""
    root = tmp_path_factory.mktemp("user-errors")
    tiny.bert_classifier(root / "model")
    (root / "no-tokenizer").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "model" / name, root / "no-tokenizer" / name)
    tiny.sentiment(root / "train.jsonl", 16, seed=1)
    (root / "blocker").write_text("a file, not a folder\n")
    return root


@pytest.fixture(scope="module")
def refused(workdir: Path) -> dict[str, tuple[int, str]]:
    launches = {name: launch(workdir, name, job_spec, {}) for name, (job_spec, _, _) in REFUSED.items()}
    return {name: finish(process) for name, process in launches.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFUSED))
def test_a_users_mistake_stops_the_job_before_training_with_its_exit_code_and_one_message(refused, name) -> None:
    code, output = refused[name]
    _, exit_code, words = REFUSED[name]
    assert code == exit_code, output[-3000:]
    assert not is_retryable(code)
    for word in words:
        assert word in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "step 1/" not in output, "nothing may train before the mistake is found"


# ------------------------------------------------------------------------------ error types decide codes


def test_the_methods_user_errors_carry_user_exit_codes() -> None:
    from peftjob_trainer.methods.families import UnsupportedModel
    from peftjob_trainer.methods.params import StateMismatch

    assert issubclass(UnsupportedModel, ModelError) and issubclass(StateMismatch, ModelError)
    assert UnsupportedModel("x").exit_code == StateMismatch("x").exit_code == EXIT_UNSUPPORTED_MODEL
    assert SpecError("x").exit_code == EXIT_INVALID_SPEC and OutputError("x").exit_code == EXIT_OUTPUT


def test_an_init_text_with_no_tokens_is_a_spec_error(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from peftjob_trainer.methods.prompt_tuning import text_token_ids

    tiny.tokenizer(tmp_path)
    with pytest.raises(SpecError, match="promptTuning.initText: tokenizes to no tokens"):
        text_token_ids(AutoTokenizer.from_pretrained(tmp_path), "   ", 4)


# --------------------------------------------------------------------------------------------- storage


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RETRY_SECONDS_ENV, "1")


def test_an_upload_into_a_deleted_bucket_is_an_output_error_naming_the_uri_and_the_code(s3_env, tmp_path) -> None:
    storage = open_storage(s3_env.bucket("soon-gone") + "/job", s3_env.endpoint)
    client = s3_env.client()
    client.delete_bucket(Bucket="soon-gone")
    (tmp_path / "state.pt").write_bytes(b"weights")
    with pytest.raises(OutputError, match=r"^s3://soon-gone/job: NoSuchBucket: .*\(PutObject\)") as refused:
        storage.put_file(tmp_path / "state.pt", "checkpoints/step-1/state.pt")
    assert refused.value.exit_code == EXIT_OUTPUT


def test_refused_credentials_are_an_output_error(s3_env, monkeypatch) -> None:
    uri = s3_env.bucket("guarded") + "/job"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(OutputError, match="s3://guarded/job: no S3 credentials"):
        open_storage(uri, s3_env.endpoint).write_bytes("manifest.json", b"{}")


def test_an_unreachable_endpoint_is_one_readable_retryable_error(s3_env, quick_retries) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    storage = open_storage("s3://bucket/prefix", endpoint)
    with pytest.raises(StorageUnavailable) as unreachable:
        storage.write_bytes("manifest.json", b"{}")
    message = str(unreachable.value)
    assert message.startswith(f"s3://bucket/prefix: endpoint {endpoint} unreachable after ")
    assert "attempts over" in message and message.endswith("(EndpointConnectionError)")
    assert not isinstance(unreachable.value, UserError), "the store's trouble is infrastructure: retried"
    assert unreachable.value.__cause__ is None and unreachable.value.__suppress_context__


class _FirstRetry(logging.Handler):
    """Sets `seen` when the storage logs its first retry."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.seen.set()


def test_a_checkpoint_write_survives_an_outage_of_the_store(s3_env, monkeypatch) -> None:
    """The server goes away, a write starts and is retried, the server comes back on the same port: the write
    lands. (The budget is the env override's 60 s; the outage lasts until the first retry is logged.)"""
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv(RETRY_SECONDS_ENV, "60")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    own = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    own.create_bucket(Bucket="outage")
    storage = open_storage("s3://outage/job", endpoint)
    server.stop()

    watcher = _FirstRetry()
    logger = logging.getLogger("peftjob_trainer.storage")
    logger.addHandler(watcher)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            storage.write_bytes("checkpoints/step-1/manifest.json", b'{"step": 1}')
        except BaseException as error:  # noqa: BLE001 (handed to the test thread)
            failures.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert watcher.seen.wait(timeout=30), "the write was never retried"
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        writer.join(timeout=90)
    finally:
        logger.removeHandler(watcher)
    try:
        assert not writer.is_alive() and not failures, failures
        body = own.get_object(Bucket="outage", Key="job/checkpoints/step-1/manifest.json")["Body"].read()
        assert body == b'{"step": 1}'
    finally:
        server.stop()
