"""Local Kubernetes control plane for tests: etcd, kube-apiserver, controller-manager, scheduler, kwok.

Real binaries (built by hack/build-testbed.sh into ~/.cache/kompression/bin) run as plain
processes on 127.0.0.1 with fresh ports and fresh state; kwok simulates the nodes and the
kubelet's pod lifecycle. Usage from a shell: `python -m testbed.cluster up|down|status`
(with tests/ on PYTHONPATH), or through `make -f Makefile.testbed cluster`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .nodes import FAKE_NODES
from .pki import ClientCert, TestbedPKI
from .procs import (
    LOOPBACK,
    Daemon,
    TestbedError,
    free_port,
    read_pid,
    stop_pid,
    wait_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES_DIR = REPO_ROOT / "hack" / "kwok-stages"
DEFAULT_STATE_DIR = REPO_ROOT / ".testbed"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
# Start order; shutdown goes the other way so nothing loses its apiserver mid-write.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
BUILD_HINT = "run `make -f Makefile.testbed testbed-deps` (or hack/build-testbed.sh) first"


def bin_dir() -> Path:
    cache = os.environ.get("KOMPRESSION_CACHE") or str(Path.home() / ".cache" / "kompression")
    return Path(cache) / "bin"


def binary(name: str) -> Path:
    """Absolute path of a cached test-bed binary, or a clear error naming the fix."""
    path = bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise TestbedError(f"test bed binary {name!r} not found at {path}; {BUILD_HINT}")
    return path


@dataclass
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def allocate(cls) -> Ports:
        return cls(*(free_port() for _ in range(6)))


class Cluster:
    """One control plane whose whole state (PKI, etcd data, logs, pids) lives in `state_dir`."""

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR, *, detached: bool = False) -> None:
        """`detached`: the processes outlive this Python process (`make cluster`); otherwise
        they get SIGTERM when it exits, however it exits (the pytest fixture's case)."""
        self.dir = state_dir.resolve()
        self.detached = detached
        self.kubeconfig = self.dir / "kubeconfig"
        self.pki_dir = self.dir / "pki"
        self.log_dir = self.dir / "logs"
        self.pid_dir = self.dir / "pids"
        self._daemons: list[Daemon] = []

    # ---- status ---------------------------------------------------------------------------

    def running_pids(self) -> dict[str, int]:
        pids = {}
        for name in COMPONENTS:
            pid = read_pid(self.pid_dir / f"{name}.pid", name)
            if pid is not None:
                pids[name] = pid
        return pids

    def is_healthy(self) -> bool:
        if set(self.running_pids()) != set(COMPONENTS) or not self.kubeconfig.exists():
            return False
        try:
            return self._get("/readyz") == "ok"
        except (OSError, KeyError, TestbedError):
            return False

    # ---- lifecycle -------------------------------------------------------------------------

    def up(self, timeout: float = 90.0) -> bool:
        """Start everything; False if a healthy cluster was already running (left alone)."""
        if self.is_healthy():
            return False
        self.down(quiet=True)
        bins = {name: binary(name) for name in COMPONENTS}
        self._prepare_dirs()
        ports = Ports.allocate()
        (self.dir / "ports.json").write_text(json.dumps(ports.__dict__, indent=2))
        pki = TestbedPKI(self.pki_dir)
        sa_key, sa_pub = pki.service_account_keys()
        serving = pki.serving()
        front_proxy = pki.client("front-proxy-client", "front-proxy-client")
        server = f"https://{LOOPBACK}:{ports.apiserver}"
        self._write_kubeconfig(self.kubeconfig, server, pki, pki.client("admin", "kubernetes-admin", "system:masters"))
        kcm_cfg = self.dir / "controller-manager.kubeconfig"
        self._write_kubeconfig(kcm_cfg, server, pki, pki.client("kcm", "system:kube-controller-manager"))
        sched_cfg = self.dir / "scheduler.kubeconfig"
        self._write_kubeconfig(sched_cfg, server, pki, pki.client("scheduler", "system:kube-scheduler"))
        try:
            self._start_etcd(bins["etcd"], ports, timeout)
            self._start_apiserver(
                bins["kube-apiserver"],
                ports,
                pki,
                serving=serving,
                front_proxy=front_proxy,
                sa_key=sa_key,
                sa_pub=sa_pub,
                timeout=timeout,
            )
            self._start_controller_manager(bins["kube-controller-manager"], ports, kcm_cfg, pki, sa_key)
            self._start_scheduler(bins["kube-scheduler"], ports, sched_cfg)
            self._start_kwok(bins["kwok"], ports)
            self._create_nodes()
            self._wait_settled(timeout)
        except BaseException:
            self.down(quiet=True, keep_logs=True)
            raise
        return True

    def down(self, quiet: bool = False, keep_logs: bool = True) -> None:
        """Stop every component we started (by pid file) and delete the cluster state."""
        for name in reversed(COMPONENTS):
            pid = read_pid(self.pid_dir / f"{name}.pid", name)
            if pid is not None:
                if not quiet:
                    print(f"stopping {name} (pid {pid})")
                stop_pid(pid)
        self._daemons.clear()
        if self.dir.exists():
            for child in self.dir.iterdir():
                if keep_logs and child == self.log_dir:
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    # ---- components -----------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        shutil.rmtree(self.log_dir, ignore_errors=True)
        for d in (self.dir, self.log_dir, self.pid_dir, self.pki_dir):
            d.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, argv: list[str]) -> Daemon:
        daemon = Daemon(
            name, argv, self.log_dir / f"{name}.log", self.pid_dir / f"{name}.pid", die_with_parent=not self.detached
        )
        self._daemons.append(daemon)
        return daemon

    def _start_etcd(self, exe: Path, ports: Ports, timeout: float) -> None:
        client = f"http://{LOOPBACK}:{ports.etcd}"
        peer = f"http://{LOOPBACK}:{ports.etcd_peer}"
        etcd = self._spawn(
            "etcd",
            [
                str(exe),
                "--name=testbed",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=testbed={peer}",
                "--listen-metrics-urls=",
                # Throwaway data: skipping fsync makes every apiserver write much cheaper.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_for("etcd /health", lambda: _http_ok(f"{client}/health"), timeout, [etcd])

    def _start_apiserver(
        self,
        exe: Path,
        ports: Ports,
        pki: TestbedPKI,
        *,
        serving: ClientCert,
        front_proxy: ClientCert,
        sa_key: Path,
        sa_pub: Path,
        timeout: float,
    ) -> None:
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(exe),
                f"--etcd-servers=http://{LOOPBACK}:{ports.etcd}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={ports.apiserver}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # Front-proxy (request-header) auth: aggregated API servers work, and the
                # controller-manager and scheduler find the CA bundle they look for at start.
                f"--requestheader-client-ca-file={pki.ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front_proxy.cert}",
                f"--proxy-client-key-file={front_proxy.key}",
                "--allow-privileged=true",
                # There is no real network: publishing 127.0.0.1 as the `kubernetes` Service
                # endpoint is rejected by validation and would only spam the log.
                "--endpoint-reconciler-type=none",
                # The real node (hack/node.sh) is reached at its InternalIP, the pod bridge's
                # address: its name resolves nowhere. kwok's nodes have no address at all.
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
                "--v=1",
            ],
        )
        wait_for("kube-apiserver /readyz", lambda: self._get("/readyz") == "ok", timeout, [apiserver])

    def _start_controller_manager(
        self, exe: Path, ports: Ports, kubeconfig: Path, pki: TestbedPKI, sa_key: Path
    ) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                str(exe),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={ports.controller_manager}",
                "--controllers=*",
                # Each controller acts as its own ServiceAccount, so RBAC problems show up as in
                # a kubeadm cluster instead of being hidden behind one all-powerful identity.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                "--cluster-name=kompression-testbed",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_scheduler(self, exe: Path, ports: Ports, kubeconfig: Path) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(exe),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={ports.scheduler}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_kwok(self, exe: Path, ports: Ports) -> None:
        stages = sorted(STAGES_DIR.glob("*.yaml"))
        if not stages:
            raise TestbedError(f"no kwok Stage files in {STAGES_DIR}")
        config = self.dir / "kwok-stages.yaml"
        config.write_text("\n---\n".join(p.read_text() for p in stages))
        self._spawn(
            "kwok",
            [
                str(exe),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                # kwok then renews a Lease per node, as a kubelet does.
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
                f"--server-address={LOOPBACK}:{ports.kwok}",
            ],
        )

    def _create_nodes(self) -> None:
        for node in FAKE_NODES:
            self._request("POST", "/api/v1/nodes", node.manifest())

    def _wait_settled(self, timeout: float) -> None:
        """Ready means: every fake node Ready and the `default` ServiceAccount exists."""
        wait_for(
            "the default ServiceAccount in namespace default",
            lambda: bool(self._request("GET", "/api/v1/namespaces/default/serviceaccounts/default")),
            timeout,
            self._daemons,
        )
        names = {n.name for n in FAKE_NODES}
        wait_for(
            "the fake nodes to be Ready and schedulable",
            lambda: _ready_nodes(self._request("GET", "/api/v1/nodes")) >= names,
            timeout,
            self._daemons,
        )

    # ---- tiny admin HTTP client (no kubernetes client import: keeps `make cluster` fast) ---

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def _server(self) -> str:
        ports = json.loads((self.dir / "ports.json").read_text())
        return f"https://{LOOPBACK}:{ports['apiserver']}"

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(self._server() + path, context=self._ssl_context(), timeout=5) as r:
            return str(r.read().decode())

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self._server() + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=10) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as err:
            if err.code == 404 and method == "GET":
                return {}
            raise TestbedError(f"{method} {path}: HTTP {err.code}: {err.read()[:500]!r}") from err

    def _write_kubeconfig(self, path: Path, server: str, pki: TestbedPKI, user: ClientCert) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)}}],
            "users": [{"name": "testbed", "user": {"client-certificate": str(user.cert), "client-key": str(user.key)}}],
            "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "testbed"}}],
            "current-context": "testbed",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def _ready_nodes(node_list: dict[str, Any]) -> set[str]:
    """Nodes that are Ready and already untainted by the node-lifecycle controller.

    New nodes carry node.kubernetes.io/not-ready:NoSchedule until that controller notices the
    Ready condition; waiting for it means the first test's pods schedule at once.
    """
    ready = set()
    for node in node_list.get("items", []):
        conditions = node.get("status", {}).get("conditions", [])
        is_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        taints = [t.get("key", "") for t in node.get("spec", {}).get("taints", [])]
        if is_ready and not any(k.startswith("node.kubernetes.io/") for k in taints):
            ready.add(node["metadata"]["name"])
    return ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed.cluster", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_STATE_DIR, help="state directory")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    cluster = Cluster(args.dir, detached=True)
    try:
        if args.action == "up":
            started = time.monotonic()
            fresh = cluster.up(args.timeout)
            what = f"up in {time.monotonic() - started:.1f}s" if fresh else "already running"
            print(f"test bed {what}; export KUBECONFIG={cluster.kubeconfig}")
        elif args.action == "down":
            cluster.down()
        else:
            healthy = cluster.is_healthy()
            print(
                json.dumps(
                    {"healthy": healthy, "pids": cluster.running_pids(), "kubeconfig": str(cluster.kubeconfig)},
                    indent=2,
                )
            )
            return 0 if healthy else 1
    except TestbedError as err:
        print(f"test bed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
