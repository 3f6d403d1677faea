"""The e2e cluster: tests/kube.py's emulator + what kubectl needs from an API server + the fake node.

Emulator gaps filled here, on top of those tests/kube.py fills (metadata, selectors, list kinds, garbage
collection):
6. server-side printing: `kubectl get` asks for a `meta.k8s.io/v1 Table`; the API server builds it from the
   CRD's additionalPrinterColumns. KMock returns plain objects, so kubectl falls back to NAME and AGE only and
   `kubectl get peftjobs` would not show phase and progress. PrintingEmulator builds the Table from the CRD
   stored in the emulator (applied with kubectl, as on a cluster).
7. discovery: the core group's resource list says groupVersion "/v1" (kubectl then maps no built-in kind:
   "no matches for kind Secret in version v1"), and subresources (peftjobs/status) repeat the resource's short
   names (kubectl warns that `pj` is ambiguous); the API server says "v1" and gives subresources neither.
8. no OpenAPI document (/openapi/v2, /openapi/v3): kubectl's client-side validation cannot download it, so
   the tests apply with --validate=false (the CRD's schema is checked by tests/api and tests/chart instead);
9. JSON only, no protobuf: kubectl's typed commands (`kubectl create secret`) send protobuf, so the tests
   create built-in objects the way many manifests are made anyway: `create --dry-run=client -o yaml | apply -f -`;
10. no kubelet: FakeNode (fake_node.py) runs the pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import kmock
import yaml

from tests.e2e.fake_node import FakeNode
from tests.kube import Emulator, EmulatorServer, OperatorThread, _LoopThread, wait_for

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
CRDS = "customresourcedefinitions"
NS = "default"
SECRET = "s3-credentials"
JOBS = f"/apis/peft.dev/v1alpha1/namespaces/{NS}/peftjobs"


@attrs.define(kw_only=True)
class PrintingEmulator(Emulator):
    """Emulator + Table responses for custom resources and discovery without subresource short names."""

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        columns = self._printer_columns(request)
        return _table(listing["items"], columns) if columns is not None else listing

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        obj = await super()._serve_fetch(request)
        columns = self._printer_columns(request)
        return _table([obj], columns) if columns is not None else obj

    async def _serve_version(self, request: kmock.Request) -> Any:
        listing = await super()._serve_version(request)
        listing["groupVersion"] = listing["groupVersion"].lstrip("/")  # the core group is "v1", not "/v1"
        for resource in listing["resources"]:
            if "/" in resource["name"]:
                resource["shortNames"], resource["categories"] = [], []
        return listing

    def _printer_columns(self, request: kmock.Request) -> list[dict[str, Any]] | None:
        """The CRD's printer columns when the client asks for a Table of a custom resource, else None."""
        accept = {key.lower(): value for key, value in request.headers.items()}.get("accept", "")
        resource = request.resource
        if "as=Table" not in accept or resource is None or not resource.group or request.subresource:
            return None
        for (crd_resource, _, _), crd in self._objects.items():
            spec = crd.raw.get("spec", {})
            if (crd_resource.plural == CRDS and not crd.deleted
                    and spec.get("group") == resource.group and spec.get("names", {}).get("plural") == resource.plural):
                version = next(v for v in spec["versions"] if v["name"] == resource.version)
                return version.get("additionalPrinterColumns", [])
        return None


def _table(items: list[dict[str, Any]], columns: list[dict[str, Any]]) -> dict[str, Any]:
    """What the API server's CRD table convertor returns (the Name column first, then the printer columns)."""
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}] + [
        {"name": c["name"], "type": c["type"], "format": c.get("format", ""), "description": c.get("description", ""),
         "priority": c.get("priority", 0)}
        for c in columns
    ]
    rows = [
        {
            "cells": [item["metadata"]["name"]] + [_cell(c["type"], _path(item, c["jsonPath"])) for c in columns],
            "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]},
        }
        for item in items
    ]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": definitions,
            "rows": rows}


def _path(obj: Any, json_path: str) -> Any:
    """The simple `.a.b.c` JSONPath that printer columns use."""
    for part in json_path.strip(".").split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _cell(kind: str, value: Any) -> Any:
    """Dates print as ages and whole floats without a fraction, as the API server's convertor does."""
    if value is None:
        return None
    if kind == "date":
        started = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        seconds = int((datetime.now(timezone.utc) - started).total_seconds())
        return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if kind == "string" else value


class Kubectl:
    """The real kubectl (scripts/fetch-tools.sh) with a kubeconfig pointing at the emulator."""

    def __init__(self, url: str, directory: Path, namespace: str = "default") -> None:
        subprocess.run([str(ROOT / "scripts" / "fetch-tools.sh")], check=True, capture_output=True)
        self.kubeconfig = directory / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "emulator", "cluster": {"server": url}}],
            "users": [{"name": "tester", "user": {}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}],
        }))
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(directory)}

    def __call__(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(KUBECTL), *args], env=self.env, capture_output=True, text=True, timeout=120, input=stdin
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout


