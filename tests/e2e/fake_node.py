"""A test-only node: runs the worker pods it sees on the API server as local processes, like a kubelet would.

It watches pods through the API (any server: here the KMock emulator), and for each new pod:
  - resolves the container's environment as the kubelet does (values, secretKeyRef, configMapKeyRef, fieldRef);
  - gives the process the pod's filesystem: every mounted ConfigMap/Secret/emptyDir becomes a local folder
    (the ConfigMap's files written into it) and the termination-message path a local file; env values and
    arguments that name those paths are pointed at the local copies;
  - rewrites only the rendezvous address: MASTER_ADDR becomes 127.0.0.1, because pod DNS does not exist here.
    Every pod shares this machine's loopback, so each job's fixed MASTER_PORT becomes one free port for
    the whole gang (other test runs on the machine may hold the fixed one);
  - reports back through the API what a kubelet would: podIP 127.0.0.1 and phase Running, then Succeeded or
    Failed with the exit code (128 + signal when killed) and the termination message in containerStatuses.
A deleted pod's process group is stopped (SIGTERM, then SIGKILL after the grace period).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from peftjob_trainer.local_run import free_port

log = logging.getLogger("fake-node")

LOOPBACK = "127.0.0.1"
MASTER_ADDR_VARS = ("MASTER_ADDR", "PET_MASTER_ADDR")
MASTER_PORT_VARS = ("MASTER_PORT", "PET_MASTER_PORT")
HOST_PROVIDED_MOUNTS = ("/dev/shm",)
MESSAGE_LIMIT = 4096
LOG_FALLBACK_LINES = 80
GRACE_SECONDS = 10.0


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Worker:
    """One pod's process and where its files live."""

    namespace: str
    name: str
    root: Path
    log_path: Path
    result_path: Path
    container: str = "main"
    process: asyncio.subprocess.Process | None = None
    stopped: bool = False
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)


