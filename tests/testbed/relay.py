"""A loopback TCP relay in front of a real server, whose network can stall, go away and come back.

Killing the server would also wipe its state (moto keeps what it stores in memory, the API server
its watches), so that nothing could be checked afterwards. The relay is the network instead; the
server behind it stays real and untouched, and the bytes pass as they are (TLS included: the client
still verifies the server's certificate).

- `stall()`: every open connection stops forwarding, in both directions, and stays open: the peers
  see silence, never an error, as behind a NAT or load balancer that dropped its state. Those
  connections stay stalled for good; new ones work.
- `cut()`: the listening port closes and every open connection is reset, as an endpoint that went
  down; `restore()` listens again on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path

import yaml

from .procs import LOOPBACK


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.stalled = False

    def close(self, reset: bool = False) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                if reset:  # RST, as a peer that vanished; SHUT_RD only wakes our own pump
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class Relay:
    """A relay from a free loopback port to `LOOPBACK:target_port`; see the module's docstring."""

    def __init__(self, target_port: int) -> None:
        self.target = (LOOPBACK, target_port)
        self.accepted = 0  # connections forwarded so far
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def kubeconfig(self, original: Path, path: Path) -> Path:
        """A copy of `original` whose server is this relay (same credentials, same CA)."""
        config = yaml.safe_load(original.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://{LOOPBACK}:{self.port}"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def stall(self) -> int:
        """Stall every open connection; returns how many there were."""
        with self._lock:
            live = [link for link in self._links if not link.stalled]
            for link in live:
                link.stalled = True
        return len(live)

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(64)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="relay", daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close(reset=True)

    def close(self) -> None:
        self._closing.set()  # releases the stalled pumps
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(link, src, dst), daemon=True).start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                if link.stalled:
                    self._closing.wait()  # hold the bytes; the kernel's buffers fill, then TCP waits
                    break
                dst.sendall(data)
        except OSError:
            pass
        if not link.stalled:
            link.close()
            with self._lock, contextlib.suppress(ValueError):
                self._links.remove(link)
