"""Stopping a job stops all of it: Ctrl-C or SIGTERM reach every rank of every worker, nothing keeps training
behind the user's back, and a rerun resumes from the last checkpoint. Real `peftjob run` and pod launcher
processes, a tiny BERT, DeepSpeed on CPU.

Each job checkpoints every step and is signalled once its first checkpoint is complete, so the signal always
lands mid-training; the job is long enough that ranks left running could not finish before they are looked for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from peftjob_trainer.local_run import free_port
from peftjob_trainer.processes import STOP_GRACE_SECONDS
from tests.trainer import tiny
from tests.trainer.local_job import LAUNCH_TIMEOUT, RUN

pytestmark = pytest.mark.slow
STEPS = 40
REAPED_SECONDS = 5.0
"""Time for the system to reap processes that are already dead when the job's supervisor exits."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signals")
    tiny.bert_classifier(root / "model", hidden=32)
    tiny.sentiment(root / "train.jsonl", 64, seed=1)
    return root


def spec(replicas: int, processes: int) -> dict[str, Any]:
    return {
        "model": {"source": "model", "task": "sequence-classification", "numLabels": 2},
        "method": {"lora": {"r": 2, "targetModules": ["query", "value"]}},
        "data": {"train": {"source": "train.jsonl"}, "maxLength": 16},
        "training": {"maxSteps": STEPS, "microBatchSize": 2, "logInterval": 1, "checkpointInterval": 1, "seed": 1},
        "deepspeed": {"zeroStage": 3},
        "workers": {"replicas": replicas, "processesPerWorker": processes},
        # Unreachable: tracking costs a warning, not a server (nor an sqlite schema migration) per launch.
        "tracking": {"mlflowTrackingUri": f"http://127.0.0.1:{free_port()}"},
        "output": {"uri": "out"},
    }


