"""PEFTJob -> the Kubernetes objects that run it. Pure: same job and settings in, same objects out.

One ConfigMap (the job as the trainer reads it, plus the DeepSpeed config), one headless Service (stable DNS
names for the gang) and one Pod per worker. Every object is owned by the PEFTJob, so deleting the job removes
them. The trainer's side of the contract (file paths, ports, environment names) comes from
`peftjob_trainer.api.contract`; nothing here restates it.
"""

from __future__ import annotations

import json
from typing import Any

from peftjob_trainer.api import contract
from peftjob_trainer.api import API_GROUP, API_VERSION, KIND, PEFTJob, worker_pod_name
from peftjob_trainer.api.spec import SecretRef
from peftjob_trainer.api.deepspeed_config import deepspeed_config

from .settings import OperatorSettings

MANAGER = "peftjob-operator"
JOB_LABEL = f"{API_GROUP}/job-name"
INDEX_LABEL = f"{API_GROUP}/worker-index"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONTAINER = "trainer"
CONFIG_VOLUME = "config"
SHM_VOLUME = "dshm"
# The trainer image's entry point (trainer/__main__.py), rendered explicitly so what runs is visible in the Pod.
TRAINER_COMMAND = ("python", "-m", "peftjob_trainer")


def render_job(job: PEFTJob, settings: OperatorSettings | None = None) -> list[dict[str, Any]]:
    """All children of a job, in the order they should be created (config and DNS before pods)."""
    settings = settings or OperatorSettings()
    job = effective_job(job, settings)
    return [render_config_map(job), render_service(job)] + [
        render_pod(job, index, settings) for index in range(job.spec.workers.replicas)
    ]


def effective_job(job: PEFTJob, settings: OperatorSettings) -> PEFTJob:
    """The job with the operator's defaults filled in where the user left them out (what the trainer runs)."""
    spec = job.spec
    tracking = spec.tracking
    if tracking.mlflow_tracking_uri is None and settings.mlflow_tracking_uri:
        tracking = tracking.model_copy(update={"mlflow_tracking_uri": settings.mlflow_tracking_uri})
    output = spec.output
    if output.s3_endpoint_url is None and settings.s3_endpoint_url:
        output = output.model_copy(update={"s3_endpoint_url": settings.s3_endpoint_url})
    if output.credentials_secret is None and settings.s3_credentials_secret:
        output = output.model_copy(update={"credentials_secret": SecretRef(name=settings.s3_credentials_secret)})
    return job.model_copy(update={"spec": spec.model_copy(update={"tracking": tracking, "output": output})})


def config_map_name(job_name: str) -> str:
    return f"{job_name}-config"


def service_name(job_name: str) -> str:
    """The headless Service is named after the job: pods are `<job>-worker-<i>.<job>`."""
    return job_name


def master_address(job: PEFTJob) -> str:
    """Worker 0's stable DNS name (resolvable through the pod's search path in any cluster domain)."""
    name = job.metadata.name
    address = f"{worker_pod_name(name, 0)}.{service_name(name)}"
    return f"{address}.{job.metadata.namespace}.svc" if job.metadata.namespace else address


def job_labels(job: PEFTJob, component: str) -> dict[str, str]:
    """Recommended labels plus the job label every child carries (the operator selects on it)."""
    return {
        "app.kubernetes.io/name": "peftjob",
        "app.kubernetes.io/instance": job.metadata.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "peftjob",
        "app.kubernetes.io/managed-by": MANAGER,
        JOB_LABEL: job.metadata.name,
    }


