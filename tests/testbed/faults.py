"""Network and storage faults for the test bed: a TCP proxy that stalls or cuts the operator's
connections to the API server, etcd compaction, and a second kube-apiserver on the same etcd.

Real parts, not mocks: the proxy forwards the TLS bytes as they are (the operator still verifies
the API server's certificate), compaction goes through etcd's own v3 JSON gateway, and the second
kube-apiserver is the same binary with the same flags, as in an HA control plane.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .procs import LOOPBACK, Daemon, free_port, wait_for


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.stalled = False

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """A loopback TCP proxy to `upstream` that can misbehave on command.

    - `stall()`: every open connection stops forwarding, in both directions, and stays open: the
      peers see silence, never an error, as behind a NAT or load balancer that dropped its state.
      Those connections stay stalled for good; new ones work.
    - `cut()`: every open connection is closed and new ones are closed at once, until `restore()`.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._cut = False
        self.accepted = 0  # connections forwarded so far
        self._closing = threading.Event()
        self._server = socket.create_server((LOOPBACK, 0))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def kubeconfig(self, original: Path, path: Path) -> Path:
        """A copy of `original` whose server is this proxy (same credentials, same CA)."""
        config = yaml.safe_load(original.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = self.url
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

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            links, self._links = self._links, []
        for link in links:
            link.close()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self._server.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
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
            while True:
                data = src.recv(65536)
                if not data:
                    break
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


# ---------------------------------------------------------------------------------- etcd


def etcd_url(state_dir: Path) -> str:
    ports = json.loads((state_dir / "ports.json").read_text())
    return f"http://{LOOPBACK}:{ports['etcd']}"


def _etcd(url: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url + endpoint, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def etcd_revision(url: str) -> int:
    """etcd's current revision (the header of any read)."""
    answer = _etcd(url, "/v3/kv/range", {"key": base64.b64encode(b"/").decode(), "limit": 1})
    return int(answer["header"]["revision"])


def etcd_compact(url: str) -> int:
    """Compact etcd's history up to its current revision (what kube-apiserver does every 5 minutes);
    a watch resuming from an older revision then gets 410 Gone. Returns the revision."""
    revision = etcd_revision(url)
    _etcd(url, "/v3/kv/compaction", {"revision": str(revision), "physical": True})
    return revision


# ---------------------------------------------------------------------------------- apiserver


def _argv(state_dir: Path, component: str) -> list[str]:
    pid = int((state_dir / "pids" / f"{component}.pid").read_text().split()[0])
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


@contextlib.contextmanager
def second_apiserver(state_dir: Path, *flags: str, timeout: float = 90) -> Iterator[int]:
    """Another kube-apiserver on the cluster's etcd, with the first one's flags plus `flags`
    (say, `--watch-cache=false`); yields its port and stops it afterwards."""
    port = free_port()
    argv = [a for a in _argv(state_dir, "kube-apiserver") if not a.startswith("--secure-port=")]
    name = f"kube-apiserver-{port}"
    daemon = Daemon(
        name, [*argv, f"--secure-port={port}", *flags], state_dir / "logs" / f"{name}.log", state_dir / "pids" / name
    )
    ctx = ssl.create_default_context(cafile=str(state_dir / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(state_dir / "pki" / "admin.crt"), str(state_dir / "pki" / "admin.key"))

    def ready() -> bool:
        with urllib.request.urlopen(f"https://{LOOPBACK}:{port}/readyz", context=ctx, timeout=5) as resp:
            return bool(resp.read() == b"ok")

    try:
        wait_for(f"{name} /readyz", ready, timeout, [daemon])
        yield port
    finally:
        daemon.stop()