def start(workdir: Path, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """`command` in `workdir` as the leader of its own process group (as a shell runs a foreground job)."""
    with log.open("w") as output:  # a file, not a pipe: nobody has to drain it while the test waits
        return subprocess.Popen(
            command, cwd=workdir, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT,
            text=True, process_group=0,
        )


def start_job(workdir: Path, name: str, job_spec: dict[str, Any]) -> subprocess.Popen[str]:
    """`peftjob run NAME.yaml`, logging to NAME.log."""
    path = tiny.job(name, job_spec, workdir / f"{name}.yaml")
    return start(workdir, [sys.executable, "-c", RUN, str(path)], {}, workdir / f"{name}.log")


def wait_for_first_checkpoint(process: subprocess.Popen[str], output: Path) -> None:
    """Until a checkpoint of the job is complete (its manifest is written last): it has trained a step."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not list(output.glob("checkpoints/*/manifest.json")):
        assert process.poll() is None, f"the job ended before its first checkpoint: {process.returncode}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def stop_and_collect(process: subprocess.Popen[str], output: Path, target: str, signum: int) -> tuple[int, list]:
    """Signal a job mid-training (`target`: "group" for its whole process group, "pid" for the process alone);
    returns its exit code and every process of the job still alive once the system had time to reap them."""
    wait_for_first_checkpoint(process, output)
    descendants = psutil.Process(process.pid).children(recursive=True)
    assert descendants, "the job's processes"
    if target == "group":
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
    try:
        code = process.wait(timeout=STOP_GRACE_SECONDS + REAPED_SECONDS)
    finally:
        _, alive = psutil.wait_procs(descendants, timeout=REAPED_SECONDS)
        for survivor in alive:  # leave nothing running, whatever the outcome
            survivor.kill()
        process.kill()
    return code, alive


def result(workdir: Path, name: str) -> dict[str, Any]:
    return json.loads((workdir / ".peftjob" / name / "result.json").read_text())


@pytest.fixture(scope="module")
def ctrl_c_of_two_ranks(workdir) -> tuple[int, list, str]:
    """Ctrl-C (SIGINT to the foreground process group) of one worker with two ranks."""
    process = start_job(workdir, "ctrl-c-2-ranks", spec(replicas=1, processes=2))
    code, alive = stop_and_collect(process, workdir / "out" / "ctrl-c-2-ranks", "group", signal.SIGINT)
    return code, alive, (workdir / "ctrl-c-2-ranks.log").read_text()


def test_ctrl_c_stops_both_ranks_of_a_worker(workdir, ctrl_c_of_two_ranks):
    code, alive, output = ctrl_c_of_two_ranks
    assert not alive, f"still running after Ctrl-C: {alive}\n{output[-3000:]}"
    assert code == 130 and "stopped all ranks" in output, output[-3000:]
    assert result(workdir, "ctrl-c-2-ranks")["exitCode"] == 130, "the ranks stopped themselves, not a SIGKILL"


def test_a_rerun_after_ctrl_c_resumes_from_the_last_checkpoint(workdir, ctrl_c_of_two_ranks):
    name = "ctrl-c-2-ranks"
    code = start_job(workdir, name, spec(replicas=1, processes=2)).wait(timeout=LAUNCH_TIMEOUT)
    output = (workdir / f"{name}.log").read_text()
    assert code == 0 and "resumed from checkpoint" in output, output[-3000:]
    outcome = result(workdir, name)
    assert outcome["steps"] == STEPS and 1 <= outcome["resumedFromStep"] < STEPS


def test_ctrl_c_stops_every_worker(workdir):
    name = "ctrl-c-2-workers"
    process = start_job(workdir, name, spec(replicas=2, processes=1))
    code, alive = stop_and_collect(process, workdir / "out" / name, "group", signal.SIGINT)
    output = (workdir / f"{name}.log").read_text()
    assert not alive, f"still running after Ctrl-C: {alive}\n{output[-3000:]}"
    assert code == 130 and "stopped all ranks" in output, output[-3000:]
    assert result(workdir, name)["exitCode"] == 130, "the ranks stopped themselves, not a SIGKILL"


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_cli_alone_stops_every_rank(workdir, signum, expected):
    name = f"cli-{signal.Signals(signum).name.lower()}"
    process = start_job(workdir, name, spec(replicas=1, processes=2))
    code, alive = stop_and_collect(process, workdir / "out" / name, "pid", signum)
    output = (workdir / f"{name}.log").read_text()
    assert not alive, f"still running after {signal.Signals(signum).name} of the CLI: {alive}\n{output[-3000:]}"
    assert code == expected and "stopped all ranks" in output, output[-3000:]


def test_sigterm_to_the_pod_launcher_stops_its_ranks_and_exits_retryable(workdir):
    """The pod's entry point starting two ranks itself, in the environment the operator renders; the kubelet
    sends SIGTERM to it alone."""
    from peftjob_trainer.api import load_file
    from peftjob_trainer.api.contract import worker_environment

    name = "pod-launcher"
    job = load_file(tiny.job(name, spec(replicas=1, processes=2), workdir / f"{name}.yaml"))
    config = workdir / f"{name}.json"
    config.write_text(job.model_dump_json(by_alias=True, exclude_none=True))
    env = worker_environment(
        job, 0, "127.0.0.1", free_port(), config_path=str(config), result_file=str(workdir / f"{name}.result.json"),
        progress_port=0,
    )
    process = start(workdir, [sys.executable, "-P", "-m", "peftjob_trainer"], env, workdir / f"{name}.log")
    code, alive = stop_and_collect(process, workdir / "out" / name, "pid", signal.SIGTERM)
    output = (workdir / f"{name}.log").read_text()
    assert not alive, f"ranks still running after SIGTERM of the launcher: {alive}\n{output[-3000:]}"
    assert code >= 128, f"expected a retryable exit code, got {code}\n{output[-3000:]}"
