"""Two replicas with kopf peering: exactly one is active, and the other takes over when it dies."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubectl import apply_cr, jobs, wait_phase
from operator_process import OperatorProcess, install_crd

PEERING_CRDS = Path(__file__).resolve().parents[2] / "charts" / "kompression" / "crds"


def _progress_status(op: OperatorProcess, namespace: str, name: str) -> int:
    """The HTTP status of an unauthenticated progress POST: 503 from a paused replica, 401 or 403
    from the active one (it checks the token)."""
    request = urllib.request.Request(
        f"{op.progress_base_url}/v1/progress/{namespace}/{name}", data=b"{}", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def replicas(kube: Any, namespace: str, tmp_path: Path) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    install_crd(kube, PEERING_CRDS)
    kube.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "ha", "namespace": namespace}})
    common = ("--namespaces", namespace, "--peering", "ha")
    leader = OperatorProcess(kube, tmp_path, *common, "--priority", "200").start()
    standby = OperatorProcess(kube, tmp_path, *common, "--priority", "100").start()
    try:
        yield leader, standby
    finally:
        leader.stop()
        standby.stop()


def _wait_status(op: OperatorProcess, namespace: str, accept: set[int], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        code = _progress_status(op, namespace, "probe")
        if code in accept or time.monotonic() > deadline:
            return code
        time.sleep(1)


def test_exactly_one_replica_is_active_and_the_standby_takes_over(
    kube: Any, namespace: str, replicas: tuple[OperatorProcess, OperatorProcess]
) -> None:
    leader, standby = replicas
    assert _wait_status(standby, namespace, {503}, timeout=30) == 503
    assert _wait_status(leader, namespace, {401, 403}, timeout=30) in {401, 403}

    apply_cr(kube, namespace, "first", resources={"gpus": 1})
    wait_phase(kube, namespace, "first", "Running", timeout=60)
    assert [j["metadata"]["name"] for j in jobs(kube, namespace)] == ["first"]

    leader.kill()  # SIGKILL: its peering entry must expire before the standby resumes
    assert _wait_status(standby, namespace, {401, 403}, timeout=150) in {401, 403}
    apply_cr(kube, namespace, "second", resources={"gpus": 1})
    wait_phase(kube, namespace, "second", "Running", timeout=60)
    assert sorted(j["metadata"]["name"] for j in jobs(kube, namespace)) == ["first", "second"]
