"""The progress channel: workers POST WorkerReports, the operator merges them into status.

Authentication is Trainer v2's: the pod holds a projected ServiceAccount token whose audience names
one CompressionJob (namespace, name and uid). A TokenReview with that audience proves the token
was minted for this job, in the job's namespace, and bound to a pod, which must be a pod of this
job's Job; the pod needs no RBAC. Until the token is proven, every caller gets the same answer,
whether or not the CompressionJob exists. Writes are throttled per job (status trails the worker
by at most `interval`), and the final report is written at once.

The port is open to every pod that may reach it, so it is guarded: connection caps and read
timeouts (httpguard.py), TokenReviews cached and rate-limited per source (tokenreview.py), and
sequences bounded by the pod's age (reports.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from kompression.api.constants import PROGRESS_PATH_PREFIX, progress_audience
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import ReportCursor
from kompression.controller.httpguard import Guard, Limits
from kompression.controller.kubeapi import Api, ApiError, path
from kompression.controller.leadership import Leadership
from kompression.controller.metrics import Metrics
from kompression.controller.queueing import Key
from kompression.controller.reconcile import Reconciler
from kompression.controller.report_status import SequenceGate, sequence_bound
from kompression.controller.store import Store
from kompression.controller.tokenreview import BoundPod, RateLimited, Reviewer, claimed_audience
from kompression.controller.views import JobView, PodView

log = logging.getLogger(__name__)
MAX_REPORT_BYTES = 256 * 1024
NOT_VALID = "the token is not valid for this job"
FINISHED_POD_PHASES = ("Succeeded", "Failed")


def pod_belongs(pod: PodView, job: JobView, pod_uid: str) -> bool:
    """Whether `pod` (the one the token is bound to, by uid) is controlled by `job`."""
    return pod.uid == pod_uid and pod.job_uid == job.uid


class Refused(Exception):
    """The answer to a report that is not taken: an HTTP status and why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Throttle:
    """At most one status write per job per interval; always the newest report."""

    def __init__(self, interval: float, write: Any) -> None:
        self.interval, self._write = interval, write
        self._pending: dict[Key, tuple[WorkerReport, ReportCursor]] = {}
        self._last: dict[Key, float] = {}
        self._scheduled: set[Key] = set()

    def submit(self, key: Key, report: WorkerReport, cursor: ReportCursor) -> None:
        self._pending[key] = (report, cursor)
        if key in self._scheduled:
            return
        wait = 0.0 if report.phase != "Running" else self._last.get(key, 0.0) + self.interval - time.monotonic()
        self._scheduled.add(key)
        asyncio.get_running_loop().call_later(max(wait, 0.0), lambda: asyncio.ensure_future(self._flush(key)))

    async def _flush(self, key: Key) -> None:
        self._scheduled.discard(key)
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        self._last[key] = time.monotonic()
        try:
            await self._write(key, *pending)
        except (ApiError, OSError) as exc:  # the next report (or the termination message) carries it
            log.warning("could not write progress of %s/%s: %s", *key, exc)


