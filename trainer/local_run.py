"""`peftjob run FILE`: the PEFTJob on this machine, as the pods would run it.

No torch here: this process only starts `workers.replicas` launchers (`python -m peftjob_trainer`), each
with exactly the environment the operator renders into a pod (`contract.worker_environment`), rendezvous
on 127.0.0.1 and a free port. Relative paths in the job are relative to the YAML file; the state folder
(.peftjob/) and the default tracking store (an embedded sqlite MLflow store) are in the working directory.
Ctrl-C (or SIGTERM) stops every rank of every worker; running again resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

from . import processes
from .api import InvalidSpec, load_file
from .api.result import TrainerResult
from .api.contract import (
    ENV_SUBMISSION,
    EXIT_INTERRUPTED,
    EXIT_INVALID_SPEC,
    EXIT_OK,
    EXIT_TERMINATED,
    worker_environment,
)
from .api.paths import resolve_local_paths
from .storage import S3_PREFIX

STATE_DIR = ".peftjob"


def free_port() -> int:
    """A free port on loopback (rendezvous, test servers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def yaml_folder(path: str) -> Path:
    """The folder of the YAML file, relative to the working directory when it lies within it, so that messages
    name files the way the user would (`data.jsonl`, `sub/data.jsonl`); the ranks share this working directory."""
    folder = Path(path).absolute().parent
    try:
        return folder.relative_to(Path.cwd())
    except ValueError:
        return folder


def main(path: str) -> int:
    """Run the PEFTJob in `path` locally; returns the gang's exit code (the contract's)."""
    try:
        job = load_file(path)
    except InvalidSpec as invalid:
        print(f"{path}: invalid", file=sys.stderr)
        for problem in invalid.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    job = resolve_local_paths(job, yaml_folder(path))
    spec, name = job.spec, job.metadata.name
    state = Path.cwd() / STATE_DIR / name
    state.mkdir(parents=True, exist_ok=True)
    config = state / "config.json"
    config.write_text(json.dumps(job.model_dump(mode="json", by_alias=True, exclude_none=True), indent=1))
    result_file = state / "result.json"
    result_file.unlink(missing_ok=True)
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    port = free_port()
    submission = uuid.uuid4().hex  # what a job's uid is on Kubernetes: `training.resume: never` starts over once
    environments = [
        {
            **os.environ,
            ENV_SUBMISSION: submission,
            **{var.name: var.value for var in spec.workers.env if var.value is not None},
            **worker_environment(
                job, node_rank, "127.0.0.1", port,
                config_path=str(config), result_file=str(result_file), tracking_uri=tracking,
            ),
        }
        for node_rank in range(spec.workers.replicas)
    ]
    with processes.stop_requests() as requests:  # this process outlives the ranks, so it can stop them
        # -P: the working directory (a checkout holds operator/) must not shadow the standard library.
        launchers = [processes.start([sys.executable, "-P", "-m", "peftjob_trainer"], env) for env in environments]
        world = spec.workers.world_size
        print(f"peftjob: {name}: {spec.workers.replicas} worker(s) x {spec.workers.processes_per_worker} rank(s) = {world}")
        code = processes.supervise(launchers, requests)
    if requests:  # every launcher has exited, after its ranks, or was killed with its process group
        print("\npeftjob: stopped all ranks; run again to resume from the last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED if requests[0] == signal.SIGINT else EXIT_TERMINATED
    summarise(result_file, spec.output.uri, spec.tracking.mlflow_tracking_uri or tracking, code)
    return code


def summarise(result_file: Path, output_uri: str, tracking: str, code: int) -> None:
    """Where the adapter and the MLflow run are, and how to look at them."""
    result = TrainerResult.model_validate_json(result_file.read_text()) if result_file.is_file() else TrainerResult()
    if code != EXIT_OK:
        print(f"peftjob: failed with exit code {code}: {result.error or 'see the log above'}", file=sys.stderr)
        return
    print(f"peftjob: adapter: {result.artifact_uri} (sha256 {result.sha256}, {result.bytes} bytes)")
    before, after = result.initial_metrics, result.metrics
    if "eval_accuracy" in before and "eval_accuracy" in after:
        print(f"peftjob: eval accuracy {before['eval_accuracy']:.3f} before training -> {after['eval_accuracy']:.3f} after")
    print(f"peftjob: final metrics: {json.dumps(after)}")
    if result.mlflow_run_id:
        print(f"peftjob: MLflow run {result.mlflow_run_id} in {tracking}")
    else:
        print(f"peftjob: no MLflow run was recorded in {tracking} (see the MLflow warnings above)")
    if tracking.startswith("sqlite:"):
        print(f"peftjob: open the UI with: mlflow ui --backend-store-uri {tracking}")
    if not output_uri.startswith(S3_PREFIX):
        print(f"peftjob: output folder: {Path(output_uri).resolve()}")
