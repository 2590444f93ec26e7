"""An in-memory stand-in for the API server's object CRUD, for reconciler logic tests only.

It knows no semantics beyond AlreadyExists, NotFound, merge patch and resourceVersion; the
cluster tests cover the rest against the real API server.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from kompression.controller.kubeapi import ApiError


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self._rv = itertools.count(1)

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(obj)

    async def get(self, url: str) -> dict[str, Any] | None:
        obj = self.objects.get(url)
        return copy.deepcopy(obj) if obj else None

    async def create(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("POST", collection))
        name = body["metadata"].get("name") or f"{body['metadata'].get('generateName', 'x')}{next(self._rv)}"
        url = f"{collection}/{name}"
        if url in self.objects:
            raise ApiError(409, "AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"].update(name=name, uid=f"uid-{name}")
        self.objects[url] = obj
        return self._stamp(obj)

    async def merge_patch(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("PATCH", url))
        base = url.removesuffix("/status")
        if base not in self.objects:
            raise ApiError(404, "NotFound")
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != self.objects[base]["metadata"].get("resourceVersion"):
            raise ApiError(409, "Conflict: the object has been modified")
        body = {k: v for k, v in body.items() if k != "metadata"} | (
            {"metadata": {k: v for k, v in body["metadata"].items() if k != "resourceVersion"}}
            if "metadata" in body
            else {}
        )
        _merge(self.objects[base], body)
        return self._stamp(self.objects[base])

    def put(self, url: str, obj: dict[str, Any]) -> None:
        self.objects[url] = copy.deepcopy(obj)
