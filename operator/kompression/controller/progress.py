"""The progress channel: workers POST WorkerReports, the operator merges them into status.

Authentication is Trainer v2's: the pod holds a projected ServiceAccount token whose audience names
one CompressionJob (namespace, name and uid). A TokenReview with that audience proves the token
was minted for this job, and the pod it is bound to must be a pod of this job's Job; the pod needs
no RBAC. Writes are throttled per job (status trails the worker by at most `interval`), and the
final report is written at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from kompression.api.constants import PROGRESS_PATH_PREFIX, progress_audience
from kompression.api.report import WorkerReport
from kompression.controller.kubeapi import Api, ApiError, path
from kompression.controller.leadership import Leadership
from kompression.controller.queueing import Key
from kompression.controller.reconcile import Reconciler
from kompression.controller.reports import SequenceGate, older_than_status
from kompression.controller.store import Body, Store

log = logging.getLogger(__name__)
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
REVIEW_CACHE_S = 60.0
MAX_REPORT_BYTES = 256 * 1024


def pod_belongs(pod: Body, job: Body, pod_uid: str | None) -> bool:
    """Whether `pod` (the one the token is bound to) is controlled by `job`."""
    if pod_uid and pod["metadata"].get("uid") != pod_uid:
        return False
    job_uid = job["metadata"].get("uid")
    return any(
        ref.get("controller") and ref.get("kind") == "Job" and ref.get("uid") == job_uid
        for ref in pod["metadata"].get("ownerReferences") or ()
    )


class Throttle:
    """At most one status write per job per interval; always the newest report."""

    def __init__(self, interval: float, write: Any) -> None:
        self.interval, self._write = interval, write
        self._pending: dict[Key, WorkerReport] = {}
        self._last: dict[Key, float] = {}
        self._scheduled: set[Key] = set()

    def submit(self, key: Key, report: WorkerReport) -> None:
        self._pending[key] = report
        if key in self._scheduled:
            return
        wait = 0.0 if report.phase != "Running" else self._last.get(key, 0.0) + self.interval - time.monotonic()
        self._scheduled.add(key)
        asyncio.get_running_loop().call_later(max(wait, 0.0), lambda: asyncio.ensure_future(self._flush(key)))

    async def _flush(self, key: Key) -> None:
        self._scheduled.discard(key)
        report = self._pending.pop(key, None)
        if report is None:
            return
        self._last[key] = time.monotonic()
        try:
            await self._write(key, report)
        except (ApiError, OSError) as exc:  # the next report (or the termination message) carries it
            log.warning("could not write progress of %s/%s: %s", *key, exc)


class ProgressServer:
    def __init__(
        self, api: Api, store: Store, reconciler: Reconciler, interval: float, leadership: Leadership | None = None
    ) -> None:
        self.api, self.store, self.leadership = api, store, leadership
        self.gate = SequenceGate()
        self.throttle = Throttle(interval, reconciler.apply_report)
        self._reviews: dict[tuple[str, str], tuple[float, str, str | None]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REPORT_BYTES)
        app.router.add_post(PROGRESS_PATH_PREFIX + "/{namespace}/{name}", self.handle)
        return app

    async def _review(self, token: str, audience: str) -> tuple[str, str | None] | None:
        """(pod name, pod uid) the token is bound to, if the API server accepts it for `audience`."""
        cache_key = (hashlib.sha256(token.encode()).hexdigest(), audience)
        hit = self._reviews.get(cache_key)
        if hit and hit[0] > time.monotonic():
            return hit[1], hit[2]
        review = await self.api.create(
            path("authentication.k8s.io", "v1", "tokenreviews"),
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]},
            },
        )
        status = review.get("status") or {}
        if not status.get("authenticated") or audience not in (status.get("audiences") or [audience]):
            return None
        extra = (status.get("user") or {}).get("extra") or {}
        names, uids = extra.get(POD_NAME_EXTRA) or [], extra.get(POD_UID_EXTRA) or []
        if not names:
            return None  # not bound to a pod: a bare ServiceAccount token proves nothing about the job
        self._reviews[cache_key] = (time.monotonic() + REVIEW_CACHE_S, names[0], uids[0] if uids else None)
        return names[0], (uids[0] if uids else None)

    async def _authorize(self, key: Key, auth: str) -> tuple[int, str]:
        """(200, CompressionJob uid) for a token bound to a pod of this job; else (status, error)."""
        if not auth.startswith("Bearer "):
            return 401, "a Bearer token is required"
        cr, job = self.store.crs.get(key), self.store.jobs.get(key)
        if cr is None or job is None:
            return 404, "no such CompressionJob, or it has no Job yet"
        uid = str(cr["metadata"]["uid"])
        bound = await self._review(auth[len("Bearer ") :].strip(), progress_audience(*key, uid))
        if bound is None:
            return 403, "the token is not valid for this job"
        pod = self.store.pods.get((key[0], job["metadata"]["name"]), {}).get(bound[0])
        if pod is None:
            pod = await self.api.get(path("", "v1", "pods", namespace=key[0], name=bound[0]))
        if pod is None or not pod_belongs(pod, job, bound[1]):
            return 403, "the token's pod does not run this job"
        return 200, uid

    async def handle(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if self.leadership is not None and not self.leadership.active:
            # A paused peer's store is stale; the worker retries and may reach the leader.
            return web.json_response({"error": "this operator replica is paused; another leads"}, status=503)
        code, uid = await self._authorize(key, request.headers.get("Authorization", ""))
        if code != 200:
            return web.json_response({"error": uid}, status=code)
        try:
            report = WorkerReport.model_validate_json(await request.read())
        except ValidationError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        cr = self.store.crs.get(key) or {}
        stale = not self.gate.knows(uid) and older_than_status(report, cr.get("status") or {})
        if stale or not self.gate.accept(uid, report.sequence):
            return web.json_response({"accepted": False, "reason": "stale sequence"}, status=200)
        self.throttle.submit(key, report)
        return web.json_response({"accepted": True}, status=202)