def owner_reference(job: PEFTJob) -> dict[str, Any]:
    """Makes the PEFTJob the controller of a child, so Kubernetes garbage-collects it with the job."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: PEFTJob, name: str, component: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "labels": job_labels(job, component) | (extra_labels or {}),
        "ownerReferences": [owner_reference(job)],
    }
    if job.metadata.namespace:
        metadata["namespace"] = job.metadata.namespace
    return metadata


def render_config_map(job: PEFTJob) -> dict[str, Any]:
    """The job exactly as the trainer validates it, and the DeepSpeed config derived from it."""
    document = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {
            key: value
            for key, value in {
                "name": job.metadata.name,
                "namespace": job.metadata.namespace,
                "uid": job.metadata.uid,
            }.items()
            if value
        },
        "spec": job.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, config_map_name(job.metadata.name), "config"),
        "data": {
            contract.CONFIG_FILE: json.dumps(document, indent=2, sort_keys=True),
            contract.DEEPSPEED_CONFIG_FILE: json.dumps(deepspeed_config(job.spec), indent=2, sort_keys=True),
        },
    }


def render_service(job: PEFTJob) -> dict[str, Any]:
    """Headless: gives each worker a DNS record, even before it is ready (rendezvous happens before readiness)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(job.metadata.name), "workers"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: job.metadata.name},
            "ports": [
                {"name": "rendezvous", "port": contract.MASTER_PORT, "targetPort": contract.MASTER_PORT},
                {"name": "progress", "port": contract.PROGRESS_PORT, "targetPort": contract.PROGRESS_PORT},
            ],
        },
    }


def render_pod(job: PEFTJob, index: int, settings: OperatorSettings) -> dict[str, Any]:
    """Worker `index` of the gang: stable hostname, the contract's environment, no Kubernetes API rights."""
    workers = job.spec.workers
    scheduling = job.spec.scheduling
    name = worker_pod_name(job.metadata.name, index)
    extra_labels = {INDEX_LABEL: str(index)}
    if scheduling.queue_name:
        extra_labels[QUEUE_LABEL] = scheduling.queue_name
    spec: dict[str, Any] = {
        "hostname": name,
        "subdomain": service_name(job.metadata.name),
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(job, index, settings)],
        "volumes": [
            {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(job.metadata.name)}},
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": workers.shared_memory_size}},
            *workers.volumes,
        ],
    }
    optional = {
        "nodeSelector": workers.node_selector or None,
        "tolerations": workers.tolerations or None,
        "affinity": workers.affinity,
        "priorityClassName": workers.priority_class_name,
        "serviceAccountName": workers.service_account_name,
        "schedulerName": scheduling.scheduler_name,
    }
    spec.update({key: value for key, value in optional.items() if value is not None})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(job, name, "worker", extra_labels),
        "spec": spec,
    }


def _container(job: PEFTJob, index: int, settings: OperatorSettings) -> dict[str, Any]:
    workers = job.spec.workers
    environment = contract.worker_environment(job, node_rank=index, master_addr=master_address(job))
    env: list[dict[str, Any]] = [{"name": key, "value": str(value)} for key, value in environment.items()]
    env += _credential_env(job.spec.output.credentials_secret)
    env += [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in workers.env]
    return {
        "name": CONTAINER,
        "image": workers.image or settings.trainer_image,
        "imagePullPolicy": workers.image_pull_policy,
        "command": list(TRAINER_COMMAND),
        "args": ["--config", contract.CONFIG_PATH],
        "env": env,
        "ports": [
            {"name": "rendezvous", "containerPort": contract.MASTER_PORT},
            {"name": "progress", "containerPort": contract.PROGRESS_PORT},
        ],
        "resources": _resources(job),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": contract.CONFIG_DIR, "readOnly": True},
            {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
            *workers.volume_mounts,
        ],
        "terminationMessagePath": contract.RESULT_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _credential_env(secret: SecretRef | None) -> list[dict[str, Any]]:
    """S3 keys only ever as references to a Secret: the rendered Pod never holds a credential."""
    if secret is None:
        return []
    return [
        {"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}}
        for env_name, key in (
            ("AWS_ACCESS_KEY_ID", secret.access_key_id_key),
            ("AWS_SECRET_ACCESS_KEY", secret.secret_access_key_key),
        )
    ]


def _resources(job: PEFTJob) -> dict[str, Any]:
    """The user's requests/limits, with nvidia.com/gpu set in both (Kubernetes requires them equal)."""
    workers = job.spec.workers
    resources = {kind: dict(values) for kind, values in workers.resources.items()}
    if workers.gpus_per_worker:
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})["nvidia.com/gpu"] = workers.gpus_per_worker
    return resources
