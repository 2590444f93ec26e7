"""The progress port's guard, on real sockets on loopback: slow and idle clients are cut off."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from aiohttp import web
from sockets import closed_within, is_open

from kompression.controller.httpguard import Guard, Limits

LIMITS = Limits(head_timeout_s=1.0, body_timeout_s=1.0, max_connections=64, max_per_source=8)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """A guarded echo application served from its own event loop thread."""
    loop = asyncio.new_event_loop()
    ready: list[int] = []

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"read": len(await request.read())})

    async def serve() -> web.AppRunner:
        guard = Guard(LIMITS)
        app = web.Application(middlewares=[guard.middleware])
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        server = await guard.serve(runner, "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[1])
        return runner

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    yield ready[0]
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


def test_a_served_request_closes_its_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        reply = b""
        while chunk := sock.recv(65536):  # no keep-alive: the server ends the connection
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and json.loads(body) == {"read": 2}


def test_a_trickled_head_is_cut_off_at_the_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        closed = None
        for byte in b"POST /echo HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = time.monotonic() - started
                break
            if closed_within(sock, 0.4) is not None:
                closed = time.monotonic() - started
                break
        assert closed is not None, "the trickled head kept the connection open"
        assert closed < LIMITS.head_timeout_s + 0.5


def test_a_trickled_body_gets_408_at_the_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        reply = b""
        while time.monotonic() - started < LIMITS.body_timeout_s + 1.0:
            readable, _, _ = select.select([sock], [], [], 0.3)
            if readable:
                reply = sock.recv(65536)
                break
            sock.sendall(b" ")
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]


def test_idle_connections_are_capped_and_then_closed(port: int) -> None:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    try:
        time.sleep(0.3)
        open_now = sum(is_open(s) for s in socks)
        assert open_now <= LIMITS.max_per_source, f"{open_now} idle connections from one address stayed open"
        time.sleep(LIMITS.head_timeout_s + 0.5)
        assert not any(is_open(s) for s in socks), "idle connections outlived the head timeout"
    finally:
        for s in socks:
            s.close()
