"""kopf handlers: thin, idempotent glue between Kubernetes events and the pure render/status functions.

Every reconcile reads the PEFTJob, its ConfigMap and its pods from the API server, asks `status.reconcile`
what should happen, does it, and writes the status. Nothing is remembered between calls except a per-job lock
(so that a pod event and a timer of the same job do not act on the same observation twice), which lives only
while someone holds or waits for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from datetime import datetime, timezone
from typing import Any

import aiohttp
import kopf

from peftjob_trainer.api import contract
from peftjob_trainer.api import API_GROUP, API_VERSION, PLURAL, InvalidSpec, PEFTJob, PEFTJobStatus, load_object
from peftjob_trainer.api import worker_pod_name
from peftjob_trainer.api.spec import RunPolicy
from peftjob_trainer.api.status import Reason

from . import metrics, mlflow_runs, render
from .client import KubeClient, path
from .settings import OperatorSettings
from .status import MUTABLE_FIELDS, TERMINAL, Decision, parse_progress, reconcile, refused_spec_changes, reject
from .status import time_check_due

PEFTJOBS = (API_GROUP, API_VERSION, PLURAL)
API = f"{API_GROUP}/{API_VERSION}"
PROGRESS_TIMEOUT = 2.0
# A failed handler (an API call refused or timed out) is retried after this many seconds; kopf's default of
# 60 s would leave a new job without pods for a minute after one transient API error.
RETRY_BACKOFF = 2.0

logger = logging.getLogger(__name__)


class Memo(kopf.Memo):
    """What handlers share: settings, the API client, per-job locks and the metrics book (no job state)."""

    def __init__(self, settings: OperatorSettings, connection: kopf.ConnectionInfo | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.connection = connection  # fixed credentials (tests); None: in-cluster or kubeconfig
        self.client = KubeClient()
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self.phases = metrics.PhaseBook()

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        """The job's lock: shared by everyone using it now, dropped (garbage-collected) once nobody does."""
        lock = self._locks.get((namespace, name))
        if lock is None:
            lock = self._locks[(namespace, name)] = asyncio.Lock()
        return lock


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """All handlers in a fresh registry, so several operators (tests, replicas) never share handlers."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(memo: Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
        info = (
            memo.connection
            or kopf.login_with_service_account(**kwargs)
            or kopf.login_with_kubeconfig(**kwargs)
        )
        if info is not None:
            memo.client.connect(info)
        return info

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = f"{API_GROUP}/cleanup"
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        # A deleted job keeps its finalizer until its timer has exited. A tick in flight (one API read, one
        # progress GET) is waited for briefly, then re-checked soon: kopf's defaults (a few loop cycles, then
        # a re-check after 60 s) left jobs deleted by their TTL in place for a minute.
        settings.background.instant_exit_timeout = 0.5
        settings.background.cancellation_polling = 1.0

    @kopf.on.cleanup(registry=registry)
    async def close(memo: Memo, **_: Any) -> None:
        await memo.client.close()

    @kopf.on.resume(*PEFTJOBS, backoff=RETRY_BACKOFF, registry=registry)
    @kopf.on.create(*PEFTJOBS, backoff=RETRY_BACKOFF, registry=registry)
    async def admit(name: str, namespace: str, memo: Memo, **_: Any) -> None:
        await reconcile_job(memo, namespace, name)

    @kopf.on.update(*PEFTJOBS, field="spec", backoff=RETRY_BACKOFF, registry=registry)
    async def spec_changed(diff: kopf.Diff, body: kopf.Body, name: str, namespace: str, memo: Memo,
                           **_: Any) -> None:
        refused = refused_spec_changes(diff)
        if refused and (body.get("status") or {}).get("phase") not in TERMINAL:
            kopf.event(body, type="Warning", reason=Reason.SPEC_CHANGE_REFUSED,
                       message=f"only {', '.join(MUTABLE_FIELDS)} can change while the job exists; "
                               f"kept the running configuration for: {', '.join(refused)}")
        await reconcile_job(memo, namespace, name)

    @kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": render.MANAGER}, registry=registry)
    async def pod_changed(labels: kopf.Labels, namespace: str, memo: Memo, **_: Any) -> None:
        job_name = labels.get(render.JOB_LABEL)
        if job_name:
            await reconcile_job(memo, namespace, job_name)

    @kopf.timer(*PEFTJOBS, interval=settings.progress_interval, when=needs_timer, backoff=RETRY_BACKOFF,
                registry=registry)
    async def tick(body: kopf.Body, name: str, namespace: str, memo: Memo, **_: Any) -> None:
        phase = (body.get("status") or {}).get("phase")
        try:
            policy = RunPolicy.model_validate((body.get("spec") or {}).get("runPolicy") or {})
        except ValueError:
            return
        if time_check_due(policy, _status(body), datetime.now(timezone.utc)):
            await reconcile_job(memo, namespace, name)
        elif phase == "Running":
            await poll_progress(memo, namespace, name, body.get("metadata", {}).get("uid"))

    # Not optional: the finalizer holds the job until its MLflow run is marked KILLED (best effort, bounded by
    # the MLflow request timeout, so a down MLflow never blocks a deletion for long).
    @kopf.on.delete(*PEFTJOBS, backoff=RETRY_BACKOFF, registry=registry)
    async def deleted(body: kopf.Body, memo: Memo, **_: Any) -> None:
        memo.phases.record(body.get("metadata", {}).get("uid", ""), None)
        await kill_mlflow_run(body, memo.settings)

    return registry


def needs_timer(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """Only jobs with something time-based to do get a timer (progress, deadline, TTL): idle jobs cost nothing."""
    phase = status.get("phase")
    try:
        policy = RunPolicy.model_validate(spec.get("runPolicy") or {})
    except ValueError:
        return False
    if phase in TERMINAL:
        return policy.ttl_seconds_after_finished is not None
    return phase == "Running" or policy.active_deadline_seconds is not None


async def reconcile_job(memo: Memo, namespace: str, name: str) -> None:
    """Read, decide, act, write status: safe to call any number of times, from any handler."""
    client, settings = memo.client, memo.settings
    async with memo.lock(namespace, name):
        started = time.perf_counter()
        body = await client.get(path(API, PLURAL, namespace, name))
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        current = _status(body)
        job = await _accepted_job(client, body, settings)
        now = datetime.now(timezone.utc)
        if isinstance(job, InvalidSpec):
            decision = reject(current, job.problems, now)
        else:
            pods = await client.list(path("v1", "pods", namespace), f"{render.JOB_LABEL}={name}")
            decision = reconcile(job, current, pods, now)
            await _carry_out(client, settings, job, decision)
        if decision.status != current:
            await client.patch(path(API, PLURAL, namespace, name, "status"), {"status": _dump(decision.status)})
        for event in decision.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        if decision.status.restarts > current.restarts:
            metrics.RESTARTS.inc(decision.status.restarts - current.restarts)
        memo.phases.record(body["metadata"].get("uid", ""), decision.status.phase)
        if decision.status.phase == "Failed" and current.phase != "Failed" and isinstance(job, PEFTJob):
            await fail_mlflow_run(body, job, decision.status)
        if decision.delete_job:
            await client.delete(path(API, PLURAL, namespace, name))
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)


async def _carry_out(client: KubeClient, settings: OperatorSettings, job: PEFTJob, decision: Decision) -> None:
    namespace = job.metadata.namespace
    await asyncio.gather(*(client.delete(path("v1", "pods", namespace, pod)) for pod in decision.delete_pods))
    if decision.create_pods:
        config_map, service, *pods = render.render_job(job, settings)
        await asyncio.gather(*(client.create(path("v1", _plural(obj), namespace), obj) for obj in (config_map, service)))
        await asyncio.gather(*(client.create(path("v1", "pods", namespace), pod) for pod in pods))


async def _accepted_job(client: KubeClient, body: dict[str, Any], settings: OperatorSettings) -> PEFTJob | InvalidSpec:
    """What runs: the spec stored in the job's ConfigMap when one exists, with the live (mutable) runPolicy.

    The ConfigMap is written once when the pods are first created, so edits the operator refused never reach
    a recreated gang, and a later invalid edit cannot fail a job that was accepted.
    """
    metadata = body["metadata"]
    try:
        live: PEFTJob | InvalidSpec = load_object(_document(body))
    except InvalidSpec as invalid:
        live = invalid
    config_map = await client.get(path("v1", "configmaps", metadata["namespace"], render.config_map_name(metadata["name"])))
    owners = [ref.get("uid") for ref in (config_map or {}).get("metadata", {}).get("ownerReferences", [])]
    if config_map is None or metadata.get("uid") not in owners:
        return live if isinstance(live, InvalidSpec) else render.effective_job(live, settings)
    accepted = load_object(json.loads(config_map["data"][contract.CONFIG_FILE]))
    if isinstance(live, PEFTJob):
        accepted = accepted.model_copy(
            update={"spec": accepted.spec.model_copy(update={"run_policy": live.spec.run_policy})}
        )
    return accepted


async def poll_progress(memo: Memo, namespace: str, name: str, uid: str | None) -> None:
    """Ask rank 0 for its progress (workers need no API rights: the operator fetches and records it)."""
    pod = await memo.client.get(path("v1", "pods", namespace, worker_pod_name(name, 0)))
    ip = ((pod or {}).get("status") or {}).get("podIP")
    if not ip:
        return
    url = f"http://{ip}:{contract.PROGRESS_PORT}{contract.PROGRESS_PATH}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROGRESS_TIMEOUT)) as session:
            async with session.get(url) as response:
                payload = await response.json(content_type=None)
        parsed = parse_progress(payload, uid)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, TypeError) as error:
        logger.debug("progress of %s/%s not available: %s", namespace, name, error)
        return
    if parsed is None:
        logger.warning("progress at %s is another job's: ignored for %s/%s", url, namespace, name)
        return
    progress, run = parsed
    patch: dict[str, Any] = {"progress": progress.model_dump(mode="json", by_alias=True)}
    if run is not None:
        patch["mlflow"] = run.model_dump(mode="json", by_alias=True)
    async with memo.lock(namespace, name):
        await memo.client.patch(path(API, PLURAL, namespace, name, "status"), {"status": patch})


async def kill_mlflow_run(body: kopf.Body, settings: OperatorSettings) -> None:
    """A job deleted mid-training leaves its MLflow run KILLED rather than RUNNING forever."""
    status = _status(body)
    try:
        job = render.effective_job(load_object(_document(body)), settings)
    except InvalidSpec:
        return  # never accepted: no run was started
    run_id, tracking = status.mlflow.run_id, job.spec.tracking.mlflow_tracking_uri
    if status.phase in TERMINAL or not mlflow_runs.closable(tracking, run_id):
        return
    if await mlflow_runs.close_run(tracking, run_id, "KILLED"):
        kopf.info(body, reason=Reason.MLFLOW_RUN_KILLED, message=f"MLflow run {run_id} marked KILLED")


async def fail_mlflow_run(body: kopf.Body, job: PEFTJob, status: PEFTJobStatus) -> None:
    """A job that failed for good leaves its MLflow run FAILED, also when no trainer could close it (rank 0
    SIGKILLed, its node lost); a run the trainer already closed is left as it is."""
    run_id, tracking = status.mlflow.run_id, job.spec.tracking.mlflow_tracking_uri
    if mlflow_runs.closable(tracking, run_id) and await mlflow_runs.close_run(tracking, run_id, "FAILED"):
        kopf.info(body, reason=Reason.MLFLOW_RUN_FAILED, message=f"MLflow run {run_id} marked FAILED")


def _document(body: Any) -> dict[str, Any]:
    """The user's part of the body (kopf's bookkeeping in annotations and status is not the user's spec)."""
    metadata = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {key: metadata.get(key) for key in ("name", "namespace", "uid") if metadata.get(key)},
        "spec": body.get("spec"),
    }


def _status(body: Any) -> PEFTJobStatus:
    """The operator's own status fields (kopf keeps its progress under status too)."""
    raw = dict(body.get("status") or {})
    known = {field.alias or name for name, field in PEFTJobStatus.model_fields.items()} | set(PEFTJobStatus.model_fields)
    return PEFTJobStatus.model_validate({key: value for key, value in raw.items() if key in known})


def _dump(status: PEFTJobStatus) -> dict[str, Any]:
    """Full status with nulls, so a merge patch also clears fields that went away (e.g. startTime on suspend)."""
    return status.model_dump(mode="json", by_alias=True)


def _plural(obj: dict[str, Any]) -> str:
    return {"ConfigMap": "configmaps", "Service": "services", "Pod": "pods"}[obj["kind"]]
