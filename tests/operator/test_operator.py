"""The real kopf operator against the KMock API emulator: pod phases and exit codes are driven through the API,
the PEFTJob's status, children and Events are read back through it. One operator serves the whole module."""

from __future__ import annotations

import contextlib
import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from peftjob_operator import metrics
from peftjob_operator.settings import OperatorSettings
from peftjob_trainer.api import contract
from peftjob_trainer.api.result import TrainerResult
from peftjob_trainer.api.status import MlflowRun
from peftjob_trainer.local_run import free_port
from peftjob_trainer.progress_server import ProgressServer
from tests.kube import EmulatorServer, OperatorThread, wait_for

NS = "ml"
JOBS = f"/apis/peft.dev/v1alpha1/namespaces/{NS}/peftjobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
SETTINGS = OperatorSettings(progress_interval=0.25, trainer_image="trainer:test", s3_credentials_secret="s3")


class Cluster:
    """The emulator and the (restartable) operator in front of it, with the few verbs tests need."""

    def __init__(self, api: EmulatorServer, metrics_url: str) -> None:
        self.api = api
        self.metrics_url = metrics_url
        self.operator = OperatorThread(api.url, SETTINGS)

    def restart_operator(self) -> None:
        self.operator.stop()
        self.operator = OperatorThread(self.api.url, SETTINGS)

    def submit(self, name: str, replicas: int = 2, run_policy: dict[str, Any] | None = None,
               spec: dict[str, Any] | None = None) -> dict[str, Any]:
        document = {
            "apiVersion": "peft.dev/v1alpha1",
            "kind": "PEFTJob",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec or {
                "model": {"source": "gpt2"},
                "method": {"lora": {"r": 4}},
                "data": {"train": {"source": "s3://data/train.jsonl"}},
                "workers": {"replicas": replicas},
                "runPolicy": run_policy or {},
            },
        }
        return self.api.create(JOBS, document)

    def job(self, name: str) -> dict[str, Any] | None:
        return self.api.get(f"{JOBS}/{name}")

    def status(self, name: str) -> dict[str, Any]:
        return (self.job(name) or {}).get("status") or {}

    def pods(self, name: str) -> list[dict[str, Any]]:
        return sorted(self.api.list(PODS, f"peft.dev/job-name={name}"), key=lambda pod: pod["metadata"]["name"])

    def wait_pods(self, name: str, count: int, exclude_uids: set[str] = frozenset()) -> list[dict[str, Any]]:
        def fresh() -> list[dict[str, Any]] | None:
            pods = [p for p in self.pods(name) if p["metadata"]["uid"] not in exclude_uids]
            return pods if len(pods) == count else None
        return wait_for(fresh, what=f"{count} new pods of {name}")

    def wait_phase(self, name: str, phase: str, **expected: Any) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            ok = status.get("phase") == phase and all(status.get(k) == v for k, v in expected.items())
            return status if ok else None
        return wait_for(reached, what=f"{name} phase {phase} {expected}; status {self.status(name)}")

    def set_pod(self, pod: str, phase: str, exit_code: int | None = None, message: str = "",
                reason: str | None = None, pod_ip: str = "127.0.0.1") -> None:
        """What the kubelet would report: phase, and the trainer container's termination state."""
        status: dict[str, Any] = {"phase": phase, "podIP": pod_ip}
        if reason:
            status["reason"] = reason
        if exit_code is not None:
            terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                          "message": message}
            status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
        self.api.patch(f"{PODS}/{pod}/status", {"status": status})

    def run_all(self, name: str) -> None:
        for pod in self.pods(name):
            self.set_pod(pod["metadata"]["name"], "Running")
        self.wait_phase(name, "Running")

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.api.list(f"/api/v1/namespaces/{NS}/events")
                if e.get("involvedObject", {}).get("name") == name]

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next(c for c in self.status(name).get("conditions", []) if c["type"] == type_)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The emulator, the operator, and the operator's /metrics endpoint (as `python -m peftjob_operator` runs it)."""
    with EmulatorServer() as api:
        server = metrics.serve(free_port(), "127.0.0.1")
        cluster = Cluster(api, f"http://127.0.0.1:{server.server_port}/metrics")
        try:
            yield cluster
        finally:
            cluster.operator.stop()
            server.shutdown()
            server.server_close()


def uids(pods: list[dict[str, Any]]) -> set[str]:
    return {pod["metadata"]["uid"] for pod in pods}


