"""The kopf side: thin watch handlers that feed the Store and enqueue keys, plus the lifecycle.

Only `on.event` handlers are used, so kopf keeps no handler progress on the objects (no
annotations, no finalizer): state lives in the cluster itself (the CR, its deterministic Job), and
the reconcile queue retries. A finalizer would block deleting a CompressionJob while the operator
is down, and there is nothing outside the cluster to clean up; children go by ownerReference.

High availability is single-active: with `--peering`, every replica joins kopf's peering object
with its own priority (derived from POD_NAME unless `--priority` is given) and only the
highest-priority live one reconciles and accepts progress reports; see `leadership.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kompression.api.constants import GROUP, PLURAL, SWEEP_PLURAL, VERSION
from kompression.controller import kueue
from kompression.controller.httpguard import Limits
from kompression.controller.kubeapi import Api
from kompression.controller.labels import MANAGED_SELECTOR
from kompression.controller.leadership import Leadership, own_identity
from kompression.controller.metrics import Metrics
from kompression.controller.reconcile import Reconciler
from kompression.controller.report_channel import ProgressServer
from kompression.controller.settings import Settings
from kompression.controller.store import Store
from kompression.controller.sweep_builders import sweep_of
from kompression.controller.sweep_reconcile import SweepReconciler

log = logging.getLogger(__name__)


class Runtime:
    """Everything one operator process holds; built at login, started at startup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store()
        self.metrics = Metrics()
        self.api: Api | None = None
        self.reconciler: Reconciler | None = None
        self.sweeps: SweepReconciler | None = None
        self.identity = own_identity()
        self.leadership = Leadership(
            settings.peering, self.identity, settings.effective_priority(), settings.namespaces
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.AppRunner] = []
        self._servers: list[asyncio.Server] = []
        self.progress: ProgressServer | None = None

    def connect(self, info: kopf.ConnectionInfo) -> None:
        if self.api is None:
            self.api = Api(info, timeout=self.settings.api_timeout_s)
            self.api.on_write = lambda verb, resource: self.metrics.api_writes.labels(verb, resource).inc()
            self.reconciler = Reconciler(self.api, self.settings, self.store, self.metrics, self.leadership)
            self.sweeps = SweepReconciler(self.api, self.settings, self.metrics, self.leadership)

    async def start(self) -> None:
        assert self.api is not None and self.reconciler is not None and self.sweeps is not None
        self._tasks.append(asyncio.create_task(self.reconciler.run()))
        self._tasks.append(asyncio.create_task(self.reconciler.resync_forever()))
        self._tasks.append(asyncio.create_task(self.sweeps.run()))
        self._tasks.append(asyncio.create_task(self.sweeps.resync_forever()))
        self._tasks.append(asyncio.create_task(self.leadership.run(self.api)))
        s = self.settings
        limits = Limits(
            head_timeout_s=s.progress_read_timeout_s,
            body_timeout_s=s.progress_read_timeout_s,
            max_connections=s.progress_max_connections,
        )
        self.progress = ProgressServer(
            self.api,
            self.store,
            self.reconciler,
            s.progress_interval_s,
            metrics=self.metrics,
            leadership=self.leadership,
            limits=limits,
        )
        runner = web.AppRunner(self.progress.app(), access_log=None)
        await runner.setup()
        self._runners.append(runner)
        self._servers.append(await self.progress.guard.serve(runner, "0.0.0.0", s.progress_port))
        metrics_app = web.Application()
        metrics_app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", s.metrics_port).start()
        self._runners.append(runner)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for server in self._servers:
            server.close()
        for runner in self._runners:
            await runner.cleanup()
        if self.api is not None:
            await self.api.close()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---------------------------------------------------------------- watch events

    def on_cr(self, event: Mapping[str, Any]) -> None:
        assert self.reconciler is not None
        body = event["object"]
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event.get("type") == "DELETED":
            self.reconciler.cr_gone(key, body["metadata"].get("uid"))
            if self.progress is not None:
                self.progress.forget(str(body["metadata"].get("uid")))
        else:
            self.reconciler.enqueue(self.store.put_cr(body))
        owner = sweep_of(body)
        if owner is not None and self.sweeps is not None:  # a trial changed: its sweep decides again
            self.sweeps.enqueue((body["metadata"]["namespace"], owner))

    def on_sweep(self, event: Mapping[str, Any]) -> None:
        assert self.sweeps is not None
        meta = event["object"]["metadata"]
        key = (meta["namespace"], meta["name"])
        if event.get("type") == "DELETED":
            self.sweeps.forget(key)
        else:
            self.sweeps.enqueue(key)

    def on_job(self, event: Mapping[str, Any]) -> None:
        assert self.reconciler is not None
        deleted = event.get("type") == "DELETED"
        key = self.store.put_job(event["object"], deleted=deleted)
        if key is not None:
            self.reconciler.enqueue(key)
            if deleted:
                self.reconciler.kick_queue()

    def on_workload(self, event: Mapping[str, Any]) -> None:
        assert self.reconciler is not None
        key = self.store.put_workload(event["object"], deleted=event.get("type") == "DELETED")
        if key is not None:
            self.reconciler.enqueue(key)

    def on_pod(self, event: Mapping[str, Any]) -> None:
        assert self.reconciler is not None
        key = self.store.put_pod(event["object"], deleted=event.get("type") == "DELETED")
        if key is not None:
            self.reconciler.enqueue(key)


