"""Session-wide real servers on loopback, shared by the trainer and e2e tests: an MLflow tracking server
(sqlite backend) and a moto S3 server. Both bind 127.0.0.1 on a free port and stop at the end of the session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peftjob_trainer.local_run import free_port

SERVER_START_SECONDS = 90


def wait_http(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    """Wait until `url` answers 200 (the server is ready) or the server process dies."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


def start_mlflow(root: Path, port: int) -> subprocess.Popen[bytes]:
    """A real `mlflow server` on 127.0.0.1:`port` with its sqlite store and artifacts under `root`, answering
    /health when this returns (stop it with `stop_mlflow`; starting again on the same root keeps its runs)."""
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with (root / "server.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", process, SERVER_START_SECONDS)
    except RuntimeError:
        stop_mlflow(process)
        raise
    return process


def stop_mlflow(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM its process group (the server and its workers), SIGKILL what is left after 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real `mlflow server` with a sqlite backend store."""
    port = free_port()
    process = start_mlflow(tmp_path_factory.mktemp("mlflow"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_mlflow(process)


@dataclass(frozen=True)
class S3Server:
    """A moto S3 endpoint and the environment a client (or a trainer process) needs to reach it."""

    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):  # noqa: ANN201 (a boto3 client)
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    def bucket(self, name: str) -> str:
        """Create bucket `name` (if missing) and return its s3:// URI."""
        client = self.client()
        if name not in [bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_folder(self, folder: Path, uri: str) -> str:
        """Every file under `folder` to the s3:// prefix `uri` (its bucket created if missing); returns `uri`."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket(bucket)
        client = self.client()
        for path in folder.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")
        return uri


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real moto S3 server (ThreadedMotoServer) on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Credentials for the moto server in this process's environment (for in-process boto3 clients)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server
