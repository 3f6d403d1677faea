"""The PEFTJob state machine. Pure: (job, current status, its pods, now) -> new status and what to do next.

All state lives in the resource's status, so a reconcile replays correctly after an operator restart:
the decision depends only on what the API server holds. Handlers carry out the decision.

Phases: Pending -> Created -> Running -> Succeeded | Failed, with Restarting (the whole gang is recreated
after a retryable failure; DeepSpeed cannot lose a rank) and Suspended (pods removed, checkpoint kept).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import ValidationError

from peftjob_trainer.api import contract
from peftjob_trainer.api import PEFTJob, PEFTJobStatus, worker_pod_name
from peftjob_trainer.api.result import ProgressReport, TrainerResult
from peftjob_trainer.api.spec import RunPolicy
from peftjob_trainer.api.status import TERMINAL_PHASES as TERMINAL
from peftjob_trainer.api.status import Artifact, Condition, MlflowRun, Progress, Reason, WorkerCounts

# Pod-level reasons (pod.status.reason) that mean the infrastructure took the pod away, not the trainer.
INFRASTRUCTURE_REASONS = {"Evicted", "NodeLost", "NodeShutdown", "Shutdown", "Terminated", "Preempted",
                          "UnexpectedAdmissionError", "OutOfcpu", "OutOfmemory"}
MESSAGE_TAIL = 400
# Spec fields a user may change while the job exists; anything else would make the running gang lie.
MUTABLE_FIELDS = ("runPolicy.suspend", "runPolicy.activeDeadlineSeconds", "runPolicy.ttlSecondsAfterFinished")


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the PEFTJob."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """The new status and the side effects that bring the cluster to it."""

    status: PEFTJobStatus
    create_pods: bool = False
    delete_pods: tuple[str, ...] = ()
    delete_job: bool = False
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Worker:
    """What one worker pod tells us."""

    index: int
    name: str
    phase: str  # Pending, Running, Succeeded, Failed, Unknown, Missing, Terminating
    exit_code: int | None = None
    reason: str = ""
    message: str = ""

    @property
    def active(self) -> bool:
        return self.phase in ("Pending", "Running", "Unknown")


@dataclass
class _Draft:
    """The status being built, plus the effects decided along the way."""

    status: PEFTJobStatus
    now: str
    events: list[Event] = field(default_factory=list)

    def transition(self, phase: str, reason: str, message: str, condition: str | None = None) -> None:
        """Move to `phase` (one Event per change) and set its condition True; others it supersedes go False."""
        condition = condition or phase
        if self.status.phase != phase or self.status.message != message:
            kind = "Warning" if phase in ("Failed", "Restarting") else "Normal"
            self.events.append(Event(kind, reason, message))
        self.status.phase = phase
        self.status.message = message
        self.set_condition(condition, "True", reason, message)
        for other in {"Running": ("Restarting", "Suspended"), "Restarting": ("Running",),
                      "Suspended": ("Running", "Restarting"), "Succeeded": ("Running",),
                      "Failed": ("Running", "Restarting")}.get(condition, ()):
            if self._condition(other) and self._condition(other).status == "True":
                self.set_condition(other, "False", reason, message)

    def set_condition(self, type_: str, status: str, reason: str, message: str) -> None:
        existing = self._condition(type_)
        if existing is None:
            self.status.conditions.append(
                Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=self.now)
            )
            return
        if existing.status != status:
            existing.last_transition_time = self.now
        existing.status, existing.reason, existing.message = status, reason, message

    def _condition(self, type_: str) -> Condition | None:
        return next((c for c in self.status.conditions if c.type == type_), None)


def reconcile(job: PEFTJob, current: PEFTJobStatus, pods: list[dict[str, Any]], now: datetime) -> Decision:
    """Decide the job's next status from what is observed. Idempotent: replaying it changes nothing more."""
    draft = _Draft(current.model_copy(deep=True), _timestamp(now))
    status = draft.status
    status.method = job.spec.method.name
    policy = job.spec.run_policy
    workers = observe_workers(pods, job.metadata.name, job.spec.workers.replicas)
    status.workers = WorkerCounts(
        active=sum(w.active for w in workers),
        succeeded=sum(w.phase == "Succeeded" for w in workers),
        failed=sum(w.phase == "Failed" for w in workers),
    )
    existing = tuple(w.name for w in workers if w.phase not in ("Missing", "Terminating"))
    active = tuple(w.name for w in workers if w.active)

    def cleaned() -> Decision:
        """The job has finished: delete the pods its cleanPodPolicy says go."""
        return done(delete_pods={"None": (), "Running": active, "All": existing}[policy.clean_pod_policy])

    def done(**effects: Any) -> Decision:
        expired = status.phase in TERMINAL and _ttl_expired(policy.ttl_seconds_after_finished, status.completion_time, now)
        return Decision(status=status, events=tuple(draft.events), delete_job=expired, **effects)

    if status.phase in TERMINAL:
        return cleaned()

    if policy.suspend:
        if status.phase != "Suspended":
            draft.transition("Suspended", Reason.SUSPENDED, "job suspended: worker pods removed, checkpoint kept")
            status.start_time = None  # the deadline counts running time from the next resume
        return done(delete_pods=existing)

    deadline = policy.active_deadline_seconds
    if deadline and status.start_time and now >= _parse(status.start_time) + timedelta(seconds=deadline):
        _finish(draft, "Failed", Reason.DEADLINE_EXCEEDED, f"job ran longer than activeDeadlineSeconds={deadline}")
        return cleaned()

    if status.phase in ("Pending", "Restarting", "Suspended"):
        if status.phase == "Suspended":
            draft.set_condition("Suspended", "False", Reason.RESUMED, "job resumed: pods are recreated")
        if status.phase != "Pending" and existing:
            return done(delete_pods=existing)  # the old gang goes before the new one comes
        if any(w.phase == "Terminating" for w in workers):
            return done()
        replicas = job.spec.workers.replicas
        draft.transition("Created", Reason.PODS_CREATED, f"created {replicas} worker pod(s)")
        status.start_time = status.start_time or draft.now
        return done(create_pods=True)

    if workers[0].phase == "Succeeded":
        _succeed(draft, workers[0])
        return cleaned()

    failures = [w for w in workers if w.phase in ("Failed", "Missing", "Terminating")]
    user_errors = [w for w in failures if not _retryable(w)]
    if user_errors:
        _finish(draft, "Failed", Reason.WORKER_FAILED, describe(user_errors[0]) + " (not retried: a user error)")
        return cleaned()
    if failures:
        why = describe(failures[0])
        if status.restarts >= policy.backoff_limit:
            _finish(draft, "Failed", Reason.BACKOFF_LIMIT_EXCEEDED,
                    f"{why}; backoffLimit {policy.backoff_limit} reached after {status.restarts} restart(s)")
            return cleaned()
        status.restarts += 1
        draft.transition("Restarting", _restart_reason(failures[0]),
                         f"restart {status.restarts}/{policy.backoff_limit}: {why}")
        return done(delete_pods=existing)

    if all(w.phase == "Running" for w in workers):
        draft.transition("Running", Reason.ALL_WORKERS_RUNNING, f"{len(workers)} worker pod(s) running")
    return done()


