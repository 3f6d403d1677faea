"""MLflow on rank 0: one run per job, found again by a tag and resumed after a restart, never duplicated.

Tracking is a side show: every call is retried a few times with backoff, then dropped with a warning, and
training goes on. MLflow's own HTTP retries (minutes by default) are shortened so an unreachable server
costs seconds, not the job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from tenacity import retry, stop_after_attempt, wait_exponential

from .api.spec import PEFTJob

TAG_UID = "peftjob.uid"
TAG_NAME = "peftjob.name"
TAG_NAMESPACE = "peftjob.namespace"
ATTEMPTS = 3
PARAM_VALUE_LIMIT = 6000
T = TypeVar("T")
log = logging.getLogger(__name__)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """{"training.learningRate": "0.0003", ...}: the spec as MLflow params."""
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    text = json.dumps(value) if isinstance(value, list) else str(value)
    return {prefix: text[:PARAM_VALUE_LIMIT]}


def job_tags(job: PEFTJob) -> dict[str, str]:
    """Tags that find the job's run again: the uid on Kubernetes, the name for local runs."""
    meta = job.metadata
    tags = {TAG_NAME: meta.name, **job.spec.tracking.tags}
    if meta.namespace:
        tags[TAG_NAMESPACE] = meta.namespace
    if meta.uid:
        tags[TAG_UID] = meta.uid
    return tags


def store_lock() -> contextlib.AbstractContextManager[Any]:
    """For an sqlite store, an inter-process lock next to the file: two jobs started together in one folder
    would otherwise both run MLflow's schema migration on a new database and leave it broken for good."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    return FileLock(uri.removeprefix("sqlite:///") + ".lock")


class Tracker:
    """The job's MLflow run, or nothing at all (not rank 0, or tracking unreachable)."""

    def __init__(self, job: PEFTJob, enabled: bool) -> None:
        self.job = job
        self.run_id: str | None = None
        self.client: Any = None
        self._monitor: Any = None
        if not enabled:
            return
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.run_id = self._call("start the run", self._start)

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _call(self, what: str, action: Callable[[], T]) -> T | None:
        """Run `action` with bounded retries; on failure warn and return None."""
        attempt = retry(stop=stop_after_attempt(ATTEMPTS), wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
        try:
            return attempt(action)()
        except Exception as error:  # noqa: BLE001 (any tracking failure must leave training alone)
            log.warning("MLflow: cannot %s (%s: %s); training goes on", what, type(error).__name__, error)
            return None

    def _start(self) -> str:
        with store_lock():
            return self._find_or_create_run()

    def _find_or_create_run(self) -> str:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        tracking = self.job.spec.tracking
        self.client = MlflowClient()
        experiment = self.client.get_experiment_by_name(tracking.experiment)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(tracking.experiment)
        )
        meta = self.job.metadata
        key, value = (TAG_UID, meta.uid) if meta.uid else (TAG_NAME, meta.name)
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{key}` = '{value}'", max_results=1, order_by=["start_time ASC"]
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            log.info("MLflow: resuming run %s", run_id)
        else:
            run = self.client.create_run(
                experiment_id, run_name=tracking.run_name or meta.name, tags=job_tags(self.job)
            )
            run_id = run.info.run_id
            params = flatten(self.job.spec.model_dump(mode="json", by_alias=True, exclude_none=True))
            items = [Param(k, v) for k, v in params.items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[start : start + 100])
        if tracking.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(run_id, resume_logging=bool(found))
            self._monitor.start()
        return run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._call(f"log metrics at step {step}", lambda: self.client.log_batch(self.run_id, metrics=items))

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        if self.active:
            self._call(
                f"upload {artifact_path}",
                lambda: self.client.log_artifacts(self.run_id, str(directory), artifact_path),
            )

    def log_spec(self) -> None:
        """The job spec as an artifact (peftjob.yaml), for reproducing the run."""
        if not self.active:
            return
        import yaml

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, "peftjob.yaml")
            body = self.job.model_dump(mode="json", by_alias=True, exclude_none=True)
            body.pop("status", None)
            path.write_text(yaml.safe_dump(body, sort_keys=False))
            self._call("upload the spec", lambda: self.client.log_artifact(self.run_id, str(path), "spec"))

    def finish(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        if self._monitor is not None:
            self._monitor.finish()
        self._call("close the run", lambda: self.client.set_terminated(self.run_id, status))
