"""The limits aiohttp's server lacks, for an endpoint that anyone who can reach the port may call.

aiohttp reads a request head for as long as the client keeps sending, and times out idle
connections only after a first request, so a client that connects and trickles one byte every few
seconds holds a connection (and a file descriptor) for ever; a few hundred such clients exhaust
the process. The guard wraps aiohttp's protocol, per connection:

- connections beyond `max_connections` in all, or `max_per_source` from one address, are closed
  at once;
- the request head must arrive within `head_timeout_s` of connecting, the body within
  `body_timeout_s` of the head;
- each connection serves one request and is then closed (no keep-alive: a worker opens one per
  report, seconds apart).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Limits:
    head_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_connections: int = 512
    max_per_source: int = 16


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the connection caps and the head deadline."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.source = ""
        self.transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        if not self.guard.admit(source):
            transport.abort()
            return
        self.source, self.transport = source, transport
        self.guard.connections[transport] = self
        self._deadline = asyncio.get_running_loop().call_later(self.guard.limits.head_timeout_s, transport.abort)
        self.inner.connection_made(transport)

    def head_received(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        if self.transport is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.transport is not None else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused: aiohttp never saw it
        self.head_received()
        self.guard.release(self)
        self.inner.connection_lost(exc)


class Guard:
    """Serves an aiohttp application under `limits`; add `middleware` to the application."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections: dict[asyncio.BaseTransport, _Guarded] = {}
        self._per_source: dict[str, int] = {}

    def admit(self, source: str) -> bool:
        if len(self.connections) >= self.limits.max_connections:
            return False
        if self._per_source.get(source, 0) >= self.limits.max_per_source:
            return False
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return True

    def release(self, conn: _Guarded) -> None:
        assert conn.transport is not None
        self.connections.pop(conn.transport, None)
        left = self._per_source.get(conn.source, 1) - 1
        if left > 0:
            self._per_source[conn.source] = left
        else:
            self._per_source.pop(conn.source, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self.connections.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.head_received()
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                await request.read()  # kept by aiohttp: the handler's read returns it at once
        except TimeoutError:
            response: web.StreamResponse = web.json_response({"error": "the request body was too slow"}, status=408)
        else:
            response = await handler(request)
        response.force_close()
        return response

    async def serve(self, runner: web.AppRunner, host: str, port: int) -> asyncio.Server:
        """Listen on host:port with `runner`'s (already set up) application behind the guard."""
        server = runner.server
        assert server is not None, "runner.setup() first"
        return await asyncio.get_running_loop().create_server(
            # A backlog as deep as the cap: connections past it are refused by the guard, not left
            # half-open in the kernel's queue.
            lambda: _Guarded(self, server()),
            host,
            port,
            reuse_address=True,
            backlog=self.limits.max_connections,
        )