def reject(current: PEFTJobStatus, problems: list[str], now: datetime) -> Decision:
    """An invalid spec: Failed with reason InvalidSpec and every `field: reason` in the message and an Event."""
    draft = _Draft(current.model_copy(deep=True), _timestamp(now))
    _finish(draft, "Failed", Reason.INVALID_SPEC, "invalid spec: " + "; ".join(problems))
    return Decision(status=draft.status, events=tuple(draft.events))


def observe_workers(pods: list[dict[str, Any]], job_name: str, replicas: int) -> list[Worker]:
    """One Worker per expected index; pods the gang does not expect are ignored."""
    by_name = {pod.get("metadata", {}).get("name"): pod for pod in pods}
    return [_worker(index, worker_pod_name(job_name, index), by_name.get(worker_pod_name(job_name, index)))
            for index in range(replicas)]


def _worker(index: int, name: str, pod: dict[str, Any] | None) -> Worker:
    if pod is None:
        return Worker(index, name, "Missing")
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return Worker(index, name, "Terminating")
    pod_status = pod.get("status") or {}
    phase = pod_status.get("phase") or "Pending"
    terminated = next(
        (
            (cs.get("state") or {}).get("terminated")
            for cs in pod_status.get("containerStatuses") or []
            if (cs.get("state") or {}).get("terminated")
        ),
        None,
    )
    reason = pod_status.get("reason") or ""
    if any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
           for c in pod_status.get("conditions") or []):
        reason = reason or "DisruptionTarget"
    if terminated:
        return Worker(index, name, phase, terminated.get("exitCode"), terminated.get("reason") or reason,
                      terminated.get("message") or pod_status.get("message") or "")
    return Worker(index, name, phase, None, reason, pod_status.get("message") or "")


def _retryable(worker: Worker) -> bool:
    """Infrastructure failures are retried; a trainer exit code 1-127 is the user's to fix."""
    if worker.phase in ("Missing", "Terminating") or worker.reason in INFRASTRUCTURE_REASONS:
        return True
    if worker.reason == "DisruptionTarget" or worker.exit_code is None:
        return True
    return contract.is_retryable(worker.exit_code)


def _restart_reason(worker: Worker) -> str:
    if worker.phase in ("Missing", "Terminating"):
        return Reason.WORKER_DELETED
    if worker.reason in INFRASTRUCTURE_REASONS or worker.reason == "DisruptionTarget":
        return worker.reason if worker.reason != "DisruptionTarget" else Reason.DISRUPTED
    return Reason.WORKER_FAILED


