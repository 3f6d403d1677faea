"""The contract between the operator (and `peftjob run`) and the trainer entry point, in one place.

The operator renders pods against these names; the trainer reads them; `peftjob run` sets exactly the same
environment for local processes. Pure constants: importable without torch.

Files
  CONFIG_PATH            the PEFTJob (apiVersion, kind, metadata, spec) as JSON, from the job's ConfigMap
  DEEPSPEED_CONFIG_PATH  the generated DeepSpeed config (informational: the trainer regenerates it from the spec)
  RESULT_PATH            where the trainer writes its result JSON (the pod's termination message)

Environment (one pod = one node; NPROC_PER_NODE ranks per pod)
  MASTER_ADDR, MASTER_PORT   rendezvous: worker 0's stable DNS name and port
  NNODES, NODE_RANK          pods in the gang and this pod's index
  NPROC_PER_NODE             ranks in this pod
  WORLD_SIZE                 NNODES * NPROC_PER_NODE
  PET_*                      the same values under torchrun's names (PyTorchJob compatible)
  RANK, LOCAL_RANK           set by the entry point for each rank it starts (or by torchrun)
  PEFTJOB_CONFIG, PEFTJOB_RESULT_FILE, PEFTJOB_PROGRESS_PORT, PEFTJOB_NAMESPACE, PEFTJOB_NAME, PEFTJOB_UID
  PEFTJOB_SUBMISSION         `peftjob run` only: one id per invocation (the uid's stand-in)
  MLFLOW_TRACKING_URI        when the spec or the operator names a server
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   from the output's credentials Secret, never inline

Exit codes (the error's type decides the code; the code decides what the operator does)
  0        done: the adapter is uploaded and verified
  1-127    the user's to fix, never retried: 1 other, 2 invalid spec, 3 bad data, 4 model (missing,
           unsupported, no tokenizer), 5 output or storage (unwritable, no bucket, access denied)
  128-255  infrastructure (signals, lost peers, storage unreachable after retries): the gang is restarted;
           130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 200 failure the trainer detected itself
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import PEFTJob

CONFIG_DIR = "/etc/peftjob"
CONFIG_FILE = "config.json"
DEEPSPEED_CONFIG_FILE = "deepspeed.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
DEEPSPEED_CONFIG_PATH = f"{CONFIG_DIR}/{DEEPSPEED_CONFIG_FILE}"
RESULT_PATH = "/dev/termination-log"

MASTER_PORT = 29500
PROGRESS_PORT = 29400
PROGRESS_PATH = "/progress"

ENV_CONFIG = "PEFTJOB_CONFIG"
ENV_RESULT_FILE = "PEFTJOB_RESULT_FILE"
ENV_PROGRESS_PORT = "PEFTJOB_PROGRESS_PORT"
ENV_NAMESPACE = "PEFTJOB_NAMESPACE"
ENV_NAME = "PEFTJOB_NAME"
ENV_UID = "PEFTJOB_UID"
ENV_SUBMISSION = "PEFTJOB_SUBMISSION"
"""Set by `peftjob run`, one value per invocation: what the job's uid is on Kubernetes (training.resume: never
starts over once per submission, and never throws away a restarted gang's own work)."""

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_INVALID_SPEC = 2
EXIT_BAD_DATA = 3
EXIT_UNSUPPORTED_MODEL = 4
EXIT_OUTPUT = 5
"""The output or storage configuration: an unwritable folder, a missing bucket, refused credentials."""
EXIT_INTERRUPTED = 130
"""Stopped by SIGINT (Ctrl-C): 128 + 2, as a shell reports it."""
EXIT_TERMINATED = 143
"""Stopped by SIGTERM (a pod's deletion or eviction, `peftjob run` stopping its ranks): 128 + 15."""
EXIT_RETRYABLE = 200
"""Infrastructure trouble the trainer detected itself (e.g. storage unreachable after retries)."""


def is_retryable(exit_code: int) -> bool:
    """Exit codes 1-127 are the user's to fix; anything from 128 on is worth restarting the gang for."""
    return exit_code >= 128


def worker_environment(
    job: PEFTJob,
    node_rank: int,
    master_addr: str,
    master_port: int = MASTER_PORT,
    *,
    config_path: str = CONFIG_PATH,
    result_file: str = RESULT_PATH,
    progress_port: int = PROGRESS_PORT,
    tracking_uri: str | None = None,
) -> dict[str, str]:
    """The environment of worker `node_rank`: the operator renders it into pods, `peftjob run` into processes.

    One function for both, so a local run exercises exactly the pod path. `tracking_uri` is the operator's
    (or the local run's) default MLflow server, used when the spec names none. Credentials are not here:
    the operator adds them by reference (secretKeyRef), locally they come from the caller's environment.
    """
    spec = job.spec
    nnodes = spec.workers.replicas
    nproc = spec.workers.processes_per_worker
    rendezvous = {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "NNODES": str(nnodes),
        "NODE_RANK": str(node_rank),
        "NPROC_PER_NODE": str(nproc),
    }
    environment = {
        **rendezvous,
        "WORLD_SIZE": str(nnodes * nproc),
        **{f"PET_{name}": value for name, value in rendezvous.items()},
        ENV_CONFIG: config_path,
        ENV_RESULT_FILE: result_file,
        ENV_PROGRESS_PORT: str(progress_port),
        ENV_NAME: job.metadata.name,
        ENV_NAMESPACE: job.metadata.namespace or "",
        ENV_UID: job.metadata.uid or "",
        "PYTHONUNBUFFERED": "1",
    }
    uri = spec.tracking.mlflow_tracking_uri or tracking_uri
    if uri:
        environment["MLFLOW_TRACKING_URI"] = uri
    return environment
