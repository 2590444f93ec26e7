"""Single-active high availability: which replica does the work.

With `--peering NAME`, replicas coordinate through kopf's peering object (KopfPeering per watched
namespace, or ClusterKopfPeering when watching the whole cluster): each replica writes its
identity, priority and a heartbeat there, and kopf pauses the watch streams of every replica that
sees a live peer with a higher priority. Only the highest-priority live replica is active; when it
dies its entry expires (kopf's peering lifetime, 60 s by default) and the next one resumes,
re-lists and carries on from what the cluster shows. Every replica needs its own priority, since
equal priorities pause all of them (`Settings.effective_priority` derives one from the pod name).

kopf pauses only its watches. The reconcile queue and the progress server are ours, so
`Leadership` reads the same peering object and applies kopf's rule: a paused replica neither
reconciles nor accepts progress reports (HTTP 503: the worker retries, and the Service sends it to
another replica). The rule is evaluated every `interval` seconds, so for at most that long after a
takeover the old leader may still finish a reconcile it had started; every reconcile is
idempotent (deterministic names, AlreadyExists is success), so that overlap cannot make a second
Job. Without peering the replica is always active.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import string
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kompression.controller.kubeapi import Api, ApiError, path

log = logging.getLogger(__name__)
KOPF_GROUP, KOPF_VERSION = "kopf.dev", "v1"


def own_identity() -> str:
    """This replica's peering identity (handed to kopf too, so both agree on it)."""
    pod = os.environ.get("POD_ID") or os.environ.get("POD_NAME")
    if pod:
        return pod
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=6))
    return f"{socket.gethostname()}/{os.getpid()}/{suffix}"


def _parse_time(text: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def is_active(peers: Mapping[str, Any], identity: str, priority: int, now: datetime | None = None) -> bool:
    """kopf's rule: paused while any other live peer has a higher or the same priority."""
    now = now or datetime.now(UTC)
    for peer_id, info in peers.items():
        if peer_id == identity or not isinstance(info, Mapping):
            continue
        seen = _parse_time(str(info.get("lastseen") or ""))
        if seen is None or seen + timedelta(seconds=int(info.get("lifetime") or 60)) <= now:
            continue  # dead
        if int(info.get("priority") or 0) >= priority:
            return False
    return True


class Leadership:
    """Whether this replica is the active one; `on_change(active)` runs on every flip."""

    def __init__(self, peering: str, identity: str, priority: int, namespaces: tuple[str, ...]) -> None:
        self.peering, self.identity, self.priority, self.namespaces = peering, identity, priority, namespaces
        self.active = not peering
        self._listeners: list[Callable[[bool], None]] = []

    def on_change(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def _set(self, active: bool) -> None:
        if active != self.active:
            self.active = active
            log.info("this replica is now %s", "active" if active else "paused (another peer leads)")
            for listener in self._listeners:
                listener(active)

    def _paths(self) -> list[str]:
        if not self.namespaces:
            return [path(KOPF_GROUP, KOPF_VERSION, "clusterkopfpeerings", name=self.peering)]
        return [
            path(KOPF_GROUP, KOPF_VERSION, "kopfpeerings", namespace=ns, name=self.peering) for ns in self.namespaces
        ]

    async def check(self, api: Api) -> None:
        active = True
        for url in self._paths():
            body = await api.get(url)
            # No peering object: kopf refuses to run (peering is mandatory once named); so do we.
            if body is None or not is_active(body.get("status") or {}, self.identity, self.priority):
                active = False
                break
        self._set(active)

    async def run(self, api: Api, interval: float = 3.0) -> None:
        if not self.peering:
            return
        while True:
            try:
                await self.check(api)
            except (TimeoutError, ApiError, OSError) as exc:
                log.warning("cannot read the peering object %s: %s", self.peering, exc)
            await asyncio.sleep(interval)
