"""A worker dies mid-training (SIGKILL, as the OOM killer or a lost node would): the operator restarts the whole
gang, the trainer resumes from its S3 checkpoint, and the job still succeeds, in one MLflow run."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import NS, E2ECluster, quickstart
from tests.kube import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "quickstart-fault"
STEPS = 40
CHECKPOINT_EVERY = 5


def complete_checkpoints(s3_client: Any) -> list[str]:
    """Checkpoints whose manifest (written last) is in S3."""
    listing = s3_client.list_objects_v2(Bucket="artifacts", Prefix=f"e2e/{NAME}/{NAME}/checkpoints/")
    return sorted(item["Key"] for item in listing.get("Contents", []) if item["Key"].endswith("/manifest.json"))


def checkpoint_or_failure(cluster: E2ECluster, s3_client: Any) -> bool:
    """Stop waiting for a checkpoint as soon as the job has failed instead (the assertion then says why)."""
    return bool(complete_checkpoints(s3_client)) or cluster.status(NAME).get("phase") == "Failed"


def test_sigkill_of_a_worker_restarts_the_gang_which_resumes_from_the_checkpoint(
    cluster: E2ECluster, tiny_bert: Path, sentiment_data: dict[str, str], s3_server: Any, mlflow_server: str,
) -> None:
    manifest = quickstart(NAME, tiny_bert, sentiment_data, maxSteps=STEPS, microBatchSize=4,
                          checkpointInterval=CHECKPOINT_EVERY, evalInterval=0, logInterval=1)
    _, timeline = cluster.apply(manifest, NAME)
    s3 = s3_server.client()
    try:
        wait_for(lambda: checkpoint_or_failure(cluster, s3), timeout=600, interval=0.1,
                 what="a complete checkpoint in S3")
        assert cluster.status(NAME).get("phase") != "Failed", f"{cluster.status(NAME)}\n{cluster.worker_logs()}"
        victim = f"{NAME}-worker-1"
        cluster.node.kill(NS, victim, signal.SIGKILL)
        status = cluster.wait_phase(NAME, {"Succeeded", "Failed"}, timeout=600)
    finally:
        timeline.close()
    print(f"\ntimeline of phases of {NAME}:\n{timeline.render()}")
    assert status["phase"] == "Succeeded", f"{status}\n{cluster.worker_logs()}"

    # The kill was seen as an infrastructure failure: one gang restart, then training went on.
    assert (NS, victim, 128 + signal.SIGKILL) in cluster.node.node.exits
    assert status["restarts"] == 1
    phases = timeline.phases
    assert [p for p in phases if p != "Pending"][:2] == ["Created", "Running"]
    restart = phases.index("Restarting")
    assert "Running" in phases[restart:] and phases[-1] == "Succeeded" and "Failed" not in phases

    # The new gang resumed from the checkpoint instead of starting over.
    pods = {pod["metadata"]["name"]: pod for pod in cluster.api.list(f"/api/v1/namespaces/{NS}/pods")}
    message = pods[f"{NAME}-worker-0"]["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    resumed = json.loads(message.strip().splitlines()[-1])["resumedFromStep"]
    assert resumed and resumed % CHECKPOINT_EVERY == 0 and 0 < resumed < STEPS

    # One MLflow run for the job, its loss logged at every step from 1 to the end, without a gap.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("peftjob")  # the example names none: the default
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`peftjob.name` = '{NAME}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")})
    assert steps == list(range(1, STEPS + 1))
    assert runs[0].info.run_id == status["mlflow"]["runId"]