class FakeNode:
    """Run every pod on `api_url` as a local process until the context exits."""

    def __init__(self, api_url: str, workdir: Path, python: str = sys.executable) -> None:
        self.api_url = api_url.rstrip("/")
        self.workdir = workdir
        self.python = python
        self.workers: dict[tuple[str, str], Worker] = {}
        self.exits: list[tuple[str, str, int]] = []
        self._ports: dict[str, int] = {}
        self._serial = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._watching = asyncio.Event()

    async def __aenter__(self) -> FakeNode:
        self._session = aiohttp.ClientSession(self.api_url, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self._watcher = asyncio.create_task(self._watch(), name="fake-node-watch")
        await asyncio.wait_for(self._watching.wait(), 30)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._watcher is not None and self._session is not None
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher
        await asyncio.gather(*(self._stop(worker) for worker in list(self.workers.values())))
        await self._session.close()

    # ------------------------------------------------------------------------------------------ control

    def kill(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to the pod's main process (what a crash or the OOM killer does); returns its pid."""
        worker = self.workers[namespace, name]
        assert worker.process is not None and worker.process.returncode is None, f"{name} is not running"
        os.kill(worker.process.pid, sig)
        return worker.process.pid

    def log_text(self, namespace: str, name: str) -> str:
        worker = self.workers.get((namespace, name))
        return worker.log_path.read_text(errors="replace") if worker and worker.log_path.exists() else ""

    # ---------------------------------------------------------------------------------------- the watch

    async def _watch(self) -> None:
        assert self._session is not None
        while True:
            try:
                async with self._session.get("/api/v1/pods", params={"watch": "true"}) as response:
                    response.raise_for_status()
                    self._watching.set()
                    async for line in response.content:
                        if line.strip():
                            await self._on_event(json.loads(line))
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                log.warning("pod watch interrupted (%s); watching again", error)
                await asyncio.sleep(0.2)

    async def _on_event(self, event: dict[str, Any]) -> None:
        pod = event.get("object", {})
        meta = pod.get("metadata", {})
        key = (meta.get("namespace") or "default", meta["name"])
        worker = self.workers.get(key)
        if event["type"] == "DELETED" or meta.get("deletionTimestamp"):
            if worker is not None and not worker.stopped:
                self.workers.pop(key)
                await self._stop(worker)
            return
        if event["type"] in ("ADDED", "MODIFIED") and worker is None and not pod.get("status", {}).get("phase"):
            self.workers[key] = worker = self._worker(*key)
            try:
                await self._start(worker, pod)
            except Exception as error:  # noqa: BLE001 (a pod the node cannot start fails like on a real node)
                log.exception("cannot start %s/%s", *key)
                await self._report_exit(worker, 128, f"fake node could not start the container: {error}")

    def _worker(self, namespace: str, name: str) -> Worker:
        root = self.workdir / namespace / f"{name}-{next(self._serial)}"
        root.mkdir(parents=True)
        return Worker(namespace, name, root, root / "container.log", root / "termination-log")

    # --------------------------------------------------------------------------------- start and report

    async def _start(self, worker: Worker, pod: dict[str, Any]) -> None:
        (container,) = pod["spec"]["containers"]
        worker.container = container["name"]
        paths = await self._mount(worker, pod, container)
        paths[container.get("terminationMessagePath", "/dev/termination-log")] = str(worker.result_path)
        env = await self._environment(pod, container)
        env = {name: _rewrite(value, paths) for name, value in env.items()}
        master = env.get("MASTER_ADDR", "")
        if master:
            port = self._ports.setdefault(master, free_port())
            env.update({name: LOOPBACK for name in MASTER_ADDR_VARS if name in env})
            env.update({name: str(port) for name in MASTER_PORT_VARS if name in env})
        argv = [_rewrite(arg, paths) for arg in [*container.get("command", []), *container.get("args", [])]]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = self.python  # the image's interpreter is this test run's
        process_env = {**os.environ, "PATH": f"{Path(self.python).parent}{os.pathsep}{os.environ['PATH']}", **env}
        with worker.log_path.open("wb") as log_file:
            worker.process = await asyncio.create_subprocess_exec(
                *argv, env=process_env, cwd=worker.root, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("started %s/%s as pid %d: %s", worker.namespace, worker.name, worker.process.pid, " ".join(argv))
        await self._patch_status(worker, {
            "phase": "Running",
            "podIP": LOOPBACK,
            "podIPs": [{"ip": LOOPBACK}],
            "hostIP": LOOPBACK,
            "startTime": now(),
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now()}],
            "containerStatuses": [{
                "name": container["name"], "image": container.get("image", ""), "imageID": "",
                "ready": True, "started": True, "restartCount": 0,
                "containerID": f"fake://{worker.process.pid}",
                "state": {"running": {"startedAt": now()}},
            }],
        })
        worker.waiter = asyncio.create_task(self._wait(worker, container))

    async def _wait(self, worker: Worker, container: dict[str, Any]) -> None:
        assert worker.process is not None
        code = await worker.process.wait()
        exit_code = 128 - code if code < 0 else code  # killed by signal N: the runtime reports 128 + N
        self.exits.append((worker.namespace, worker.name, exit_code))
        if worker.stopped:
            return  # the pod is gone: nothing to report
        message = worker.result_path.read_text(errors="replace") if worker.result_path.exists() else ""
        if not message and exit_code and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = "\n".join(worker.log_path.read_text(errors="replace").splitlines()[-LOG_FALLBACK_LINES:])
        await self._report_exit(worker, exit_code, message[-MESSAGE_LIMIT:])

    async def _report_exit(self, worker: Worker, exit_code: int, message: str) -> None:
        log.info("%s/%s exited with %d", worker.namespace, worker.name, exit_code)
        await self._patch_status(worker, {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now()}],
            "containerStatuses": [{
                "name": worker.container, "image": "", "imageID": "", "ready": False, "started": False, "restartCount": 0,
                "state": {"terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "message": message,
                    "finishedAt": now(),
                }},
            }],
        })

    async def _stop(self, worker: Worker) -> None:
        worker.stopped = True
        process = worker.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), GRACE_SECONDS)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if worker.waiter is not None:
            await worker.waiter
        log.info("stopped %s/%s", worker.namespace, worker.name)

    # ------------------------------------------------------------------------------ what a kubelet reads

    async def _mount(self, worker: Worker, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        """Materialise the pod's volumes as local folders; returns {container path: local path}."""
        namespace = worker.namespace
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        paths: dict[str, str] = {}
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] in HOST_PROVIDED_MOUNTS:
                continue
            local = worker.root / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                data = (await self._get(f"/api/v1/namespaces/{namespace}/configmaps/{volume['configMap']['name']}"))
                for key, value in data.get("data", {}).items():
                    (local / key).write_text(value)
            elif "secret" in volume:
                data = await self._get(f"/api/v1/namespaces/{namespace}/secrets/{volume['secret']['secretName']}")
                for key, value in data.get("data", {}).items():
                    (local / key).write_bytes(base64.b64decode(value))
            paths[mount["mountPath"]] = str(local)
        return paths

    async def _environment(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        namespace = pod["metadata"].get("namespace") or "default"
        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            source = item.get("valueFrom", {})
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = await self._get(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
                env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                config = await self._get(f"/api/v1/namespaces/{namespace}/configmaps/{ref['name']}")
                env[item["name"]] = config["data"][ref["key"]]
            elif "fieldRef" in source:
                env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
        return env

    # ------------------------------------------------------------------------------------------- HTTP

    async def _get(self, path: str) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.get(path) as response:
            response.raise_for_status()
            return await response.json()

    async def _patch_status(self, worker: Worker, status: dict[str, Any]) -> None:
        assert self._session is not None
        if worker.stopped:
            return
        async with self._session.patch(
            f"/api/v1/namespaces/{worker.namespace}/pods/{worker.name}/status",
            data=json.dumps({"status": status}),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response:
            if response.status != 404:  # deleted meanwhile: nothing to report to
                response.raise_for_status()


def _rewrite(value: str, paths: dict[str, str]) -> str:
    """Point a container path (a mount or a file in one) at its local copy; anything else is unchanged."""
    for container_path, local in sorted(paths.items(), key=lambda item: -len(item[0])):
        if value == container_path or value.startswith(container_path.rstrip("/") + "/"):
            return local + value[len(container_path):]
    return value


def _field(pod: dict[str, Any], path: str) -> str:
    """The downward API's fieldRef for the fields a worker may ask for."""
    known = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"].get("namespace", "default"),
        "metadata.uid": pod["metadata"].get("uid", ""),
        "status.podIP": LOOPBACK,
        "status.hostIP": LOOPBACK,
        "spec.nodeName": "fake-node",
    }
    return known[path]
