"""A Kubernetes API for tests: KMock's emulator with the server behaviour peftjob relies on, plus a fixture-ready
real kopf operator running against it.

KMock (by kopf's author) stores objects and serves list/watch/get/create/patch/delete over real HTTP. What it
lacks, and what this harness adds explicitly (each is real API-server behaviour the operator depends on):

1. server-populated metadata: uid, creationTimestamp, generation and resourceVersion on create, a new
   resourceVersion on every change (owner references need the uid; kopf waits for the resourceVersion its own
   patch returned before it trusts what it sees, so without new versions it stalls for seconds per patch);
2. `labelSelector` filtering on list and watch (the operator lists a job's pods by label; kopf watches pods by
   label), and `resourceVersion` on list and watch: a list says its version, a watch from a version skips what
   is not newer (KMock replays every object to each new watch, so kopf saw each object twice, listed and
   watched, and its second finalizer patch failed on the stale version until some unrelated change came);
3. list responses with `kind: <Kind>List` and `apiVersion` (kubectl refuses lists without them);
4. ownerReference garbage collection: when an object is deleted, every object whose owners are all gone is
   deleted too (or marked for deletion if it has finalizers), transitively;
5. a failed JSON-patch `test` operation answers 422 (KMock answers 500, which clients retry for nothing);
6. every resource kopf and the operator touch is declared with its kind, verbs and subresources;
7. no request history: KMock keeps every request it ever served and, to route each new one, re-applies its
   reaction filters to that whole history (O(requests so far) per request, quadratic overall: an operator test
   module went from milliseconds to ~0.5 s per request and timed out). The harness forgets each request once it
   is answered; the DSL's history views (`kmock.requests`, `kmock['get'][:1]`) are therefore not available.

Use:  with EmulatorServer() as api: ... OperatorThread(api.url, settings) ... api.create(...); wait_for(...)
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import attrs
import jsonpatch
import kmock
import kopf
import requests

from peftjob_operator.handlers import Memo, build_registry
from peftjob_operator.settings import OperatorSettings
from peftjob_trainer.api import API_GROUP, API_VERSION, KIND, PLURAL

T = TypeVar("T")
STOP_GRACE_SECONDS = 1.0  # a graceful kopf shutdown takes ~0.1 s; after this the operator is cancelled

RESOURCES: dict[str, dict[str, Any]] = {
    f"{API_GROUP}/{API_VERSION}/{PLURAL}": dict(
        kind=KIND, singular=KIND.lower(), shortnames={"pj"}, namespaced=True, subresources={"status"},
        categories={"all", "ml", "peft"},
    ),
    "v1/pods": dict(kind="Pod", singular="pod", namespaced=True, subresources={"status", "log"}),
    "v1/services": dict(kind="Service", singular="service", namespaced=True),
    "v1/configmaps": dict(kind="ConfigMap", singular="configmap", namespaced=True),
    "v1/secrets": dict(kind="Secret", singular="secret", namespaced=True),
    "v1/events": dict(kind="Event", singular="event", namespaced=True),
    "events.k8s.io/v1/events": dict(kind="Event", singular="event", namespaced=True),
    "v1/namespaces": dict(kind="Namespace", singular="namespace", namespaced=False),
    "apiextensions.k8s.io/v1/customresourcedefinitions": dict(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False
    ),
    "kopf.dev/v1/kopfpeerings": dict(kind="KopfPeering", singular="kopfpeering", namespaced=True),
    "kopf.dev/v1/clusterkopfpeerings": dict(kind="ClusterKopfPeering", singular="clusterkopfpeering", namespaced=False),
}
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator + the API-server behaviour listed in this module's docstring."""

    _version: int = attrs.field(default=0, init=False)  # the last resourceVersion handed out

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(verbs=VERBS, **info)

    async def _handle(self, request: kmock.Request) -> Any:
        try:
            return await self._handle_k8s(request)
        finally:
            self._forget(request)

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _forget(self, request: kmock.Request) -> None:
        """Drop an answered request from the root's and every reaction's history (see item 7 above)."""
        for history in [self._requests, *(payload._requests for payload in self._payloads)]:
            history[:] = [kept for kept in history if kept is not request]  # only requests in flight remain

    async def _handle_k8s(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.action == kmock.action.CREATE and isinstance(request.data, dict):
            metadata = request.data.setdefault("metadata", {})
            if not metadata.get("name") and metadata.get("generateName"):
                metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", _now())
            metadata.setdefault("generation", 1)
            metadata["resourceVersion"] = self._next_version()
            if request.namespace and "namespace" not in metadata:
                metadata["namespace"] = request.namespace
        elif request.resource is not None and request.name and request.action == kmock.action.UPDATE:
            version = self._next_version()  # every change gets a new resourceVersion, as kopf expects
            if isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["resourceVersion"] = version
            elif isinstance(request.data, list):
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        elif request.resource is not None and request.name and request.action == kmock.action.DELETE:
            key = (request.resource, request.namespace, request.name)
            if key in self._objects and not self._objects[key].deleted:
                self._objects[key].patch({"metadata": {"resourceVersion": self._next_version()}})
        response = await super()._handle(request)
        if request.resource is not None and request.name and request.action in (kmock.action.DELETE, kmock.action.UPDATE):
            key = (request.resource, request.namespace, request.name)
            if key not in self._objects or self._objects[key].deleted:  # gone now: its dependents follow
                await self._collect_garbage()
        return response

    async def _render_error(self, exc: Exception) -> Any:
        """A failed JSON-patch `test` (kopf guards finalizer patches with the resourceVersion) is a 422, not a 500."""
        if isinstance(exc, jsonpatch.JsonPatchTestFailed):
            exc = kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
        return await super()._render_error(exc)

    async def _collect_garbage(self) -> None:
        """Delete objects whose owners are all gone, until nothing more goes (dependents of dependents)."""
        while True:
            deleted = 0
            async with self._lock:
                live = {obj.raw.get("metadata", {}).get("uid") for obj in self._objects.values() if not obj.deleted}
                orphans = [
                    (key, obj)
                    for key, obj in self._objects.items()
                    if not obj.deleted
                    and (owners := obj.raw.get("metadata", {}).get("ownerReferences"))
                    and not any(owner.get("uid") in live for owner in owners)
                ]
                for (resource, _, _), obj in orphans:
                    if obj.raw.get("metadata", {}).get("finalizers"):
                        if not obj.raw["metadata"].get("deletionTimestamp"):
                            version = self._next_version()
                            obj.patch({"metadata": {"deletionTimestamp": _now(), "resourceVersion": version}})
                            await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
                        continue
                    obj.patch({"metadata": {"resourceVersion": self._next_version()}})
                    raw = obj.raw
                    obj.delete()
                    deleted += 1
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
            if not deleted:
                return

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            listing["items"] = [item for item in listing["items"] if matches(selector, _labels(item))]
        info = self.resources[request.resource] if request.resource in self.resources else None
        kind = info.kind if info is not None and info.kind else "List"
        group, version = request.resource.group, request.resource.version
        listing["metadata"] = {"resourceVersion": str(self._version)}  # where a watch resumes (KMock: "...")
        listing["kind"] = f"{kind}List"
        listing["apiVersion"] = f"{group}/{version}" if group else version
        return listing

    async def _serve_watch(self, request: kmock.Request) -> Any:
        selector = request.params.get("labelSelector")
        since = request.params.get("resourceVersion", "")
        since_version = int(since) if since.isdigit() else 0
        async for event in super()._serve_watch(request):
            if not isinstance(event, dict):
                yield event
                continue
            obj = event.get("object", {})
            version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
            if version.isdigit() and int(version) <= since_version:
                continue  # KMock replays every object at watch start; the client listed these already
            if not selector or matches(selector, _labels(obj)):
                yield event


def matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`."""
    for requirement in _split(selector):
        requirement = requirement.strip()
        if " notin " in requirement:
            key, values = requirement.split(" notin ", 1)
            if labels.get(key.strip()) in _values(values):
                return False
        elif " in " in requirement:
            key, values = requirement.split(" in ", 1)
            if labels.get(key.strip()) not in _values(values):
                return False
        elif "!=" in requirement:
            key, value = requirement.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in requirement:
            key, value = requirement.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement and requirement not in labels:
            return False
    return True


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


def _values(text: str) -> set[str]:
    return {value.strip() for value in text.strip().strip("()").split(",")}


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------ running it


class _LoopThread:
    """An asyncio loop in a daemon thread, for servers that must outlive one synchronous test call."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class EmulatorServer:
    """The emulator on a free loopback port, in its own thread, with a small synchronous REST client."""

    def __init__(self, emulator: Emulator | None = None) -> None:
        self._thread = _LoopThread("kmock")
        self.emulator = emulator if emulator is not None else Emulator()
        self._server = kmock.Server(self.emulator)
        self._thread.run(self.emulator.__aenter__())
        self._thread.run(self._server.__aenter__())
        self.url = str(self._server.url).rstrip("/")
        self.http = requests.Session()

    def close(self) -> None:
        self.http.close()
        self._thread.run(self._server.__aexit__(None, None, None))
        self._thread.run(self.emulator.__aexit__(None, None, None))
        self._thread.stop()

    def __enter__(self) -> EmulatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # A synchronous client for tests: plain dicts, paths as the API server spells them.
    def request(self, method: str, url_path: str, body: Any = None, **params: str) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        response = self.http.request(method, self.url + url_path, json=body, params=params, headers=headers, timeout=10)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def get(self, url_path: str) -> Any:
        return self.request("GET", url_path)

    def list(self, url_path: str, label_selector: str = "") -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        return (self.request("GET", url_path, **params) or {}).get("items", [])

    def create(self, url_path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", url_path, body)

    def patch(self, url_path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", url_path, body)

    def delete(self, url_path: str) -> Any:
        return self.request("DELETE", url_path)


def test_kopf_settings() -> kopf.OperatorSettings:
    """Fast reactions for tests: standalone (no peering), short batching windows."""
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    settings.batching.batch_window = 0.01
    settings.batching.idle_timeout = 1.0
    settings.watching.reconnect_backoff = 0.1
    settings.posting.level = 20
    return settings


test_kopf_settings.__test__ = False  # a factory, not a test


class OperatorThread:
    """The real peftjob operator (kopf.operator with the project's registry) in its own thread and loop."""

    def __init__(self, url: str, settings: OperatorSettings, ready_timeout: float = 30) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.memo = Memo(settings, kopf.ConnectionInfo(server=url, insecure=True))
        self._registry = build_registry(settings)
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="peftjob-operator", daemon=True)
        self.thread.start()
        if not self._ready.wait(ready_timeout):
            self.stop()
            raise RuntimeError(f"the operator did not become ready in {ready_timeout} s: {self._error!r}")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # surfaced by stop() / the ready timeout
            self._error = error

    async def _run(self) -> None:
        """kopf.operator until stop(); then a short grace period before it is cancelled.

        kopf stops its timers through a "daemon killer" that ends early in the shutdown; a timer spawned by a
        watch event processed after that (a job that became Running just before the stop) is only cancelled
        after kopf's fixed 5 s wait for hung tasks. Cancelling the operator skips that wait.
        """
        operator = asyncio.create_task(
            kopf.operator(
                registry=self._registry,
                settings=test_kopf_settings(),
                memo=self.memo,
                standalone=True,
                clusterwide=True,
                stop_flag=self._stop,
                ready_flag=self._ready,
            )
        )
        stop_requested = asyncio.ensure_future(asyncio.to_thread(self._stop.wait))
        await asyncio.wait({operator, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if not operator.done():
            await asyncio.wait({operator}, timeout=STOP_GRACE_SECONDS)
            operator.cancel()
        stop_requested.cancel()
        self._stop.set()  # releases the waiting thread when the operator ended on its own
        await operator

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(30)
        if self.thread.is_alive():
            raise RuntimeError("the operator did not stop in 30 s")

    def __enter__(self) -> OperatorThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(probe: Callable[[], T], timeout: float = 30, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail with the last value seen after `timeout` s."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
        value = probe()
    return value