class NodeThread:
    """FakeNode on its own asyncio loop thread, controlled synchronously from a test."""

    def __init__(self, url: str, workdir: Path) -> None:
        self._thread = _LoopThread("fake-node")
        self.node = FakeNode(url, workdir)
        self._thread.run(self.node.__aenter__())

    def kill(self, namespace: str, name: str, sig: int) -> int:
        """Signal a pod's main process from the node's own loop; returns its pid."""

        async def kill() -> int:
            return self.node.kill(namespace, name, sig)

        return int(self._thread.run(kill()))

    def log_text(self, namespace: str, name: str) -> str:
        return self.node.log_text(namespace, name)

    def close(self) -> None:
        self._thread.run(self.node.__aexit__(None, None, None), timeout=60)
        self._thread.stop()

    def __enter__(self) -> NodeThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PhaseTimeline:
    """Every phase a PEFTJob goes through, seen on a watch (a poll could miss a short-lived phase).

    The watch runs on its own loop so that close() can cancel a read that waits for the next event.
    """

    def __init__(self, url: str, namespace: str, name: str) -> None:
        self.name = name
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._start = time.monotonic()
        self._thread = _LoopThread(f"timeline-{name}")
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] = self._thread.run(
            self._watch(f"{url}/apis/peft.dev/v1alpha1/namespaces/{namespace}/peftjobs")
        )

    async def _watch(self, url: str) -> asyncio.Task[None]:
        """Open the watch (so nothing after this returns is missed) and read it in a task."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        response = await self._session.get(url, params={"watch": "true"})
        response.raise_for_status()
        return asyncio.create_task(self._read(response))

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        async for line in response.content:
            if not line.strip():
                continue
            obj = json.loads(line).get("object", {})
            status = obj.get("status") or {}
            phase = status.get("phase")
            fresh = not self.events or self.events[-1][1] != phase
            if obj.get("metadata", {}).get("name") == self.name and phase and fresh:
                self.events.append((time.monotonic() - self._start, phase, status))

    @property
    def phases(self) -> list[str]:
        return [phase for _, phase, _ in self.events]

    def render(self) -> str:
        """One line per phase: seconds since the job was applied, phase, the status message."""
        return "\n".join(
            f"  {at:7.1f}s  {phase:<11} {' '.join((status.get('message') or '').split())[:110]}"
            for at, phase, status in self.events
        )

    def close(self) -> None:
        async def stop() -> None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            assert self._session is not None
            await self._session.close()

        self._thread.run(stop())
        self._thread.stop()


@dataclass
class E2ECluster:
    """Everything an e2e test talks to, and the few questions it asks the API."""

    api: EmulatorServer
    kubectl: Kubectl
    node: NodeThread
    operator: OperatorThread
    workdir: Path

    def job(self, name: str) -> dict[str, Any] | None:
        return self.api.get(f"{JOBS}/{name}")

    def status(self, name: str) -> dict[str, Any]:
        return (self.job(name) or {}).get("status") or {}

    def children(self, name: str) -> dict[str, list[str]]:
        selector = f"peft.dev/job-name={name}"
        return {
            kind: [obj["metadata"]["name"] for obj in self.api.list(f"/api/v1/namespaces/{NS}/{kind}", selector)]
            for kind in ("pods", "services", "configmaps")
        }

    def worker_logs(self) -> str:
        return "\n".join(
            f"----- {namespace}/{name} ({worker.root})\n" + self.node.log_text(namespace, name)[-6000:]
            for (namespace, name), worker in self.node.node.workers.items()
        )

    def wait_phase(self, name: str, phases: set[str], timeout: float) -> dict[str, Any]:
        """Wait until the job reaches one of `phases`; on timeout show the status and the workers' logs."""
        try:
            return wait_for(lambda: self.status(name).get("phase") in phases and self.status(name),
                            timeout=timeout, interval=0.2, what=f"{name} to reach {phases}")
        except AssertionError as error:
            raise AssertionError(f"{error}\nstatus: {self.status(name)}\n{self.worker_logs()}") from None

    def apply(self, manifest: dict[str, Any], name: str) -> tuple[Path, PhaseTimeline]:
        """`kubectl apply` the manifest from a file, with a timeline watching it from before the apply."""
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        timeline = PhaseTimeline(self.api.url, NS, name)
        self.kubectl("apply", "--validate=false", "-f", str(path))
        return path, timeline


def quickstart(name: str, model: Path, data: dict[str, str], **training: Any) -> dict[str, Any]:
    """examples/quickstart-cpu.yaml as a cluster job: two worker pods, the data in S3, the adapter to S3, and
    the tiny model for the MiniLM one; everything else (method, ZeRO-3, precision, ...) is the example's."""
    manifest = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": NS}
    spec = manifest["spec"]
    spec["model"]["source"] = str(model)
    spec["data"]["train"] = {"source": data["train"]}
    spec["data"]["eval"] = {"source": data["eval"]}
    spec["data"]["maxLength"] = 16
    spec["training"].update(training)
    # DeepSpeed keeps parameters under 1e5 elements whole on every rank after first use (a latency trade-off
    # for real models); every tensor of the tiny backbone is that small, so turn it off to see the sharding.
    spec["deepspeed"]["config"] = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    spec["workers"] = {"replicas": 2, "processesPerWorker": 1}
    spec["output"] = {"uri": f"s3://artifacts/e2e/{name}"}
    spec["runPolicy"] = {"backoffLimit": 2}
    return manifest
