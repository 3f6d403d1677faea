"""MLflow on rank 0: one run per training lineage, fed from a background thread so tracking never costs training.

The run is found again by its lineage's id (a tag), so a restart or resume continues it and a new lineage
(a fresh start, another configuration, a deleted output folder) gets a new one. Every call goes through one
worker thread in order: opening the run, metrics, artifacts, closing it. A call that fails (the server is down)
is retried with backoff, holding everything queued behind it (a bounded buffer: nothing is dropped for an
outage of minutes), while training goes on. Only `finish` waits, and for a bounded time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from .api.spec import PEFTJob

TAG_UID = "peftjob.uid"
TAG_NAME = "peftjob.name"
TAG_NAMESPACE = "peftjob.namespace"
TAG_LINEAGE = "peftjob.lineage"
TAG_FINGERPRINT = "peftjob.fingerprint"
PARAM_VALUE_LIMIT = 6000
BUFFERED_CALLS = 100_000
"""Queued MLflow calls (one per metrics line): hours of training at one line per step."""
BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
FLUSH_SECONDS = float(os.environ.get("PEFTJOB_MLFLOW_FLUSH_SECONDS", "60"))
"""How long `finish` waits for queued calls when the job ends: a down server costs the job at most this."""
INTERRUPT_FLUSH_SECONDS = 5.0
"""On Ctrl-C or SIGTERM; and how long a run that has not opened yet keeps retrying when the job ends."""
log = logging.getLogger(__name__)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """{"training.learningRate": "0.0003", ...}: nested values as MLflow params."""
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    text = json.dumps(value) if isinstance(value, list) else str(value)
    return {prefix: text[:PARAM_VALUE_LIMIT]}


def job_tags(job: PEFTJob) -> dict[str, str]:
    """Tags that say which job a run belongs to: its name, and its namespace and uid on Kubernetes."""
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
    """The lineage's MLflow run, or nothing at all (not rank 0)."""

    def __init__(self, job: PEFTJob, lineage_id: str, params: dict[str, Any], enabled: bool,
                 on_open: Callable[[str], None] | None = None) -> None:
        self.job, self.lineage_id, self.params = job, lineage_id, params
        self.enabled = enabled
        self.run_id: str | None = None
        self.previous_status: str | None = None
        self._on_open = on_open
        self._client: Any = None
        self._monitor: Any = None
        self._calls: queue.Queue[tuple[str, Callable[[], Any]] | None] = queue.Queue(BUFFERED_CALLS)
        self._deadline: float | None = None
        self._problem: str | None = None
        self._thread = threading.Thread(target=self._work, name="mlflow", daemon=True)
        if enabled:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            import mlflow.entities
            import mlflow.tracking  # noqa: F401 (imported here: a first import racing in two threads breaks mlflow)

            self._thread.start()

    @property
    def uri(self) -> str:
        import mlflow

        return mlflow.get_tracking_uri()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._submit(f"log metrics at step {step}", lambda: self._client.log_batch(self.run_id, metrics=items))

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        """Queue an upload of `directory`; it must stay in place until `finish` returns."""
        self._submit(f"upload {artifact_path}",
                     lambda: self._client.log_artifacts(self.run_id, str(directory), artifact_path))

    def log_spec(self) -> None:
        """The job as submitted, as the artifact spec/peftjob.yaml, for reproducing the run."""
        import yaml

        body = self.job.model_dump(mode="json", by_alias=True, exclude_none=True)
        body.pop("status", None)
        text = yaml.safe_dump(body, sort_keys=False)

        def upload() -> None:
            with tempfile.TemporaryDirectory() as folder:
                Path(folder, "peftjob.yaml").write_text(text)
                self._client.log_artifact(self.run_id, str(Path(folder, "peftjob.yaml")), "spec")

        self._submit("upload the spec", upload)

    def finish(self, status: str, trained: bool = True, interrupted: bool = False) -> None:
        """Close the run with `status` after everything queued, waiting at most FLUSH_SECONDS.

        A run that had FINISHED before and to which this attempt added no training stays FINISHED: a rerun of a
        finished job that fails (say, its output became unwritable) does not rewrite a good run's history."""
        if not self.enabled or self._deadline is not None:
            return

        def close() -> None:
            final = "FINISHED" if self.previous_status == "FINISHED" and not trained else status
            if self._monitor is not None:
                self._monitor.finish()
            self._client.set_terminated(self.run_id, final)

        self._submit(f"close the run as {status}", close)
        # Failing calls are retried until the deadline; one in flight (a slow first open) may finish after it.
        retrying = INTERRUPT_FLUSH_SECONDS if interrupted or self.run_id is None else FLUSH_SECONDS
        self._deadline = time.monotonic() + retrying
        self._calls.put(None)
        self._thread.join(INTERRUPT_FLUSH_SECONDS if interrupted else FLUSH_SECONDS)
        if self._thread.is_alive() or self._problem:
            left = self._calls.qsize()
            log.warning("MLflow at %s: %s; %d call(s) not recorded", self.uri, self._problem or "still busy", left)

    def describe(self) -> str:
        """One line for the user: where the run is, or why there is none."""
        if self.run_id is None:
            return f"no MLflow run recorded at {self.uri}: {self._problem or 'tracking is off'}"
        return f"MLflow run {self.run_id} in {self.uri}"

    # ------------------------------------------------------------------------------------ the worker thread

    def _submit(self, what: str, call: Callable[[], Any]) -> None:
        if not self.enabled or self._deadline is not None:
            return
        try:
            self._calls.put_nowait((what, call))
        except queue.Full:
            log.warning("MLflow: %d calls queued while %s is unreachable: dropped %s", BUFFERED_CALLS, self.uri, what)

    def _work(self) -> None:
        self._retry("open the run", self._open)
        while (item := self._calls.get()) is not None:
            what, call = item
            if self.run_id is None:
                self._retry("open the run", self._open)
            if self.run_id is not None:
                self._retry(what, call)

    def _retry(self, what: str, call: Callable[[], Any]) -> bool:
        """Call until it succeeds or the finish deadline passes; warn once per outage, and when it ends."""
        attempt = 0
        while True:
            try:
                call()
            except Exception as error:  # noqa: BLE001 (any tracking failure must leave training alone)
                problem = f"cannot {what} ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                if self._problem is None:
                    log.warning("MLflow at %s: %s; retrying in the background, training goes on", self.uri, problem)
                self._problem = problem
                pause = BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)]
                attempt += 1
                if self._deadline is not None and time.monotonic() + pause > self._deadline:
                    return False
                time.sleep(pause)
                continue
            if self._problem is not None:
                log.info("MLflow at %s reachable again after %d failed attempt(s)", self.uri, attempt)
                self._problem = None
            return True

    def _open(self) -> None:
        with store_lock():
            self.run_id = self._find_or_create_run()
        if self.job.spec.tracking.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=self.previous_status is not None)
            self._monitor.start()
        if self._on_open is not None:
            self._on_open(self.run_id)

    def _find_or_create_run(self) -> str:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        tracking = self.job.spec.tracking
        self._client = MlflowClient()
        experiment = self._client.get_experiment_by_name(tracking.experiment)
        experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(tracking.experiment)
        run_name = tracking.run_name or self.job.metadata.name
        found = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`{TAG_LINEAGE}` = '{self.lineage_id}'", max_results=1,
            order_by=["start_time ASC"],
        )
        if found:
            run = found[0]
            self.previous_status = run.info.status
            self._client.update_run(run.info.run_id, status="RUNNING", name=run_name)
            log.info("MLflow: continuing run %s of this training", run.info.run_id)
            return run.info.run_id
        run = self._client.create_run(
            experiment_id, run_name=run_name, tags={**job_tags(self.job), TAG_LINEAGE: self.lineage_id}
        )
        items = [Param(key, value) for key, value in flatten(self.params).items()]
        for start in range(0, len(items), 100):
            self._client.log_batch(run.info.run_id, params=items[start : start + 100])
        return run.info.run_id