class ProgressServer:
    def __init__(
        self,
        api: Api,
        store: Store,
        reconciler: Reconciler,
        interval: float,
        *,
        metrics: Metrics,
        leadership: Leadership | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.api, self.store, self.metrics, self.leadership = api, store, metrics, leadership
        self.reviewer = Reviewer(api)
        self.guard = Guard(limits or Limits())
        self.gate = SequenceGate()
        self.throttle = Throttle(interval, reconciler.status.apply_report)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REPORT_BYTES, middlewares=[self.guard.middleware])
        app.router.add_post(PROGRESS_PATH_PREFIX + "/{namespace}/{name}", self.handle)
        return app

    async def _authenticate(self, key: Key, auth: str, source: str) -> BoundPod:
        """The pod the caller's token is bound to, proven for this job's audience; else the answer.

        Nothing here depends on whether the CompressionJob exists, so an unproven caller cannot
        tell: the audience comes from the token's own (unverified) claim, which the review proves.
        """
        if not auth.startswith("Bearer "):
            raise Refused(401, "a Bearer token is required")
        token = auth[len("Bearer ") :].strip()
        audience = claimed_audience(token, progress_audience(*key, ""))
        if audience is None:
            raise Refused(403, NOT_VALID)
        try:
            bound = await self.reviewer.review(token, audience, key[0], source)
        except RateLimited as exc:
            raise Refused(429, str(exc), {"Retry-After": str(math.ceil(exc.retry_after_s))}) from None
        except (ApiError, OSError, TimeoutError) as exc:
            log.warning("could not review a progress token for %s/%s: %s", *key, exc)
            raise Refused(503, "the token cannot be checked now; retry") from None
        if bound is None:
            raise Refused(403, NOT_VALID)
        cr = self.store.crs.get(key)
        if cr is None or progress_audience(*key, str(cr["metadata"]["uid"])) != audience:
            raise Refused(403, NOT_VALID)  # a token of a deleted namesake
        return bound

    async def _pod(self, key: Key, bound: BoundPod) -> tuple[JobView, PodView] | None:
        """(Job, pod) when the token's pod is a pod of this job's Job."""
        stored = self.store.jobs.get(key)
        if stored is None:
            return None
        job = JobView.of(stored)
        body = self.store.pods.get((key[0], job.name), {}).get(bound.name)
        if body is None:
            try:
                body = await self.api.get(path("", "v1", "pods", namespace=key[0], name=bound.name))
            except (ApiError, OSError, TimeoutError) as exc:
                raise Refused(503, f"the token's pod cannot be read now ({exc}); retry") from None
        pod = PodView.of(body) if body is not None else None
        return (job, pod) if pod is not None and pod_belongs(pod, job, bound.uid) else None

    def _pod_live(self, namespace: str, job: JobView, pod_uid: str) -> bool:
        for pod in map(PodView.of, self.store.pods_of(namespace, job.name)):
            if pod.uid == pod_uid:
                return pod.phase not in FINISHED_POD_PHASES and not pod.deleting
        return False

    async def handle(self, request: web.Request) -> web.Response:
        try:
            response = await self._take(request)
        except Refused as exc:
            response = web.json_response({"error": exc.message}, status=exc.status, headers=exc.headers)
        self.metrics.progress_requests.labels(str(response.status)).inc()
        return response

    async def _take(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if self.leadership is not None and not self.leadership.active:
            # A paused peer's store is stale; the worker retries and may reach the leader.
            raise Refused(503, "this operator replica is paused; another leads")
        bound = await self._authenticate(key, request.headers.get("Authorization", ""), request.remote or "")
        owned = await self._pod(key, bound)
        if owned is None:
            raise Refused(403, "the token's pod does not run this job")
        job, pod = owned
        try:
            report = WorkerReport.model_validate_json(await request.read())
        except ValidationError as exc:
            raise Refused(400, str(exc)) from None
        limit = sequence_bound(pod.started, datetime.now(UTC))
        if report.sequence > limit:
            raise Refused(400, f"sequence {report.sequence} is ahead of the worker's age (at most {limit} now)")
        cr = self.store.crs.get(key)
        if cr is None:
            raise Refused(403, NOT_VALID)
        persisted = (cr.get("status") or {}).get("lastReport")
        cursor = ReportCursor(podUID=bound.uid, sequence=report.sequence)
        accepted = self.gate.accept(
            str(cr["metadata"]["uid"]),
            cursor,
            ReportCursor.model_validate(persisted) if persisted else None,
            lambda uid: self._pod_live(key[0], job, uid),
        )
        if not accepted:
            return web.json_response({"accepted": False, "reason": "stale sequence"}, status=200)
        self.throttle.submit(key, report, cursor)
        return web.json_response({"accepted": True}, status=202)

    def forget(self, job_uid: str) -> None:
        self.gate.forget(job_uid)
