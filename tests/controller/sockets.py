"""Client-side probes of a server's connection handling, over plain sockets."""

from __future__ import annotations

import select
import socket
import time


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock` (EOF or reset), reading whatever it sends; None if it stayed open."""
    started = time.monotonic()
    while (left := seconds - (time.monotonic() - started)) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if readable:
            try:
                if not sock.recv(65536):
                    return time.monotonic() - started
            except ConnectionResetError:
                return time.monotonic() - started
    return None


def is_open(sock: socket.socket) -> bool:
    return closed_within(sock, 0.0) is None and closed_within(sock, 0.05) is None