def configure(settings: kopf.OperatorSettings, ours: Settings) -> None:
    # Silent watch stalls are kopf's best-known failure (#585, #957, #996): bound every stream.
    settings.watching.server_timeout = ours.watch_server_timeout_s
    settings.watching.client_timeout = ours.watch_client_timeout_s
    settings.watching.connect_timeout = ours.api_timeout_s
    settings.watching.inactivity_timeout = ours.watch_inactivity_timeout_s
    # kopf's own requests (its re-list after a 410 Gone among them) on a stalled pooled connection.
    settings.networking.request_timeout = ours.api_timeout_s
    # kopf would post its handler logs as Events; ours are posted deliberately, in words.
    settings.posting.enabled = False


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    # Our own login, not kopf's default: that one would import the `kubernetes` client if installed.
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return _login(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, runtime.settings)
        info = _login(settings=settings)  # startup runs before kopf's own login
        if info is None:
            raise kopf.PermanentError("no in-cluster ServiceAccount and no kubeconfig to log in with")
        runtime.connect(info)
        await runtime.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await runtime.stop()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def compressionjob(event: kopf.RawEvent, **_: Any) -> None:
        runtime.on_cr(event)

    @kopf.on.event(GROUP, VERSION, SWEEP_PLURAL, registry=registry)
    def compressionsweep(event: kopf.RawEvent, **_: Any) -> None:
        runtime.on_sweep(event)

    @kopf.on.event("batch", "v1", "jobs", labels=MANAGED_SELECTOR, registry=registry)
    def job(event: kopf.RawEvent, **_: Any) -> None:
        runtime.on_job(event)

    @kopf.on.event("", "v1", "pods", labels=MANAGED_SELECTOR, registry=registry)
    def pod(event: kopf.RawEvent, **_: Any) -> None:
        runtime.on_pod(event)

    # Kueue's Workloads say why a queued Job waits. Without Kueue's CRDs kopf logs once that it
    # cannot serve them, and starts watching if they are installed later.
    @kopf.on.event(kueue.GROUP, kueue.VERSION, kueue.WORKLOADS, registry=registry)
    def workload(event: kopf.RawEvent, **_: Any) -> None:
        runtime.on_workload(event)

    return registry


def run(settings: Settings) -> int:
    level = settings.log_level.upper()
    kopf.configure(verbose=level == "DEBUG", quiet=level in ("WARNING", "ERROR"))
    logging.getLogger().setLevel(level)
    if level != "DEBUG":
        # kopf logs "Handler ... succeeded" at INFO for every watch event and every activity (login,
        # startup, cleanup); ours only update the store, and the reconciler logs what it does.
        for name in ("kopf.objects", "kopf.activities"):
            logging.getLogger(name).setLevel(logging.WARNING)
    runtime = Runtime(settings)
    asyncio.run(
        kopf.operator(
            registry=build_registry(runtime),
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=not settings.peering,
            peering_name=settings.peering or None,
            priority=settings.effective_priority(),
            # kopf's Identity is a NewType of str that kopf does not export.
            identity=cast(Any, runtime.identity),
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        )
    )
    return 0
