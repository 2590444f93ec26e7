"""The work queue, as in controller-runtime: keys, not events, each handled by one worker at a time.

A key enqueued while queued is queued once; a key enqueued while a worker has it runs again when
that worker is done. A failed run is retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kompression.controller.kubeapi import ApiError
from kompression.controller.queueing import Key

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


class WorkQueue:
    def __init__(
        self,
        handle: Callable[[Key], Awaitable[None]],
        *,
        paused: Callable[[], bool],
        on_error: Callable[[], None],
    ) -> None:
        self._handle, self._paused, self._on_error = handle, paused, on_error
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._failures: dict[Key, int] = {}

    def add(self, key: Key, delay: float = 0.0) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.add, key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def run(self, workers: int) -> None:
        # Reconciles wait on the API server, not the CPU: several in flight keep a burst moving.
        await asyncio.gather(*(self._work() for _ in range(max(1, workers))))

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            if self._paused():
                continue  # everything is enqueued again when this replica leads
            if key in self._active:  # another worker has it: run again once it is done
                self._dirty.add(key)
                continue
            self._active.add(key)
            try:
                await self._handle(key)
                self._failures.pop(key, None)
            except ApiError as err:
                if not err.namespace_terminating:
                    self._failed(key)
                # else: the namespace and this CR are going away; nothing to create there.
            except Exception:
                self._failed(key)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)

    def _failed(self, key: Key) -> None:
        """Count, log (inside the caller's except block) and retry with exponential backoff."""
        self._on_error()
        n = self._failures[key] = self._failures.get(key, 0) + 1
        log.exception("reconcile of %s/%s failed (attempt %d)", *key, n)
        self.add(key, min(2.0**n * 0.25, MAX_BACKOFF_S))
