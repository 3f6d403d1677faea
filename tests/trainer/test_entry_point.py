"""How a rank ends, in this process: `run_rank` with the training replaced by what the test needs (a real
boto3 client failing against a closed port; a SIGTERM). The user's log gets one line, a debug file the rest."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest

from peftjob_trainer.__main__ import run_rank
from peftjob_trainer.local_run import free_port
from tests.trainer import tiny


@pytest.fixture
def rank(tmp_path, monkeypatch) -> str:
    """A valid job's config file, this process as rank 0 writing its result under `tmp_path`."""
    monkeypatch.setenv("PEFTJOB_RESULT_FILE", str(tmp_path / "result.json"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("PEFTJOB_DEBUG_LOG", raising=False)
    spec = {
        "model": {"source": "m", "task": "sequence-classification", "numLabels": 2},
        "method": {"lora": {}},
        "data": {"train": {"source": "train.jsonl"}},
    }
    return str(tiny.job("entry", spec, tmp_path / "job.yaml"))


def unreachable_s3(_job) -> None:
    """Training whose storage is a closed port: botocore's EndpointConnectionError, chained from urllib3's."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    client.list_buckets()


def test_an_infrastructure_failure_is_one_line_in_the_log_and_a_traceback_in_the_debug_file(
    rank, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr("peftjob_trainer.loop.train", unreachable_s3)
    caplog.set_level(logging.INFO)
    assert run_rank(rank) == 200
    (line,) = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert line.startswith("training failed (retryable, exit 200): EndpointConnectionError: Could not connect")
    assert "Traceback" not in caplog.text and "urllib3" not in caplog.text, caplog.text
    debug_file = tmp_path / "result.json.rank0.traceback"
    assert str(debug_file) in line
    assert "Traceback" in debug_file.read_text() and "NewConnectionError" in debug_file.read_text()
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["exitCode"] == 200 and result["error"].startswith("EndpointConnectionError: Could not connect")


def test_the_debug_file_can_be_named(rank, tmp_path, monkeypatch):
    monkeypatch.setattr("peftjob_trainer.loop.train", unreachable_s3)
    monkeypatch.setenv("PEFTJOB_DEBUG_LOG", str(tmp_path / "logs" / "debug.log"))
    assert run_rank(rank) == 200
    assert "EndpointConnectionError" in (tmp_path / "logs" / "debug.log").read_text()


def test_sigterm_during_training_unwinds_it_and_exits_143(rank, tmp_path, monkeypatch):
    unwound = []

    def terminated(_job) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line runs
            raise AssertionError("SIGTERM did not interrupt training")
        except KeyboardInterrupt:
            unwound.append(True)
            raise

    def unhandled(_signum, _frame) -> None:
        """In place of SIG_DFL while the test runs: a rank that ignored SIGTERM must fail this test, not end pytest."""

    monkeypatch.setattr("peftjob_trainer.loop.train", terminated)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        code = run_rank(rank)
        assert signal.getsignal(signal.SIGTERM) is unhandled, "the handler before run_rank is restored"
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143 and unwound, "training saw KeyboardInterrupt (its cleanup ran)"
    assert json.loads((tmp_path / "result.json").read_text())["exitCode"] == 143
