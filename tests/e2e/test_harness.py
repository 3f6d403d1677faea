"""The e2e harness itself: kubectl against the emulator prints custom columns; the fake node runs pods as a
kubelet would (environment, mounted files, rewritten master address, status and exit codes, deletion)."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Kubectl, NodeThread, PrintingEmulator
from tests.kube import EmulatorServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"

# Reports what the process saw, as the worker's result, then exits with EXIT (default 0).
REPORT = """
import json, os, pathlib, sys
seen = {name: os.environ.get(name) for name in ("MASTER_ADDR", "MASTER_PORT", "PET_MASTER_ADDR", "TOKEN", "POD")}
seen["config"] = pathlib.Path(os.environ["PEFTJOB_CONFIG"]).read_text()
pathlib.Path(os.environ["PEFTJOB_RESULT_FILE"]).write_text(json.dumps(seen))
print("log line before exit")
sys.exit(int(os.environ.get("EXIT", "0")))
"""


@pytest.fixture
def api() -> Iterator[EmulatorServer]:
    with EmulatorServer(PrintingEmulator()) as server:
        yield server


@pytest.fixture
def node(api: EmulatorServer, tmp_path: Path) -> Iterator[NodeThread]:
    with NodeThread(api.url, tmp_path / "node") as running:
        yield running


def pod(name: str, command: list[str], env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "trainer", "image": "trainer:test", "command": command,
                "env": [
                    {"name": "MASTER_ADDR", "value": "job-worker-0.job.default.svc"},
                    {"name": "PET_MASTER_ADDR", "value": "job-worker-0.job.default.svc"},
                    {"name": "MASTER_PORT", "value": "29500"},
                    {"name": "PEFTJOB_CONFIG", "value": "/etc/peftjob/config.json"},
                    {"name": "PEFTJOB_RESULT_FILE", "value": "/dev/termination-log"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    *(env or []),
                ],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/peftjob", "readOnly": True}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": [{"name": "config", "configMap": {"name": "job-config"}}],
        },
    }


def create_inputs(api: EmulatorServer) -> None:
    api.create(f"/api/v1/namespaces/{NS}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "job-config"},
        "data": {"config.json": '{"spec": "from the ConfigMap"}'},
    })
    api.create(f"/api/v1/namespaces/{NS}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "data": {"token": base64.b64encode(b"s3cr3t").decode()},
    })


def terminated(api: EmulatorServer, name: str) -> dict[str, Any]:
    def state() -> dict[str, Any] | None:
        status = (api.get(f"{PODS}/{name}") or {}).get("status", {})
        statuses = status.get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("terminated")

    return wait_for(state, timeout=30, what=f"{name} to terminate")


def test_pod_runs_with_its_environment_files_and_a_loopback_master(api: EmulatorServer, node: NodeThread) -> None:
    create_inputs(api)
    api.create(PODS, pod("job-worker-0", ["python", "-c", REPORT]))
    state = terminated(api, "job-worker-0")
    seen = json.loads(state["message"])
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert seen["MASTER_ADDR"] == seen["PET_MASTER_ADDR"] == "127.0.0.1"
    assert seen["MASTER_PORT"] != "29500" and int(seen["MASTER_PORT"]) > 0
    assert (seen["TOKEN"], seen["POD"]) == ("s3cr3t", "job-worker-0")
    assert seen["config"] == '{"spec": "from the ConfigMap"}'
    status = api.get(f"{PODS}/job-worker-0")["status"]
    assert (status["phase"], status["podIP"]) == ("Succeeded", "127.0.0.1")


def test_pods_of_one_gang_share_one_master_port(api: EmulatorServer, node: NodeThread) -> None:
    create_inputs(api)
    for index in range(2):
        api.create(PODS, pod(f"job-worker-{index}", ["python", "-c", REPORT]))
    ports = {json.loads(terminated(api, f"job-worker-{i}")["message"])["MASTER_PORT"] for i in range(2)}
    assert len(ports) == 1


def test_failed_process_reports_its_exit_code_and_falls_back_to_logs(api: EmulatorServer, node: NodeThread) -> None:
    create_inputs(api)
    api.create(PODS, pod("job-worker-0", ["python", "-c", "print('the reason'); raise SystemExit(3)"]))
    state = terminated(api, "job-worker-0")
    assert (state["exitCode"], state["reason"]) == (3, "Error")
    assert "the reason" in state["message"]
    assert api.get(f"{PODS}/job-worker-0")["status"]["phase"] == "Failed"


def test_killed_process_reports_128_plus_the_signal(api: EmulatorServer, node: NodeThread) -> None:
    create_inputs(api)
    api.create(PODS, pod("job-worker-0", ["python", "-c", "import time; time.sleep(600)"]))
    wait_for(lambda: api.get(f"{PODS}/job-worker-0").get("status", {}).get("phase") == "Running", what="Running")
    node.kill(NS, "job-worker-0", signal.SIGKILL)
    assert terminated(api, "job-worker-0")["exitCode"] == 128 + signal.SIGKILL


def test_deleting_a_pod_stops_its_process(api: EmulatorServer, node: NodeThread) -> None:
    create_inputs(api)
    api.create(PODS, pod("job-worker-0", ["python", "-c", "import time; time.sleep(600)"]))
    wait_for(lambda: api.get(f"{PODS}/job-worker-0").get("status", {}).get("phase") == "Running", what="Running")
    api.delete(f"{PODS}/job-worker-0")
    wait_for(lambda: [exit for exit in node.node.exits if exit[1] == "job-worker-0"], what="the process to stop")
    assert node.node.exits[-1] == (NS, "job-worker-0", 128 + signal.SIGTERM)


def test_kubectl_get_shows_the_crd_printer_columns(api: EmulatorServer, tmp_path: Path) -> None:
    kubectl = Kubectl(api.url, tmp_path)
    kubectl("apply", "--validate=false", "-f", str(ROOT / "crds" / "peftjob.yaml"))
    kubectl("apply", "--validate=false", "-f", str(ROOT / "examples" / "quickstart-cpu.yaml"))
    api.patch(f"/apis/peft.dev/v1alpha1/namespaces/{NS}/peftjobs/quickstart/status",
              {"status": {"phase": "Running", "method": "lora", "progress": {"percent": 42.5, "loss": 0.25}}})
    header, row = kubectl("get", "peftjobs").splitlines()
    assert header.split() == ["NAME", "PHASE", "METHOD", "MODEL", "PROGRESS", "LOSS", "AGE"]
    assert row.split()[:6] == ["quickstart", "Running", "lora", "./models/all-MiniLM-L6-v2", "42.5", "0.25"]
    result = kubectl("get", "pj", "quickstart", check=False)
    assert "Running" in result
    assert kubectl("get", "peftjob", "quickstart", "-o", "jsonpath={.status.phase}") == "Running"
