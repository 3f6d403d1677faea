"""The mission in one test: `kubectl apply -f peftjob.yaml` -> the operator's worker pods train with DeepSpeed
ZeRO-3 -> a verified adapter in S3, a finished MLflow run, a status that says where both are; `kubectl delete`
cleans up. Every part is real (kubectl, kopf operator, trainer processes, moto S3, MLflow) except the API
server (KMock, see tests/kube.py and tests/e2e/cluster.py for what the harness adds) and the kubelet
(tests/e2e/fake_node.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import NS, E2ECluster, quickstart
from tests.kube import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "quickstart-e2e"
STEPS = 12


def termination_result(pod: dict[str, Any]) -> dict[str, Any]:
    """The trainer's result JSON from a worker's termination message (the last JSON line)."""
    message = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    return json.loads(message.strip().splitlines()[-1])


def download(s3_client: Any, uri: str, target: Path) -> dict[str, Any]:
    """Fetch an adapter folder (s3://bucket/prefix/) and return its manifest."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    listing = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    for item in listing:
        local = target / item["Key"][len(prefix):].lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        s3_client.download_file(bucket, item["Key"], str(local))
    return json.loads((target / "manifest.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kubectl_apply_gives_a_verified_adapter_in_s3_and_a_finished_mlflow_run(
    cluster: E2ECluster, tiny_bert: Path, sentiment_data: dict[str, str], s3_server: Any, mlflow_server: str,
    tmp_path: Path,
) -> None:
    manifest = quickstart(NAME, tiny_bert, sentiment_data, maxSteps=STEPS, microBatchSize=8, evalInterval=6,
                          checkpointInterval=6, logInterval=1)
    # Keep every pod: rank 1 exits just after rank 0, and the default policy (Running) would delete it if the
    # operator saw rank 0 finish first.
    manifest["spec"]["runPolicy"]["cleanPodPolicy"] = "None"
    path, timeline = cluster.apply(manifest, NAME)
    try:
        status = cluster.wait_phase(NAME, {"Succeeded", "Failed"}, timeout=600)
    finally:
        timeline.close()
    print(f"\ntimeline of phases of {NAME}:\n{timeline.render()}")
    assert status["phase"] == "Succeeded", f"{status}\n{cluster.worker_logs()}"

    # Created -> Running -> Succeeded, nothing failed or restarted on the way.
    phases = timeline.phases
    assert [p for p in phases if p in ("Created", "Running", "Succeeded")] == ["Created", "Running", "Succeeded"]
    assert not {"Failed", "Restarting"} & set(phases)
    assert status["restarts"] == 0

    # Two worker pods ran the trainer as one DeepSpeed ZeRO-3 gang: each rank held about half the frozen backbone.
    def pods_by_name() -> dict[str, dict[str, Any]]:
        return {pod["metadata"]["name"]: pod for pod in cluster.api.list(f"/api/v1/namespaces/{NS}/pods")}

    wait_for(lambda: all(pod["status"]["phase"] == "Succeeded" for pod in pods_by_name().values()), timeout=60,
             what="both workers to exit")
    pods = pods_by_name()
    assert sorted(pods) == [f"{NAME}-worker-0", f"{NAME}-worker-1"]
    assert sorted(name for _, name, code in cluster.node.node.exits if code == 0) == sorted(pods)
    result = termination_result(pods[f"{NAME}-worker-0"])
    assert result["worldSize"] == 2 and result["steps"] == STEPS
    assert manifest["spec"]["deepspeed"]["zeroStage"] == 3
    backbone_bytes = (tiny_bert / "model.safetensors").stat().st_size
    assert len(result["frozenBytesPerRank"]) == 2
    assert all(0 < held < 0.6 * backbone_bytes for held in result["frozenBytesPerRank"])

    # The adapter in S3 is the one the status names, byte for byte, and peft loads it onto the backbone.
    artifact = status["artifact"]
    adapter = tmp_path / "adapter"
    files = download(s3_server.client(), artifact["uri"], adapter)["files"]
    assert sha256(adapter / "manifest.json") == artifact["sha256"]
    assert {name: sha256(adapter / name) for name in files} == {name: entry["sha256"] for name, entry in files.items()}
    assert_loads_with_peft(tiny_bert, adapter)

    # One MLflow run, FINISHED, with training and evaluation metrics at every logged step.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run = client.get_run(status["mlflow"]["runId"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["peftjob.name"] == NAME
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, STEPS + 1))
    assert any(key.startswith("eval") for key in run.data.metrics), run.data.metrics

    # kubectl shows the phase and the progress.
    header, *rows = cluster.kubectl("get", "peftjobs").splitlines()
    (row,) = [row.split() for row in rows if row.startswith(NAME)]
    columns = dict(zip(header.split(), row))
    assert (columns["PHASE"], columns["METHOD"], columns["PROGRESS"]) == ("Succeeded", "lora", "100")

    # kubectl delete removes the job and everything it owned; the adapter and the run stay.
    cluster.kubectl("delete", "-f", str(path))
    wait_for(lambda: cluster.job(NAME) is None, timeout=60, what="the PEFTJob to go")
    assert cluster.children(NAME) == {"pods": [], "services": [], "configmaps": []}
    bucket, _, prefix = artifact["uri"].removeprefix("s3://").partition("/")
    assert s3_server.client().head_object(Bucket=bucket, Key=prefix.rstrip("/") + "/manifest.json")
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def assert_loads_with_peft(backbone: Path, adapter: Path) -> None:
    """`peft` reads the exported adapter onto the base model, with exactly the weights in the file."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(backbone), adapter)
    saved = load_file(adapter / "adapter_model.safetensors")
    loaded = get_peft_model_state_dict(model)
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)
    assert any("lora_B" in key and saved[key].abs().sum() > 0 for key in saved), "LoRA B never trained"
