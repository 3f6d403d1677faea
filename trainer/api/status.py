"""The PEFTJob status: what the operator observed. Its schema in the CRD is generated from these models."""

from __future__ import annotations

from typing import Final, Literal, get_args

from pydantic import Field

from .spec import ApiModel

Phase = Literal["Pending", "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
ConditionType = Literal["Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
PHASES: Final[tuple[str, ...]] = get_args(Phase)
TERMINAL_PHASES: Final[tuple[str, ...]] = ("Succeeded", "Failed")


class Reason:
    """Why a condition or Event is what it is: the `reason` values the operator writes (CamelCase, as Kubernetes).

    Constants beside the API types, as Kubeflow and KubeRay keep theirs, so tests, dashboards and alerts match
    on names that the operator cannot spell differently."""

    PODS_CREATED: Final = "PodsCreated"
    ALL_WORKERS_RUNNING: Final = "AllWorkersRunning"
    JOB_SUCCEEDED: Final = "JobSucceeded"
    INVALID_SPEC: Final = "InvalidSpec"
    WORKER_FAILED: Final = "WorkerFailed"
    WORKER_DELETED: Final = "WorkerDeleted"
    DISRUPTED: Final = "Disrupted"
    BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
    SUSPENDED: Final = "Suspended"
    RESUMED: Final = "Resumed"
    SPEC_CHANGE_REFUSED: Final = "SpecChangeRefused"
    MLFLOW_RUN_KILLED: Final = "MlflowRunKilled"
    MLFLOW_RUN_FAILED: Final = "MlflowRunFailed"


class Condition(ApiModel):
    """Kubernetes-style condition: the latest observation of one aspect, with why and since when."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(None, description="RFC 3339.")


class WorkerCounts(ApiModel):
    active: int = 0
    succeeded: int = 0
    failed: int = 0


class Progress(ApiModel):
    """Training progress as reported by rank 0."""

    step: int = 0
    total_steps: int | None = None
    percent: float | None = None
    loss: float | None = None
    throughput: float | None = Field(None, description="Samples per second, all ranks together.")
    eta_seconds: float | None = None
    eta: str | None = Field(None, description="Human-readable time left, e.g. 4m10s.")


class MlflowRun(ApiModel):
    run_id: str | None = None
    url: str | None = None


class Artifact(ApiModel):
    """The final adapter."""

    uri: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None


class PEFTJobStatus(ApiModel):
    phase: Phase = "Pending"
    method: str | None = Field(None, description="The method in use (shown by kubectl get).")
    conditions: list[Condition] = Field(default_factory=list)
    workers: WorkerCounts = Field(default_factory=WorkerCounts)
    restarts: int = 0
    progress: Progress = Field(default_factory=Progress)
    mlflow: MlflowRun = Field(default_factory=MlflowRun)
    artifact: Artifact = Field(default_factory=Artifact)
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
    message: str | None = Field(None, description="The latest reason in words.")
