"""Control-plane faults for the test bed: etcd compaction, and a second kube-apiserver on the same
etcd. (Network faults, stalled or cut connections, are testbed.relay's.)

Real parts, not mocks: compaction goes through etcd's own v3 JSON gateway, and the second
kube-apiserver is the same binary with the same flags, as in an HA control plane.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .procs import LOOPBACK, Daemon, free_port, wait_for

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
