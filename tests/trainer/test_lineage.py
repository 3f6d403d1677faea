"""A job's output belongs to one training lineage: a rerun after an edit never mixes two trainings, starting
over is an explicit choice, and each lineage has its own MLflow run, closed with the truth.

Real `peftjob run` launches on a tiny BERT with the embedded sqlite MLflow store of their work folder.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.trainer import tiny
from tests.trainer.local_job import LAUNCH_TIMEOUT, finish, launch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tiny.sentiment_folder(tmp_path_factory.mktemp("lineage"), 48, 16)


def lora_job(**training: Any) -> dict[str, Any]:
    return {
        "model": {"source": "model", "task": "sequence-classification", "numLabels": 2},
        "method": {"lora": {"r": 4, "alpha": 8, "targetModules": ["query", "value"]}},
        "data": {"train": {"source": "train.jsonl"}, "eval": {"source": "eval.jsonl"}, "maxLength": 16},
        "training": {"maxSteps": 4, "microBatchSize": 4, "logInterval": 1, "checkpointInterval": 2, **training},
        "deepspeed": {"zeroStage": 0},
        "output": {"uri": "out"},
    }


def edited(spec: dict[str, Any], section: str, **values: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    target = spec["method"]["lora"] if section == "lora" else spec[section]
    target.update(values)
    return spec


def runs(workdir: Path, name: str) -> list[Any]:
    """The job's MLflow runs in the work folder's embedded store, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("peftjob")
    found = client.search_runs([experiment.experiment_id], f"tags.`peftjob.name` = '{name}'")
    return sorted(found, key=lambda run: run.info.start_time)


def result(workdir: Path, name: str) -> dict[str, Any]:
    return json.loads((workdir / ".peftjob" / name / "result.json").read_text())


def test_an_edited_rerun_is_refused_naming_what_differs_and_starting_over_is_explicit(workdir):
    first = lora_job()
    code, output = finish(launch(workdir, "edit", first, {}))
    assert code == 0, output[-3000:]
    (finished,) = runs(workdir, "edit")
    assert finished.info.status == "FINISHED" and finished.data.params["method.lora.alpha"] == "8.0"

    # A change of shapes (r) and one that keeps them (alpha): both a clear spec error, nothing trained or mixed.
    for section, change, named in (("lora", {"r": 8}, "method.lora.r: 4 -> 8"),
                                   ("lora", {"alpha": 16}, "method.lora.alpha: 8.0 -> 16.0"),
                                   ("training", {"learningRate": 0.01}, "training.learningRate: 0.0003 -> 0.01")):
        code, output = finish(launch(workdir, "edit", edited(first, section, **change), {}))
        assert code == 2, output[-3000:]
        assert named in output and "metadata.name" in output and "resume: never" in output
        assert "Traceback" not in output and "resumed from" not in output
    assert [run.info.status for run in runs(workdir, "edit")] == ["FINISHED"], "a refused rerun leaves the run be"

    # Extending a finished job is the same lineage: it resumes and continues its run.
    code, output = finish(launch(workdir, "edit", edited(first, "training", maxSteps=6), {}))
    assert code == 0, output[-3000:]
    assert "resumed from checkpoint step-00000004" in output
    assert [run.info.run_id for run in runs(workdir, "edit")] == [finished.info.run_id]

    # Starting over is an opt-in: a new lineage, trained from step 0, a new run with its own params and name.
    over = edited(edited(first, "lora", alpha=16), "training", resume="never")
    over["tracking"] = {"runName": "alpha-16"}
    code, output = finish(launch(workdir, "edit", over, {}))
    assert code == 0, output[-3000:]
    assert "resumed from" not in output and "step 0/4 (before training)" in output
    old, new = runs(workdir, "edit")
    assert old.info.status == new.info.status == "FINISHED"
    assert (new.data.params["method.lora.alpha"], new.info.run_name) == ("16.0", "alpha-16")
    adapter_config = json.loads((workdir / "out/edit/adapter/adapter_config.json").read_text())
    assert adapter_config["lora_alpha"] == 16.0


def test_deleting_the_output_starts_a_new_lineage_with_a_new_run(workdir):
    job = lora_job()
    code, output = finish(launch(workdir, "fresh", job, {}))
    assert code == 0, output[-3000:]
    shutil.rmtree(workdir / "out" / "fresh")
    job["tracking"] = {"runName": "second-try"}
    code, output = finish(launch(workdir, "fresh", job, {}))
    assert code == 0, output[-3000:]
    assert "resumed from" not in output
    first, second = runs(workdir, "fresh")
    assert first.info.run_id != second.info.run_id and second.info.run_name == "second-try"
    assert [m.step for m in _history(workdir, second.info.run_id, "loss")] == [1, 2, 3, 4], "no metrics twice"


def _history(workdir: Path, run_id: str, key: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_metric_history(run_id, key)


def test_a_run_that_fails_mid_training_ends_failed_not_running(workdir):
    """The output turns unusable after training started (its checkpoints folder becomes a file): the job
    fails, and its MLflow run says FAILED."""
    job = lora_job(maxSteps=40, checkpointInterval=0)
    process = launch(workdir, "broken", job, {})
    record = workdir / "out" / "broken" / "lineage.json"
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not record.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    (workdir / "out" / "broken" / "checkpoints").write_text("not a folder")
    code, output = finish(process)
    assert code != 0, output[-3000:]
    (run,) = runs(workdir, "broken")
    assert run.info.status == "FAILED"


def test_ctrl_c_ends_the_run_killed_and_the_rerun_continues_it(workdir):
    job = lora_job(maxSteps=40)
    process = launch(workdir, "stopped", job, {})
    manifest = workdir / "out" / "stopped" / "checkpoints" / "step-00000002" / "manifest.json"
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not manifest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # as Ctrl-C reaches `peftjob run` (test_signals: the whole group too)
    code, output = finish(process)
    assert code == 130, output[-3000:]
    (run,) = runs(workdir, "stopped")
    assert run.info.status == "KILLED"
    code, output = finish(launch(workdir, "stopped", job, {}))
    assert code == 0 and "resumed from checkpoint" in output, output[-3000:]
    (run,) = runs(workdir, "stopped")
    assert run.info.status == "FINISHED"
