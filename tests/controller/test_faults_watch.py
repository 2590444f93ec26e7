"""Watch faults on the real test bed: a stalled connection, and a 410 Gone after etcd compaction.

The operator reaches the API server through a loopback TCP relay (testbed/relay.py) that can
stall its connections (open, silent, never closed) or cut them. Time-bounded: the operator's watch
timeouts are shrunk for these tests, so that minutes of stall become seconds with the same
semantics. In production a stalled watch is dropped after --watch-inactivity-timeout (600 s) or
--watch-client-timeout (300 s), and the store is resynced every --resync-interval (300 s).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubectl import SMALL, apply_cr, conditions, finish, jobs, running_pod, status, wait_phase
from operator_process import OperatorProcess, get_json, install_crd

from testbed.faults import etcd_compact, etcd_url, second_apiserver
from testbed.relay import Relay

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]
GPU = {**SMALL, "gpus": 1}
# Minutes made seconds: same mechanisms, shorter clocks.
FAST = (
    "--watch-inactivity-timeout=4",
    "--watch-client-timeout=60",
    "--watch-server-timeout=50",
    "--api-timeout=5",
    "--resync-interval=5",
)


def _state_dir(kube: Any) -> Path:
    state_dir = Path(kube.kubeconfig).resolve().parent
    if not (state_dir / "pids" / "kube-apiserver.pid").exists() or not (state_dir / "ports.json").exists():
        pytest.skip("the cluster's pid files and ports are not next to its kubeconfig")
    return state_dir


def _apiserver_port(state_dir: Path) -> int:
    return int(json.loads((state_dir / "ports.json").read_text())["apiserver"])


def _metric(operator: OperatorProcess, name: str) -> float:
    for line in operator.metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _log(operator: OperatorProcess) -> str:
    return (operator.log_dir / f"operator-{operator.starts}.log").read_text(errors="replace")


def _via(kube: Any, proxy: Relay, path: Path) -> Any:
    """What OperatorProcess reads of `kube` (its environment), pointed at the proxy."""
    return SimpleNamespace(env={**kube.env, "KUBECONFIG": str(proxy.kubeconfig(Path(kube.kubeconfig), path))})


@pytest.fixture
def proxied(kube: Any, tmp_path: Path) -> Iterator[tuple[Relay, OperatorProcess]]:
    """An operator whose every connection to the API server goes through a proxy."""
    install_crd(kube)
    proxy = Relay(_apiserver_port(_state_dir(kube)))
    op = OperatorProcess(_via(kube, proxy, tmp_path / "proxied.kubeconfig"), tmp_path, *FAST).start()
    try:
        yield proxy, op
    finally:
        op.stop()
        proxy.close()


def test_stalled_watches_are_dropped_and_nothing_is_missed(
    kube: Any, namespace: str, proxied: tuple[Relay, OperatorProcess]
) -> None:
    proxy, op = proxied
    apply_cr(kube, namespace, "before", resources=SMALL)
    pod = running_pod(kube, namespace, "before")
    time.sleep(2)  # every watch is open and quiet now

    stalled, accepted = proxy.stall(), proxy.accepted
    assert stalled >= 3, "the operator's watches (CompressionJobs, Jobs, pods) were open"
    t0 = time.monotonic()
    # While every connection is silent: new CRs, and a pod that finishes.
    names = [f"during-{i}" for i in range(5)]
    for name in names:
        apply_cr(kube, namespace, name, resources=SMALL)
    finish(kube, pod)

    # With the production defaults nothing would move for 300 s (the client timeout).
    kube.wait(lambda: len(jobs(kube, namespace)) == 6, "a Job for every CR created during the stall", timeout=60)
    recovered = time.monotonic() - t0
    wait_phase(kube, namespace, "before", "Succeeded", timeout=60)
    for name in names:
        wait_phase(kube, namespace, name, "Running", timeout=60)
    assert sorted(j["metadata"]["name"] for j in jobs(kube, namespace)) == sorted(["before", *names])
    assert proxy.accepted - accepted >= 3, "the watches were opened anew"
    assert op.proc is not None and op.proc.poll() is None
    print(f"stalled {stalled} connections; every Job made {recovered:.1f} s after the stall began")


def test_410_gone_after_compaction_relists_and_forgets_what_was_deleted(
    kube: Any, namespace: str, tmp_path: Path
) -> None:
    """The operator's watches are cut; meanwhile a running GPU job is deleted, another CR is
    created, and etcd is compacted. Resuming at their old resourceVersions, the watches get
    410 Gone and kopf lists again. The LIST shows the new CR, but kopf reports no deletion for the
    one that went: the operator's resync must forget it, or its GPU slot stays taken and the
    queued job behind it waits forever.

    The operator talks to a second kube-apiserver without a watch cache: the watch cache would
    answer an old resourceVersion from memory (410 only once its window has moved on, which takes
    minutes of traffic); without it the watch goes to etcd, which refuses a compacted revision.
    """
    install_crd(kube)
    state_dir = _state_dir(kube)
    with second_apiserver(state_dir, "--watch-cache=false") as port:
        proxy = Relay(port)
        op = OperatorProcess(_via(kube, proxy, tmp_path / "proxied.kubeconfig"), tmp_path, *FAST, "--max-gpu-jobs=1")
        op.start()
        try:
            _gone_while_cut(kube, namespace, proxy, op, etcd_url(state_dir))
        finally:
            op.stop()
            proxy.close()


def _gone_while_cut(kube: Any, ns: str, proxy: Relay, op: OperatorProcess, etcd: str) -> None:
    apply_cr(kube, ns, "first", resources=GPU)
    running_pod(kube, ns, "first")
    apply_cr(kube, ns, "queued", resources=GPU)
    kube.wait(lambda: status(kube, ns, "queued").get("phase") == "Queued", "queued behind the GPU limit")
    assert _metric(op, "kompression_gpu_jobs_in_flight") == 1

    proxy.cut()
    kube.kubectl("-n", ns, "delete", "compressionjob", "first", "--wait=true")
    kube.wait(lambda: [j["metadata"]["name"] for j in jobs(kube, ns)] == [], "first's Job collected", 60)
    apply_cr(kube, ns, "new", resources=SMALL)
    revision = etcd_compact(etcd)
    time.sleep(1)
    proxy.restore()

    kube.wait(lambda: "Restarting the watch-stream" in _log(op), "kopf's 410 Gone restart", timeout=60)
    # Created in the gap: the new LIST has it.
    wait_phase(kube, ns, "new", "Running", timeout=60)
    # Deleted in the gap: forgotten, so the queued job gets the slot.
    wait_phase(kube, ns, "queued", "Running", timeout=60)
    assert conditions(status(kube, ns, "queued"))["Ready"]["reason"] != "Queued"
    assert sorted(j["metadata"]["name"] for j in jobs(kube, ns)) == ["new", "queued"]
    kube.wait(lambda: _metric(op, "kompression_gpu_jobs_in_flight") == 1, "only the queued job's GPU in flight")
    assert not get_json(kube, "-n", ns, "compressionjobs", "--field-selector", "metadata.name=first")["items"]
    print(f"compacted etcd at revision {revision}")
