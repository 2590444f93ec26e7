"""Who a progress token belongs to: TokenReviews, cached and rate-limited per source.

A TokenReview is an API server round trip, and the progress port is open to every pod that may
reach it, so each review is paid for at most once per token and audience for `ttl_s` (accepted
and refused alike), and each source address gets a small budget of reviews (a token bucket).
Tokens that do not even claim the job's audience are refused without a review (`claimed_audience`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kompression.controller.kubeapi import Api, path

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class BoundPod:
    """The pod a token is bound to, as the API server vouches for it."""

    namespace: str
    name: str
    uid: str


class RateLimited(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many token reviews from this address; retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


def claimed_audience(token: str, prefix: str) -> str | None:
    """The audience starting with `prefix` that the token claims, read without verifying it.

    The claim only picks the audience to ask the API server about; the TokenReview proves it.
    """
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 16384:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    aud = claims.get("aud") if isinstance(claims, dict) else None
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return next((a for a in audiences if isinstance(a, str) and a.startswith(prefix)), None)


def bound_pod(status: dict[str, Any], audience: str, namespace: str) -> BoundPod | None:
    """The pod a TokenReview's status proves the token is bound to, if it proves all of it:

    authenticated for `audience` (an empty `audiences` means the authenticator ignored it), a
    ServiceAccount of `namespace`, and bound to one pod (the pod name and uid extras of a projected
    token; a token not bound to a pod proves nothing about the job).
    """
    if status.get("authenticated") is not True or audience not in (status.get("audiences") or []):
        return None
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    sa_namespace, _, sa_name = username.removeprefix(SA_PREFIX).partition(":")
    if not username.startswith(SA_PREFIX) or sa_namespace != namespace or not sa_name:
        return None
    extra = user.get("extra") or {}
    names, uids = extra.get(POD_NAME_EXTRA) or [], extra.get(POD_UID_EXTRA) or []
    if len(names) != 1 or len(uids) != 1 or not names[0] or not uids[0]:
        return None
    return BoundPod(namespace, str(names[0]), str(uids[0]))


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at


class Reviewer:
    def __init__(
        self,
        api: Api,
        *,
        ttl_s: float = 60.0,
        per_source_rate: float = 1.0,
        per_source_burst: int = 10,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.ttl_s, self.clock = api, ttl_s, clock
        self.rate, self.burst, self.max_entries = per_source_rate, per_source_burst, max_entries
        self._cache: OrderedDict[tuple[str, str], tuple[float, BoundPod | None]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[BoundPod | None]] = {}
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    async def review(self, token: str, audience: str, namespace: str, source: str) -> BoundPod | None:
        """The pod `token` is bound to for `audience` in `namespace`; None if the API server says
        otherwise. Raises RateLimited when `source` has used up its reviews."""
        key = (hashlib.sha256(token.encode()).hexdigest(), audience)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:  # the same token, asked for at once: one review answers all
            return await asyncio.shield(pending)
        self._spend(source, now)
        future: asyncio.Future[BoundPod | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._ask(token, audience, namespace)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so that nobody waiting is not an error
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(result)
        self._remember(key, result)
        return result

    def _spend(self, source: str, now: float) -> None:
        bucket = self._buckets.pop(source, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        self._buckets[source] = bucket  # most recently used last
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1.0:
            raise RateLimited((1.0 - bucket.tokens) / self.rate)
        bucket.tokens -= 1.0

    def _remember(self, key: tuple[str, str], result: BoundPod | None) -> None:
        self._cache.pop(key, None)
        self._cache[key] = (self.clock() + self.ttl_s, result)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    async def _ask(self, token: str, audience: str, namespace: str) -> BoundPod | None:
        review = await self.api.create(
            path("authentication.k8s.io", "v1", "tokenreviews"),
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]},
            },
        )
        return bound_pod(review.get("status") or {}, audience, namespace)
