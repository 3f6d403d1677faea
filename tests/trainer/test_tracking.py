"""Tracking never costs training and loses nothing: MLflow calls leave the loop at once and reach the server
in order once it is back, whether it went down mid-training or was down when the run was to open.

A real `mlflow server` (sqlite store) stopped and started again on the same port and store.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from peftjob_trainer import tracking
from peftjob_trainer.api import load_object
from peftjob_trainer.local_run import free_port
from peftjob_trainer.tracking import Tracker
from tests.conftest import start_mlflow, stop_mlflow

pytestmark = pytest.mark.slow
OUTAGE_CALLS = 20


def job(experiment: str):
    return load_object({"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "metadata": {"name": "outage"},
                        "spec": {"model": {"source": "m"}, "method": {"lora": {}}, "data": {"train": {"source": "t"}},
                                 "tracking": {"experiment": experiment}}})


def history(url: str, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return [metric.step for metric in MlflowClient(url).get_metric_history(run_id, "loss")]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setattr(tracking, "BACKOFF_SECONDS", (0.2, 0.5, 1.0))
    return tmp_path, port, url


def test_an_outage_mid_training_neither_blocks_the_loop_nor_loses_a_metric(server):
    root, port, url = server
    process = start_mlflow(root, port)
    tracker = Tracker(job("outage-mid"), "lineage-mid", {"method.lora.r": 4}, enabled=True)
    for step in range(1, 11):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    deadline = time.monotonic() + 60
    while (tracker.run_id is None or len(history(url, tracker.run_id)) < 10) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop_mlflow(process)
    started = time.monotonic()
    for step in range(11, 11 + OUTAGE_CALLS):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    queued_in = time.monotonic() - started
    process = start_mlflow(root, port)
    try:
        for step in range(11 + OUTAGE_CALLS, 41):
            tracker.log_metrics({"loss": 1.0 / step}, step)
        tracker.finish("FINISHED")
        assert queued_in < 1.0, f"{OUTAGE_CALLS} calls during the outage took {queued_in:.1f} s"
        assert history(url, tracker.run_id) == list(range(1, 41))
    finally:
        stop_mlflow(process)


def test_a_server_down_when_the_run_opens_still_gets_the_run_and_every_metric(server):
    root, port, url = server
    tracker = Tracker(job("outage-open"), "lineage-open", {"method.lora.r": 4}, enabled=True)
    for step in range(1, 6):
        tracker.log_metrics({"loss": 1.0 / step}, step)
    process = start_mlflow(root, port)
    try:
        tracker.finish("FINISHED")
        assert tracker.run_id is not None and history(url, tracker.run_id) == [1, 2, 3, 4, 5]
    finally:
        stop_mlflow(process)
