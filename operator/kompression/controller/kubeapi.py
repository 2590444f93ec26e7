"""The operator's own Kubernetes API calls, over aiohttp with the credentials kopf logged in with.

Kept apart from the handlers so that the reconcile logic is plain data in, data out, and so that
the operator never imports the `kubernetes` client (most of a kopf operator's memory is imports).
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

# Asks for PartialObjectMetadataList: the API server leaves out spec and status.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
IDENTITY = ("namespace", "name", "uid", "resourceVersion")
PAGE = 100  # each page is parsed whole: small pages keep the peak (and the RSS after it) low


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body

    @property
    def namespace_terminating(self) -> bool:
        """Creating in a namespace being deleted: not a fault to retry, the objects are going away."""
        return self.status == 403 and "NamespaceTerminating" in self.body


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(cafile=info.ca_path)
    if info.ca_data:
        ctx.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
    if info.certificate_path and info.private_key_path:
        ctx.load_cert_chain(info.certificate_path, info.private_key_path)
    elif info.certificate_data and info.private_key_data:
        # ssl only loads client certificates from files.
        with (
            tempfile.NamedTemporaryFile("wb", suffix=".pem") as cert,
            tempfile.NamedTemporaryFile("wb", suffix=".pem") as key,
        ):
            cert.write(base64.b64decode(info.certificate_data))
            key.write(base64.b64decode(info.private_key_data))
            cert.flush()
            key.flush()
            ctx.load_cert_chain(cert.name, key.name)
    return ctx


def path(
    group: str,
    version: str,
    plural: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    sub: str | None = None,
) -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name)}"
    if sub:
        base += f"/{sub}"
    return base


def resource_of(url: str) -> str:
    """The resource (and subresource) a request path names: "jobs", "compressionjobs/status"."""
    parts = [p for p in url.split("?", maxsplit=1)[0].split("/") if p]
    parts = parts[2:] if parts[:1] == ["api"] else parts[3:]  # drop api/v1 or apis/group/version
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    return "/".join(parts[0:1] + parts[2:3])


class Api:
    """A thin JSON client: get, list, create, patch, delete. Raises ApiError on non-2xx."""

    def __init__(
        self, info: kopf.ConnectionInfo, session: aiohttp.ClientSession | None = None, timeout: float = 30.0
    ) -> None:
        self.server = info.server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "kompression-operator"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        self._session = session or aiohttp.ClientSession(
            headers=headers,
            auth=auth,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info), limit=32),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )
        # Counted so that the benchmark and tests can check the API writes per job.
        self.writes = 0
        self.on_write: Callable[[str, str], None] | None = None  # (verb, resource) of each write

    async def close(self) -> None:
        await self._session.close()

    async def _call(
        self,
        method: str,
        url: str,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        *,
        accept: str | None = None,
    ) -> dict[str, Any]:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        if method != "GET":
            self.writes += 1
            if self.on_write is not None:
                self.on_write(method, resource_of(url))
        async with self._session.request(method, self.server + url, data=data, headers=headers, params=params) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ApiError(resp.status, text)
            result: dict[str, Any] = json.loads(text) if text else {}
            return result

    async def get(self, url: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", url)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def identities(self, url: str, label_selector: str = "") -> tuple[list[dict[str, Any]], str]:
        """Who is in a collection: each item's namespace, name, uid and resourceVersion, and the
        resourceVersion of the LIST. Metadata only and in pages, so that listing thousands of
        pods costs the operator kilobytes, not the hundreds of megabytes of their full objects."""
        params = {"limit": str(PAGE)} | ({"labelSelector": label_selector} if label_selector else {})
        items: list[dict[str, Any]] = []
        rv = ""
        while True:
            page = await self._call("GET", url, params=params, accept=METADATA_LIST)
            meta = page.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion") or "")  # every page is of the first one's snapshot
            items += [{"metadata": {k: o["metadata"].get(k) for k in IDENTITY}} for o in page.get("items") or ()]
            if not meta.get("continue"):
                return items, rv
            params["continue"] = meta["continue"]

    async def list(self, url: str, label_selector: str = "") -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        items: list[dict[str, Any]] = (await self._call("GET", url, params=params)).get("items") or []
        return items

    async def create(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", url, body)

    async def merge_patch(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", url, body, "application/merge-patch+json")

    async def delete(self, url: str) -> None:
        try:
            await self._call("DELETE", url, {"propagationPolicy": "Background"})
        except ApiError as err:
            if err.status != 404:
                raise
