"""What the trainer reports back to the operator: its final result and its live progress.

The trainer builds and writes these models; the operator parses them with the same models. Both ends of the
contract share one definition, so a renamed or retyped field breaks at once on both sides (and in the tests).
Keys are camelCase on the wire. Unknown keys are ignored rather than refused: the operator and the trainer
image are upgraded separately, and an older operator must still read a newer trainer's report.
"""

from __future__ import annotations

import json

from pydantic import ConfigDict, Field

from .spec import ApiModel
from .status import MlflowRun


class TrainerResult(ApiModel):
    """Rank 0's result, written to the pod's termination message (4 KiB at most) and printed by `peftjob run`.

    A finished run sets the artifact, counts and metrics; a failed one sets only `error` and `exitCode`.
    """

    model_config = ConfigDict(extra="ignore")

    artifact_uri: str | None = Field(None, description="Where the adapter was published (a prefix ending in /).")
    sha256: str | None = Field(None, description="SHA-256 of the adapter's manifest.json, which lists every file.")
    bytes: int | None = Field(None, ge=0, description="Total size of the adapter's files.")
    files: list[str] = Field(default_factory=list, description="The adapter's file names.")
    steps: int | None = Field(None, ge=0, description="Optimizer steps the run trained for.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final training and evaluation metrics.")
    initial_metrics: dict[str, float] = Field(
        default_factory=dict, description="Evaluation metrics before training (empty after a resume)."
    )
    trainable_params: int | None = Field(None, ge=0, description="Parameters the method trains.")
    total_params: int | None = Field(None, ge=0, description="All parameters, frozen backbone included.")
    frozen_bytes_per_rank: list[int] = Field(
        default_factory=list, description="Bytes of frozen backbone each rank held (ZeRO-3 shards it)."
    )
    world_size: int | None = Field(None, ge=1, description="Ranks in the gang.")
    mlflow_run_id: str | None = Field(None, description="The MLflow run, when tracking is on.")
    resumed_from_step: int | None = Field(None, ge=0, description="The checkpoint step this run resumed from.")
    error: str | None = Field(None, description="Why the run failed, in words the user can act on.")
    exit_code: int | None = Field(None, description="The trainer's exit code (see peftjob_trainer.contract).")

    def to_json(self) -> str:
        """Compact, ASCII-only JSON of the fields that were set (Kubernetes counts the message in bytes)."""
        return json.dumps(
            self.model_dump(mode="json", by_alias=True, exclude_unset=True), separators=(",", ":"), sort_keys=True
        )


class ProgressReport(ApiModel):
    """What rank 0 serves on GET /progress while it trains; the operator copies it into status.progress."""

    model_config = ConfigDict(extra="ignore")

    job_uid: str | None = Field(
        None, description="The uid of the PEFTJob this rank trains, so that the operator never takes another job's "
        "report for this one's (pods that share an address, a reused IP)."
    )
    step: int = Field(0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps the run will take.")
    loss: float | None = Field(None, description="Mean training loss over the latest logging window.")
    throughput: float | None = Field(None, description="Samples per second, all ranks together.")
    eta_seconds: float | None = Field(None, description="Estimated seconds left.")
    mlflow: MlflowRun | None = Field(
        None, description="The run being logged to, so the operator can close it if the job is deleted."
    )