def describe(worker: Worker) -> str:
    """One line a user can act on: which worker, what happened, the end of what it said."""
    if worker.phase in ("Missing", "Terminating"):
        return f"worker {worker.index} ({worker.name}) was deleted"
    what = f"exited with code {worker.exit_code}" if worker.exit_code is not None else "failed"
    if worker.reason:
        what += f" ({worker.reason})"
    tail = worker.message.strip()[-MESSAGE_TAIL:]
    return f"worker {worker.index} ({worker.name}) {what}" + (f": {tail}" if tail else "")


def _succeed(draft: _Draft, rank0: Worker) -> None:
    result = parse_result(rank0.message)
    status = draft.status
    if result is not None:
        status.artifact, status.mlflow, status.progress = from_result(result, status.mlflow)
    where = f": adapter at {status.artifact.uri}" if status.artifact.uri else ""
    _finish(draft, "Succeeded", Reason.JOB_SUCCEEDED, f"training finished{where}")


def _finish(draft: _Draft, phase: str, reason: str, message: str) -> None:
    draft.transition(phase, reason, message)
    draft.status.completion_time = draft.status.completion_time or draft.now


def parse_result(message: str) -> TrainerResult | None:
    """The trainer's result from a termination message: its last line that is a JSON object (with
    FallbackToLogsOnError, log lines may precede it). None when there is none or it is not a TrainerResult."""
    for line in reversed(message.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        try:
            return TrainerResult.model_validate(data)
        except ValidationError:
            return None
    return None


def from_result(result: TrainerResult, mlflow: MlflowRun) -> tuple[Artifact, MlflowRun, Progress]:
    """A finished run's result in the status' terms: the adapter, the MLflow run (its URL kept) and 100%."""
    artifact = Artifact(uri=result.artifact_uri, sha256=result.sha256, bytes=result.bytes,
                        trainable_parameters=result.trainable_params, total_parameters=result.total_params)
    run = mlflow.model_copy(update={"run_id": result.mlflow_run_id or mlflow.run_id})
    progress = Progress(step=result.steps or 0, total_steps=result.steps, percent=100.0,
                        loss=result.metrics.get("loss"))
    return artifact, run, progress


def parse_progress(payload: Any, job_uid: str | None) -> tuple[Progress, MlflowRun | None] | None:
    """Rank 0's /progress answer -> status.progress (percent and ETA derived) and the run it logs to; None when
    the answer is another job's (its uid differs: pods sharing an address, an IP reused by a new pod).

    Raises ValidationError (a ValueError) when the payload is not a ProgressReport."""
    report = ProgressReport.model_validate(payload)
    if report.job_uid is not None and job_uid is not None and report.job_uid != job_uid:
        return None
    total = report.total_steps
    progress = Progress(
        step=report.step, total_steps=total, loss=report.loss, throughput=report.throughput,
        eta_seconds=report.eta_seconds,
        percent=round(100.0 * report.step / total, 1) if total else None,
        eta=format_duration(report.eta_seconds) if report.eta_seconds is not None else None,
    )
    return progress, report.mlflow


def format_duration(seconds: float) -> str:
    """4m10s, 1h2m, 12s: what kubectl users expect to read."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _ttl_expired(ttl: int | None, completion_time: str | None, now: datetime) -> bool:
    return ttl is not None and completion_time is not None and now >= _parse(completion_time) + timedelta(seconds=ttl)


def time_check_due(policy: RunPolicy, status: PEFTJobStatus, now: datetime) -> bool:
    """Whether a time-based transition (deadline or TTL) is due now: timers ask this before any API call."""
    if status.phase in TERMINAL:
        return _ttl_expired(policy.ttl_seconds_after_finished, status.completion_time, now)
    deadline = policy.active_deadline_seconds
    return bool(deadline and status.start_time and now >= _parse(status.start_time) + timedelta(seconds=deadline))


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def refused_spec_changes(diff: Iterable[tuple[str, tuple[str, ...], Any, Any]]) -> list[str]:
    """The changed spec fields (kopf's diff of `spec`) that may not change while the job exists."""
    return [field for field in changed_fields(diff) if field not in MUTABLE_FIELDS]


def changed_fields(diff: Iterable[tuple[str, tuple[str, ...], Any, Any]]) -> list[str]:
    """Dotted paths of the leaves that a spec diff touches (an added or removed section counts leaf by leaf)."""
    fields: list[str] = []
    for _, path, old, new in diff:
        fields += _leaves(old, new, ".".join(map(str, path)))
    return sorted(set(fields))


def _leaves(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) or isinstance(new, dict):
        old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
        return [leaf for key in sorted(set(old) | set(new))
                for leaf in _leaves(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)]
    return [] if old == new else [prefix]