def test_create_makes_every_child_with_env_labels_and_owner_references(cluster: Cluster) -> None:
    job = cluster.submit("create", replicas=2)
    pods = cluster.wait_pods("create", 2)
    status = cluster.wait_phase("create", "Created", workers={"active": 2, "succeeded": 0, "failed": 0})
    assert status["method"] == "lora"
    config_map = cluster.api.get(f"/api/v1/namespaces/{NS}/configmaps/create-config")
    service = cluster.api.get(f"/api/v1/namespaces/{NS}/services/create")
    for obj in [config_map, service, *pods]:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "create"
    env = {e["name"]: e for e in pods[1]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"]["value"] == f"create-worker-0.create.{NS}.svc"
    assert env["NODE_RANK"]["value"] == "1" and env["WORLD_SIZE"]["value"] == "2"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3"
    assert pods[0]["spec"]["containers"][0]["image"] == "trainer:test"
    assert json.loads(config_map["data"]["config.json"])["metadata"]["uid"] == job["metadata"]["uid"]
    assert wait_for(lambda: [e for e in cluster.events("create") if e["reason"] == "PodsCreated"])


def test_running_then_rank_zero_success_records_the_result(cluster: Cluster) -> None:
    cluster.submit("success")
    cluster.wait_pods("success", 2)
    cluster.run_all("success")
    assert cluster.condition("success", "Running")["status"] == "True"
    result = TrainerResult(artifact_uri="s3://out/success/adapter", sha256="ab" * 32, bytes=1234, steps=50,
                           mlflow_run_id="run-1")
    cluster.set_pod("success-worker-1", "Succeeded", 0)
    cluster.set_pod("success-worker-0", "Succeeded", 0, "done\n" + result.to_json())
    status = cluster.wait_phase("success", "Succeeded")
    assert status["artifact"]["sha256"] == "ab" * 32 and status["artifact"]["uri"] == "s3://out/success/adapter"
    assert status["mlflow"]["runId"] == "run-1" and status["completionTime"]
    assert (status["progress"]["step"], status["progress"]["percent"]) == (50, 100.0)
    assert cluster.condition("success", "Running")["status"] == "False"


def test_retryable_failures_restart_the_gang_until_the_backoff_limit(cluster: Cluster) -> None:
    cluster.submit("flaky", run_policy={"backoffLimit": 2})
    seen: set[str] = set()
    for restarts in (1, 2):
        pods = cluster.wait_pods("flaky", 2, exclude_uids=seen)
        seen |= uids(pods)
        cluster.run_all("flaky")
        cluster.set_pod("flaky-worker-1", "Failed", 137, "Killed")
        cluster.wait_phase("flaky", "Created", restarts=restarts)
        assert cluster.condition("flaky", "Restarting")["reason"] == "WorkerFailed"
    pods = cluster.wait_pods("flaky", 2, exclude_uids=seen)
    cluster.set_pod("flaky-worker-0", "Failed", 143)
    status = cluster.wait_phase("flaky", "Failed", restarts=2)
    assert cluster.condition("flaky", "Failed")["reason"] == "BackoffLimitExceeded"
    assert "worker 0" in status["message"] and "143" in status["message"]
    wait_for(lambda: not [p for p in cluster.pods("flaky") if p["metadata"]["name"] == "flaky-worker-1"],
             what="the surviving worker to be removed")


def test_user_error_fails_at_once_with_the_workers_message(cluster: Cluster) -> None:
    cluster.submit("usererr", run_policy={"backoffLimit": 5})
    cluster.wait_pods("usererr", 2)
    cluster.run_all("usererr")
    cluster.set_pod("usererr-worker-1", "Failed", 3, "Traceback...\ndata.train: label 7 out of range at line 12")
    cluster.wait_phase("usererr", "Failed", restarts=0)
    condition = cluster.condition("usererr", "Failed")
    assert condition["reason"] == "WorkerFailed"
    assert "worker 1" in condition["message"] and "code 3" in condition["message"]
    assert "label 7 out of range at line 12" in condition["message"]
    wait_for(lambda: not cluster.pods("usererr") or all(p["status"]["phase"] == "Failed" for p in cluster.pods("usererr")),
             what="the running worker to be removed")
    assert wait_for(lambda: [e for e in cluster.events("usererr") if e["type"] == "Warning"])


@pytest.mark.parametrize("how", ["evicted", "deleted"])
def test_eviction_or_deletion_of_a_worker_is_retried(cluster: Cluster, how: str) -> None:
    name = f"lost-{how}"
    cluster.submit(name)
    first = cluster.wait_pods(name, 2)
    cluster.run_all(name)
    if how == "evicted":
        cluster.set_pod(f"{name}-worker-0", "Failed", reason="Evicted")
    else:
        cluster.api.delete(f"{PODS}/{name}-worker-0")
    cluster.wait_pods(name, 2, exclude_uids=uids(first))
    cluster.wait_phase(name, "Created", restarts=1)
    assert cluster.condition(name, "Restarting")["reason"] == {"evicted": "Evicted", "deleted": "WorkerDeleted"}[how]


def test_suspend_removes_pods_and_resume_recreates_them(cluster: Cluster) -> None:
    cluster.submit("pause")
    first = cluster.wait_pods("pause", 2)
    cluster.run_all("pause")
    cluster.api.patch(f"{JOBS}/pause", {"spec": {"runPolicy": {"suspend": True}}})
    cluster.wait_phase("pause", "Suspended")
    wait_for(lambda: not cluster.pods("pause"), what="pods removed on suspend")
    assert cluster.condition("pause", "Suspended")["status"] == "True"
    cluster.api.patch(f"{JOBS}/pause", {"spec": {"runPolicy": {"suspend": False}}})
    cluster.wait_pods("pause", 2, exclude_uids=uids(first))
    cluster.wait_phase("pause", "Created", restarts=0)
    assert cluster.condition("pause", "Suspended")["status"] == "False"


def test_active_deadline_fails_the_job_and_removes_its_pods(cluster: Cluster) -> None:
    cluster.submit("deadline", run_policy={"activeDeadlineSeconds": 1})
    cluster.wait_pods("deadline", 2)
    for pod in cluster.pods("deadline"):
        cluster.set_pod(pod["metadata"]["name"], "Running")
    cluster.wait_phase("deadline", "Failed")
    assert cluster.condition("deadline", "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: not cluster.pods("deadline"), what="pods removed after the deadline")


def test_ttl_deletes_the_finished_job_and_its_children(cluster: Cluster) -> None:
    cluster.submit("ttl", replicas=1, run_policy={"ttlSecondsAfterFinished": 0})
    cluster.wait_pods("ttl", 1)
    cluster.set_pod("ttl-worker-0", "Succeeded", 0)
    wait_for(lambda: cluster.job("ttl") is None, what="the job deleted by its TTL")
    wait_for(lambda: not cluster.pods("ttl") and not cluster.api.get(f"/api/v1/namespaces/{NS}/services/ttl"),
             what="children garbage-collected")


def test_deleting_a_job_removes_its_children(cluster: Cluster) -> None:
    cluster.submit("bye")
    cluster.wait_pods("bye", 2)
    assert wait_for(lambda: "peft.dev/cleanup" in ((cluster.job("bye") or {})["metadata"].get("finalizers") or []),
                    what="the operator's finalizer on the job")
    cluster.api.delete(f"{JOBS}/bye")
    wait_for(lambda: cluster.job("bye") is None, what="the job gone (finalizer released)")
    wait_for(lambda: not cluster.pods("bye"), what="pods gone")
    assert cluster.api.get(f"/api/v1/namespaces/{NS}/configmaps/bye-config") is None


def new_mlflow_run(server: str) -> str:
    created = requests.post(f"{server}/api/2.0/mlflow/runs/create", json={"experiment_id": "0"}, timeout=30)
    return created.json()["run"]["info"]["run_id"]


@contextlib.contextmanager
def rank0_progress() -> Iterator[tuple[ProgressServer, str]]:
    """The trainer's real progress server on a loopback address of its own, as a pod has its IP."""
    pod_ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    progress = ProgressServer(total_steps=200)
    assert progress.serve(contract.PROGRESS_PORT, host=pod_ip) == contract.PROGRESS_PORT
    try:
        yield progress, pod_ip
    finally:
        progress.close()


def test_progress_is_polled_from_rank_zero_and_deleting_the_job_kills_its_mlflow_run(
        cluster: Cluster, mlflow_server: str) -> None:
    """Rank 0 runs the trainer's real progress server (on a loopback address of its own, as a pod has its IP);
    the MLflow run is a real one on the session's MLflow server."""
    run_id = new_mlflow_run(mlflow_server)
    with rank0_progress() as (progress, pod_ip):
        progress.update(step=50, loss=0.75, throughput=8.0, eta_seconds=90.0, mlflow=MlflowRun(run_id=run_id))
        cluster.submit("watched", spec={**VALID_SPEC, "workers": {"replicas": 2},
                                      "tracking": {"mlflowTrackingUri": mlflow_server}})
        for pod in cluster.wait_pods("watched", 2):
            cluster.set_pod(pod["metadata"]["name"], "Running", pod_ip=pod_ip)
        status = wait_for(lambda: (s := cluster.status("watched")).get("progress", {}).get("step") == 50 and s,
                          what="the progress polled from rank 0")
        assert status["phase"] == "Running" and status["mlflow"]["runId"] == run_id
        assert {k: status["progress"][k] for k in ("totalSteps", "percent", "loss", "throughput", "eta")} == {
            "totalSteps": 200, "percent": 25.0, "loss": 0.75, "throughput": 8.0, "eta": "1m30s"}
        progress.update(step=150, eta_seconds=30.0)
        wait_for(lambda: cluster.status("watched").get("progress", {}).get("percent") == 75.0,
                 what="the next poll")
    cluster.api.delete(f"{JOBS}/watched")
    wait_for(lambda: cluster.job("watched") is None, what="the job deleted once its finalizer ran")
    run = requests.get(f"{mlflow_server}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30).json()
    assert run["run"]["info"]["status"] == "KILLED"
    assert wait_for(lambda: [e for e in cluster.events("watched") if e["reason"] == "MlflowRunKilled"])


def test_a_job_that_fails_for_good_leaves_its_mlflow_run_failed_not_running(
        cluster: Cluster, mlflow_server: str) -> None:
    """Rank 0 was SIGKILLed, so no trainer closed its run: the operator does, once the job is Failed."""
    run_id = new_mlflow_run(mlflow_server)
    with rank0_progress() as (progress, pod_ip):
        progress.update(step=10, mlflow=MlflowRun(run_id=run_id))
        cluster.submit("doomed", spec={**VALID_SPEC, "workers": {"replicas": 2}, "runPolicy": {"backoffLimit": 0},
                                       "tracking": {"mlflowTrackingUri": mlflow_server}})
        for pod in cluster.wait_pods("doomed", 2):
            cluster.set_pod(pod["metadata"]["name"], "Running", pod_ip=pod_ip)
        wait_for(lambda: cluster.status("doomed").get("mlflow", {}).get("runId") == run_id, what="the polled run id")
    cluster.set_pod("doomed-worker-0", "Failed", 137, "Killed")
    cluster.wait_phase("doomed", "Failed")
    assert wait_for(lambda: [e for e in cluster.events("doomed") if e["reason"] == "MlflowRunFailed"])
    run = requests.get(f"{mlflow_server}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30).json()
    assert run["run"]["info"]["status"] == "FAILED"


def test_spec_edits_other_than_run_policy_are_refused_with_an_event(cluster: Cluster) -> None:
    cluster.submit("edit")
    pods = cluster.wait_pods("edit", 2)
    cluster.wait_phase("edit", "Created")
    cluster.api.patch(f"{JOBS}/edit", {"spec": {"method": {"lora": {"r": 64}}}})
    refused = wait_for(lambda: [e for e in cluster.events("edit") if e["reason"] == "SpecChangeRefused"])
    assert "method.lora.r" in refused[0]["message"]
    assert uids(cluster.pods("edit")) == uids(pods)
    config = json.loads(cluster.api.get(f"/api/v1/namespaces/{NS}/configmaps/edit-config")["data"]["config.json"])
    assert config["spec"]["method"]["lora"]["r"] == 4


def test_operator_restarted_mid_job_converges_without_duplicate_pods(cluster: Cluster) -> None:
    cluster.submit("restart")
    pods = cluster.wait_pods("restart", 2)
    cluster.wait_phase("restart", "Created")
    cluster.operator.stop()
    for pod in pods:
        cluster.set_pod(pod["metadata"]["name"], "Running")
    cluster.restart_operator()
    cluster.wait_phase("restart", "Running", restarts=0)
    assert uids(cluster.pods("restart")) == uids(pods)


VALID_SPEC = {
    "model": {"source": "gpt2"},
    "method": {"lora": {"r": 4}},
    "data": {"train": {"source": "s3://data/train.jsonl"}},
}
# (where, value, what the message must name): each breaks exactly one rule of the API model.
INVALID = [
    ("model", None, "spec.model"),
    ("model.source", "", "spec.model.source"),
    ("model.task", "translation", "spec.model.task"),
    ("model.dtype", "int4", "spec.model.dtype"),
    ("model.numLabels", 1, "spec.model.numLabels"),
    ("model.revison", "main", "spec.model.revison"),
    ("method", {}, "spec.method"),
    ("method.adapter", {"bottleneckSize": 8}, "spec.method"),
    ("method.lora.r", 0, "spec.method.lora.r"),
    ("method.lora.alpha", -1, "spec.method.lora.alpha"),
    ("method.lora.dropout", 1.5, "spec.method.lora.dropout"),
    ("method.lora.targetPattern", "([", "spec.method.lora.targetPattern"),
    ("method.lora.targetModules", [], "spec.method.lora.targetModules"),
    ("data", None, "spec.data"),
    ("data.train", None, "spec.data.train"),
    ("data.maxLength", 0, "spec.data.maxLength"),
    ("training", {"learningRate": 0}, "spec.training.learningRate"),
    ("training", {"epochs": -1}, "spec.training.epochs"),
    ("training", {"scheduler": "step"}, "spec.training.scheduler"),
    ("training", {"microBatchSize": 0}, "spec.training.microBatchSize"),
    ("deepspeed", {"zeroStage": 4}, "spec.deepspeed.zeroStage"),
    ("deepspeed", {"zeroStage": 2, "offloadParam": "cpu"}, "spec.deepspeed"),
    ("workers", {"replicas": 0}, "spec.workers.replicas"),
    ("workers", {"sharedMemorySize": "lots"}, "spec.workers.sharedMemorySize"),
    ("workers", {"resources": {"requestz": {}}}, "spec.workers.resources"),
    ("workers", {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}, "spec.workers.env"),
    ("output", {"secretAccessKey": "x"}, "spec.output"),
    ("output", {"uri": "s3://key:secret@bucket/x"}, "spec.output.uri"),
    ("runPolicy", {"backoffLimit": -1}, "spec.runPolicy.backoffLimit"),
    ("tracking", {"mlflowTrackingUri": "http://u:p@mlflow"}, "spec.tracking.mlflowTrackingUri"),
]


def invalid_spec(where: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(VALID_SPEC)
    *parents, leaf = where.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    if leaf == "adapter":
        node[leaf] = value  # a second method next to lora
    elif value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


def test_invalid_jobs_fail_naming_the_field_while_valid_ones_are_served(cluster: Cluster) -> None:
    assert len(INVALID) >= 25
    names = [f"invalid-{i}" for i in range(len(INVALID))]
    for name, (where, value, _) in zip(names, INVALID):
        cluster.submit(name, spec=invalid_spec(where, value))
    cluster.submit("valid-among-invalid")
    cluster.wait_pods("valid-among-invalid", 2)
    for name, (where, _, field) in zip(names, INVALID):
        status = cluster.wait_phase(name, "Failed")
        assert cluster.condition(name, "Failed")["reason"] == "InvalidSpec", where
        assert field in status["message"], (where, status["message"])
        assert not cluster.pods(name)
    events = wait_for(lambda: [e for e in cluster.events("invalid-0") if e["reason"] == "InvalidSpec"])
    assert "spec.model" in events[0]["message"]


def scrape(cluster: Cluster) -> dict[str, float]:
    """The operator's /metrics over real HTTP, as `name{label="value"}` -> value."""
    text = requests.get(cluster.metrics_url, timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_expose_jobs_by_phase_restarts_and_reconcile_latency(cluster: Cluster) -> None:
    before = scrape(cluster)
    cluster.submit("measured", run_policy={"backoffLimit": 1})
    first = cluster.wait_pods("measured", 2)
    cluster.run_all("measured")
    cluster.set_pod("measured-worker-0", "Failed", 137)
    cluster.wait_pods("measured", 2, exclude_uids=uids(first))
    cluster.wait_phase("measured", "Created", restarts=1)
    after = scrape(cluster)
    assert after["peftjob_gang_restarts_total"] - before.get("peftjob_gang_restarts_total", 0) == 1
    assert after["peftjob_reconcile_seconds_count"] > before.get("peftjob_reconcile_seconds_count", 0)
    assert after["peftjob_reconcile_seconds_sum"] > 0

    def phases_agree() -> bool:
        jobs = cluster.api.list(JOBS)
        gauge = scrape(cluster)
        return all(gauge[f'peftjob_jobs{{phase="{phase}"}}'] == sum(
            (job.get("status") or {}).get("phase") == phase for job in jobs) for phase in metrics.PHASES)
    wait_for(phases_agree, what="the phase gauge to count the jobs the API server holds")
