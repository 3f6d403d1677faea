"""The e2e cluster: the emulator as API server, the real operator, the fake node, real kubectl, and the session's
moto S3 and MLflow servers (tests/conftest.py). A tiny BERT classifier on disk stands in for the model volume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from peftjob_operator.settings import OperatorSettings
from tests.e2e.cluster import NS, SECRET, E2ECluster, Kubectl, NodeThread, PrintingEmulator
from tests.kube import EmulatorServer, OperatorThread
from tests.trainer import tiny

if TYPE_CHECKING:
    from tests.conftest import S3Server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.bert_classifier(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def sentiment_data(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Train and eval sets in the S3 bucket `data`, as a cluster job would read them."""
    local = tmp_path_factory.mktemp("data")
    bucket = s3_server.bucket("data")
    client = s3_server.client()
    uris = {}
    for split, count, seed in (("train", 96, 1), ("eval", 32, 2)):
        path = tiny.sentiment(local / f"{split}.jsonl", count, seed)
        client.upload_file(str(path), "data", f"sentiment/{split}.jsonl")
        uris[split] = f"{bucket}/sentiment/{split}.jsonl"
    return uris


@pytest.fixture
def cluster(tmp_path: Path, s3_server: S3Server, mlflow_server: str) -> Iterator[E2ECluster]:
    """A fresh cluster per test; the operator gets the chart's defaults for MLflow and S3."""
    settings = OperatorSettings(
        trainer_image="ghcr.io/peftjob/trainer:e2e",
        mlflow_tracking_uri=mlflow_server,
        s3_endpoint_url=s3_server.endpoint,
        s3_credentials_secret=SECRET,
        progress_interval=0.5,
    )
    s3_server.bucket("artifacts")
    with EmulatorServer(PrintingEmulator()) as api:
        kubectl = Kubectl(api.url, tmp_path, NS)
        kubectl("apply", "--validate=false", "-f", str(ROOT / "crds" / "peftjob.yaml"))
        literals = [f"--from-literal={key}={value}" for key, value in s3_server.env.items()]
        secret = kubectl("create", "secret", "generic", SECRET, *literals, "--dry-run=client", "-o", "yaml")
        kubectl("apply", "--validate=false", "-f", "-", stdin=secret)
        with NodeThread(api.url, tmp_path / "node") as node, OperatorThread(api.url, settings) as operator:
            yield E2ECluster(api, kubectl, node, operator, tmp_path)
