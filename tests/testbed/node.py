"""One real node in the test bed (hack/node.sh): containerd, runc, the CNI bridge and a kubelet,
beside the kwok nodes, with the product images imported into containerd.

`real_node` (session scope) starts it on the `kube` fixture's cluster and stops it, mounts and
rules included, at the end. It skips unless asked for (`make test-node` sets
KOMPRESSION_REAL_NODE=1), and, naming the fix, where the node's prerequisites are absent: root,
containerd/runc/CNI/iptables/gcc/buildah, the kubelet (`make node-deps`), the CPU worker image
(`make images`). Pods reach the host's loopback servers at `gateway` (a DNAT to 127.0.0.1);
nothing they send is forwarded off the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .cluster import REPO_ROOT, bin_dir
from .procs import log_tail

NODE_SH = REPO_ROOT / "hack" / "node.sh"
NODE_NAME = "kompression-node-0"
NODE_LABEL = "kompression.dev/real-node"
GATEWAY = "10.213.0.1"
BRIDGE = "kompression0"
CHAIN = "KOMPRESSION-NODE"
_VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
WORKER_CPU_IMAGE = f"ghcr.io/kompression/worker:{_VERSION}-cpu"
OPERATOR_IMAGE = f"ghcr.io/kompression/operator:{_VERSION}"
WORKER_LLM_IMAGE = f"ghcr.io/kompression/worker-llm:{_VERSION}"
# Opt-in: `make test` does not start the real node; `make test-node` does.
OPT_IN = "KOMPRESSION_REAL_NODE"
_COMMANDS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip6tables", "ip", "gcc", "buildah")


@dataclass
class RealNode:
    name: str
    gateway: str
    testbed_dir: Path
    worker_image: str
    images: tuple[str, ...]

    @property
    def selector(self) -> dict[str, str]:
        """The nodeSelector that puts a pod on this node (and never on a kwok one)."""
        return {NODE_LABEL: "true"}

    def url(self, loopback_url: str) -> str:
        """A host loopback URL (http://127.0.0.1:PORT/...) as a pod on this node reaches it."""
        return loopback_url.replace("127.0.0.1", self.gateway).replace("localhost", self.gateway)

    def has_image(self, tag: str) -> bool:
        """Whether `tag` was imported into the node's containerd (images are imported when built)."""
        return tag in self.images

    def dropped_off_machine(self) -> int:
        """Packets the safety net has dropped from the pod bridge towards another interface."""
        out = subprocess.run(
            ["iptables", "-L", CHAIN, "-v", "-x", "-n"], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 7 and fields[2] == "DROP" and fields[5] == BRIDGE:
                return int(fields[0])
        raise AssertionError(f"no DROP rule for traffic in from {BRIDGE} in chain {CHAIN}:\n{out}")


def _image_built(tag: str) -> bool:
    return (
        subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, check=False).returncode == 0
    )


def missing_prerequisites() -> str | None:
    """Why the real node cannot start here (or was not asked for), or None."""
    if os.environ.get(OPT_IN) != "1":
        return f"the real node's tests run with `make test-node` ({OPT_IN}=1)"
    if os.geteuid() != 0:
        return "the real node needs root (mounts, network namespaces, iptables)"
    missing = [c for c in _COMMANDS if shutil.which(c) is None]
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        return f"the real node needs {', '.join(missing)} (apt-get install containerd runc iptables gcc buildah)"
    if not os.access(bin_dir() / "kubelet", os.X_OK):
        return f"no kubelet in {bin_dir()}: run `make node-deps`"
    if not _image_built(WORKER_CPU_IMAGE):
        return f"{WORKER_CPU_IMAGE} is not built: run `make images`"
    return None


def node_sh(
    testbed_dir: Path, *args: str, timeout: float, path_prefix: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """hack/node.sh on `testbed_dir`'s node; `path_prefix` puts commands ahead of the system's."""
    env = {**os.environ, "TESTBED_DIR": str(testbed_dir)}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    return subprocess.run([str(NODE_SH), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def real_node(request: pytest.FixtureRequest) -> Iterator[RealNode]:
    reason = missing_prerequisites()
    if reason:
        pytest.skip(reason)
    # Only now: a skipped node must not start a cluster first.
    kube: Any = request.getfixturevalue("kube")
    testbed_dir = Path(kube.kubeconfig).parent
    up = node_sh(testbed_dir, "up", timeout=300)
    if up.returncode != 0:
        logs = testbed_dir / "node" / "logs"
        tails = "".join(f"\n--- {p.name}\n{log_tail(p)}" for p in sorted(logs.glob("*.log"))) if logs.exists() else ""
        node_sh(testbed_dir, "down", timeout=120)
        pytest.fail(f"hack/node.sh up failed:\n{up.stderr[-3000:]}{tails}")
    try:
        images = [WORKER_CPU_IMAGE] + [t for t in (OPERATOR_IMAGE, WORKER_LLM_IMAGE) if _image_built(t)]
        imported = node_sh(testbed_dir, "import", *images, timeout=1800)
        assert imported.returncode == 0, imported.stderr[-3000:]
        yield RealNode(NODE_NAME, GATEWAY, testbed_dir, WORKER_CPU_IMAGE, tuple(images))
    finally:
        down = node_sh(testbed_dir, "down", timeout=180)
        assert down.returncode == 0, down.stderr[-3000:]
