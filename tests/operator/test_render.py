"""Rendering is pure: a PEFTJob becomes a ConfigMap, a headless Service and one Pod per worker."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

from peftjob_operator.render import render_job
from peftjob_operator.settings import OperatorSettings
from peftjob_trainer.api import load_file, load_object
from peftjob_trainer.api.deepspeed_config import deepspeed_config

EXAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))


def job(**spec_overrides: object) -> object:
    document = {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "PEFTJob",
        "metadata": {"name": "demo", "namespace": "ml", "uid": "uid-1"},
        "spec": {
            "model": {"source": "gpt2"},
            "method": {"lora": {"r": 4}},
            "data": {"train": {"source": "s3://data/train.jsonl"}},
            "workers": {"replicas": 3, "gpusPerWorker": 2, "resources": {"limits": {"memory": "8Gi"}}},
            **spec_overrides,
        },
    }
    return load_object(document)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def env_of(pod: dict) -> dict[str, dict]:
    return {item["name"]: item for item in pod["spec"]["containers"][0]["env"]}


def test_one_config_map_one_headless_service_and_a_pod_per_worker() -> None:
    objects = render_job(job())
    assert [obj["kind"] for obj in objects] == ["ConfigMap", "Service", "Pod", "Pod", "Pod"]
    service = by_kind(objects, "Service")[0]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    pods = by_kind(objects, "Pod")
    assert [pod["metadata"]["name"] for pod in pods] == ["demo-worker-0", "demo-worker-1", "demo-worker-2"]
    assert all(pod["spec"]["hostname"] == pod["metadata"]["name"] for pod in pods)
    assert all(pod["spec"]["subdomain"] == service["metadata"]["name"] for pod in pods)


def test_env_follows_the_contract_with_worker_zero_as_master() -> None:
    pods = by_kind(render_job(job()), "Pod")
    for index, pod in enumerate(pods):
        env = env_of(pod)
        assert env["MASTER_ADDR"]["value"] == "demo-worker-0.demo.ml.svc"
        assert env["NODE_RANK"]["value"] == env["PET_NODE_RANK"]["value"] == str(index)
        assert env["NNODES"]["value"] == "3" and env["WORLD_SIZE"]["value"] == "3"


def test_config_map_holds_the_job_and_its_deepspeed_config() -> None:
    demo = job()
    config_map = render_job(demo)[0]
    assert load_object(json.loads(config_map["data"]["config.json"])).spec == demo.spec
    assert json.loads(config_map["data"]["deepspeed.json"]) == deepspeed_config(demo.spec)


def test_gpus_shm_security_and_no_api_rights() -> None:
    pod = by_kind(render_job(job(workers={"replicas": 1, "gpusPerWorker": 2, "sharedMemorySize": "16Gi"})), "Pod")[0]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["restartPolicy"] == "Never"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_credentials_only_by_secret_reference_and_operator_defaults_fill_gaps() -> None:
    settings = OperatorSettings(
        mlflow_tracking_uri="http://mlflow:5000", s3_endpoint_url="http://minio:9000", s3_credentials_secret="s3"
    )
    objects = render_job(job(), settings)
    env = env_of(by_kind(objects, "Pod")[0])
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}},
    }
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert json.loads(objects[0]["data"]["config.json"])["spec"]["output"]["s3EndpointUrl"] == "http://minio:9000"


def test_labels_owner_references_and_scheduling() -> None:
    objects = render_job(job(scheduling={"schedulerName": "volcano", "queueName": "team-a"}))
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "demo" and labels["peft.dev/job-name"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "peftjob-operator"
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "peft.dev/v1alpha1", "kind": "PEFTJob", "name": "demo", "uid": "uid-1",
                         "controller": True, "blockOwnerDeletion": True}
    pod = by_kind(objects, "Pod")[1]
    assert pod["metadata"]["labels"]["peft.dev/worker-index"] == "1"
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pod["spec"]["schedulerName"] == "volcano"


def test_rendering_is_pure() -> None:
    assert render_job(job()) == render_job(job())


def test_every_rendered_object_of_every_example_validates_against_kubernetes_1_35() -> None:
    assert EXAMPLES, "no examples found"
    problems = []
    for path in EXAMPLES:
        example = load_file(path)
        example.metadata.namespace, example.metadata.uid = "ml", "uid-1"
        for obj in render_job(example) + render_job(job()):
            try:
                kubernetes_validate.validate(obj, "1.35.0", strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{path.name} {obj['kind']} {obj['metadata']['name']}: {error.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("replicas", [1, 4])
def test_worker_count_follows_replicas(replicas: int) -> None:
    assert len(by_kind(render_job(job(workers={"replicas": replicas})), "Pod")) == replicas
