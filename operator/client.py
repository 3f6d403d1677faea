"""A small async Kubernetes REST client on aiohttp, sharing kopf's login.

Why not the `kubernetes` package: it is synchronous (every call would need a thread) and validates every body
against generated models, while the operator only needs create/get/list/merge-patch/delete on plain dicts.
The credentials are the ones kopf's login handler produced, so operator and client always agree on the cluster.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kopf

JSON = dict[str, Any]


class ApiError(RuntimeError):
    """The API server refused a request (anything but the 404/409 the callers expect)."""


def path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    """The REST path of a collection or object: core `v1` lives under /api, groups under /apis."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base] + ([f"namespaces/{namespace}"] if namespace else []) + [plural]
    parts += [name] if name else []
    parts += [subresource] if subresource else []
    return "/".join(parts)


class KubeClient:
    """Connects once kopf has logged in; requests made earlier wait for that."""

    def __init__(self) -> None:
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._connected = asyncio.Event()

    def connect(self, info: kopf.ConnectionInfo) -> None:
        """Use these credentials from now on (called by the login handler, also on re-login)."""
        self._info = info
        self._session = None
        self._connected.set()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, url_path: str, **kwargs: Any) -> tuple[int, Any]:
        await self._connected.wait()
        assert self._info is not None
        if self._session is None or self._session.closed:
            self._session = _session(self._info)
        async with self._session.request(method, self._info.server.rstrip("/") + url_path, **kwargs) as response:
            data = await response.json(content_type=None) if response.content_length != 0 else None
            if response.status >= 400 and response.status not in (404, 409):
                message = data.get("message") if isinstance(data, dict) else response.reason
                raise ApiError(f"{method} {url_path}: {response.status} {message}")
            return response.status, data

    async def get(self, url_path: str) -> JSON | None:
        status, data = await self._request("GET", url_path)
        return None if status == 404 else data

    async def list(self, url_path: str, label_selector: str | None = None) -> list[JSON]:
        params = {"labelSelector": label_selector} if label_selector else {}
        status, data = await self._request("GET", url_path, params=params)
        return [] if status == 404 else list(data.get("items") or [])

    async def create(self, url_path: str, body: JSON) -> bool:
        """False when it already exists: creating children is idempotent."""
        status, _ = await self._request("POST", url_path, json=body)
        return status != 409

    async def patch(self, url_path: str, body: JSON) -> JSON | None:
        headers = {"Content-Type": "application/merge-patch+json"}
        status, data = await self._request("PATCH", url_path, json=body, headers=headers)
        return None if status == 404 else data

    async def delete(self, url_path: str) -> bool:
        """False when it was already gone."""
        status, _ = await self._request("DELETE", url_path, json={"propagationPolicy": "Background"})
        return status != 404


def _session(info: kopf.ConnectionInfo) -> aiohttp.ClientSession:
    """kopf's own helpers turn the login into headers and TLS settings, so both clients behave the same."""
    return aiohttp.ClientSession(
        headers={"Accept": "application/json", **info.as_http_headers()},
        connector=aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=64),
        timeout=aiohttp.ClientTimeout(total=30),
    )
