"""Fault tests on the real test bed. Each ends with exactly one Job per CompressionJob generation
and a correct final status.

The operator SIGKILLed at six points is in test_cluster.py; here: kube-apiserver restarted while
50 jobs are created, a Job deleted by hand, a pod evicted, a node removed, a concurrent status
writer (409s), and a CompressionJob deleted while the operator is down.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubectl import SMALL, apply_cr, conditions, events, finish, jobs, pods, running_pod, status, wait_phase
from operator_process import OperatorProcess, get_json

from testbed.nodes import FakeNode

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]
SHARED_TESTBED = (Path(__file__).resolve().parents[2] / ".testbed").resolve()


def _one_job_each(kube: Any, ns: str, names: list[str]) -> None:
    found = sorted(j["metadata"]["name"] for j in jobs(kube, ns))
    assert found == sorted(names)


# ------------------------------------------------------------------ kube-apiserver restart


def _restart_apiserver(state_dir: Path, down_s: float = 3.0) -> None:
    """Stop kube-apiserver (SIGTERM) and start it again with the same command line and pid file."""
    pidfile = state_dir / "pids" / "kube-apiserver.pid"
    pid = int(pidfile.read_text().split()[0])
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # a child of this pytest (the kube fixture's cluster)
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    time.sleep(down_s)
    with (state_dir / "logs" / "kube-apiserver.log").open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    pidfile.write_text(f"{proc.pid}\n")


def test_apiserver_restarted_while_50_jobs_are_created(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    state_dir = Path(kube.kubeconfig).resolve().parent
    if state_dir == SHARED_TESTBED:
        pytest.skip("would restart the shared `make cluster` apiserver under other sessions")
    if not (state_dir / "pids" / "kube-apiserver.pid").exists():
        pytest.skip("the cluster's kube-apiserver pid file is not next to its kubeconfig")
    names = [f"r{i:02d}" for i in range(50)]
    errors: list[str] = []

    def create_all() -> None:
        for name in names:
            for _ in range(120):  # retried through the outage, as a GitOps tool would
                try:
                    apply_cr(kube, namespace, name, resources=SMALL)
                    break
                except Exception as exc:
                    time.sleep(0.5)
                    last = str(exc)
            else:
                errors.append(f"{name}: {last}")

    creator = threading.Thread(target=create_all)
    creator.start()
    kube.wait(lambda: len(get_json(kube, "-n", namespace, "compressionjobs")["items"]) >= 15, "15 CRs", timeout=120)
    _restart_apiserver(state_dir)
    creator.join(300)
    assert not errors
    kube.wait(lambda: len(jobs(kube, namespace)) >= 50, "50 Jobs", timeout=180)
    kube.wait(
        lambda: (
            len([p for p in get_json(kube, "-n", namespace, "pods")["items"] if p["status"].get("phase") == "Running"])
            >= 50
        ),
        "50 running pods",
        timeout=180,
    )
    kube.kubectl("-n", namespace, "annotate", "pods", "--all", "kompression.dev/kwok-exit-code=0")
    kube.wait(
        lambda: all(
            ((c.get("status") or {}).get("phase") == "Succeeded")
            for c in get_json(kube, "-n", namespace, "compressionjobs")["items"]
        ),
        "all 50 Succeeded",
        timeout=180,
    )
    _one_job_each(kube, namespace, names)
    assert operator.proc is not None and operator.proc.poll() is None


# ------------------------------------------------------------------ a Job deleted by hand


def test_job_deleted_by_hand_runs_again_and_succeeds(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    apply_cr(kube, namespace, "gone", resources=SMALL)
    running_pod(kube, namespace, "gone")
    uid = get_json(kube, "-n", namespace, "job", "gone")["metadata"]["uid"]
    kube.kubectl("-n", namespace, "delete", "job", "gone", "--wait=false")
    kube.wait(lambda: [j for j in jobs(kube, namespace) if j["metadata"]["uid"] != uid], "the recreated Job", 60)
    pod = kube.wait(
        lambda: [
            p
            for p in pods(kube, namespace, "gone")
            if p["metadata"]["labels"].get("controller-uid") != uid and p["status"].get("phase") == "Running"
        ],
        "the new Job's pod",
        60,
    )[0]
    finish(kube, pod)
    final = wait_phase(kube, namespace, "gone", "Succeeded")
    assert conditions(final)["Ready"]["status"] == "True"
    _one_job_each(kube, namespace, ["gone"])
    assert "JobRecreated" in events(kube, namespace, "gone")


# ------------------------------------------------------------------ a pod evicted


def test_evicted_pod_is_replaced_without_burning_a_retry(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    apply_cr(kube, namespace, "evict", resources=SMALL, runPolicy={"backoffLimit": 0})
    first = running_pod(kube, namespace, "evict")
    name = first["metadata"]["name"]
    kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/pods/{name}/eviction",
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        },
    )
    second = kube.wait(
        lambda: [
            p
            for p in pods(kube, namespace, "evict")
            if p["metadata"]["name"] != name and p["status"].get("phase") == "Running"
        ],
        "a replacement pod",
        timeout=90,
    )[0]
    job = get_json(kube, "-n", namespace, "job", "evict")
    assert not job["status"].get("failed")  # podFailurePolicy Ignore: backoffLimit 0 still holds
    wait_phase(kube, namespace, "evict", "Running")
    finish(kube, second)
    wait_phase(kube, namespace, "evict", "Succeeded")
    _one_job_each(kube, namespace, ["evict"])


# ------------------------------------------------------------------ a node removed


def test_node_removed_under_a_running_pod(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    product = f"FAULT-GPU-{namespace}"
    node = FakeNode(f"kwok-fault-{namespace}", product, 1)
    kube.request("POST", "/api/v1/nodes", node.manifest())
    try:
        kube.wait(
            lambda: any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in kube.request("GET", f"/api/v1/nodes/{node.name}")["status"].get("conditions") or []
            ),
            "the extra node Ready",
            timeout=60,
        )
        apply_cr(
            kube,
            namespace,
            "node",
            resources={**SMALL, "gpus": 1, "gpuProduct": product},
            runPolicy={"backoffLimit": 0},
        )
        first = running_pod(kube, namespace, "node")
        assert first["spec"]["nodeName"] == node.name
        kube.request("DELETE", f"/api/v1/nodes/{node.name}")
        # The pod GC deletes pods bound to a node that no longer exists (DisruptionTarget,
        # DeletionByPodGC), and the Job makes a new one, which has nowhere to go.
        kube.wait(
            lambda: conditions(status(kube, namespace, "node")).get("Ready", {}).get("reason") == "Unschedulable",
            "the replacement pod Unschedulable",
            timeout=150,
        )
        assert not get_json(kube, "-n", namespace, "job", "node")["status"].get("failed")
        kube.request("POST", "/api/v1/nodes", node.manifest())
        second = running_pod(kube, namespace, "node", timeout=120)
        assert second["metadata"]["name"] != first["metadata"]["name"]
        finish(kube, second)
        wait_phase(kube, namespace, "node", "Succeeded")
        _one_job_each(kube, namespace, ["node"])
    finally:
        with contextlib.suppress(Exception):
            kube.request("DELETE", f"/api/v1/nodes/{node.name}")


# ------------------------------------------------------------------ 409s on status


def test_concurrent_status_writer_is_not_clobbered(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    """Another client keeps patching status (its own condition, and the operator's phase).

    The operator writes status as a merge patch preconditioned on the resourceVersion it read, so
    its writes that race the other client get 409 and are redone on a fresh read: the other
    client's condition survives, and the operator's fields converge to the truth.
    """
    apply_cr(kube, namespace, "race", resources=SMALL)
    pod = running_pod(kube, namespace, "race")
    url = f"/apis/kompression.dev/v1alpha1/namespaces/{namespace}/compressionjobs/race/status"
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        while not stop.is_set():
            conds = status(kube, namespace, "race").get("conditions") or []
            mine = {
                "type": "Audited",
                "status": "True",
                "reason": "Checked",
                "message": str(writes[0]),
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
            conds = [c for c in conds if c["type"] != "Audited"] + [mine]
            try:
                kube.request(
                    "PATCH", url, {"status": {"conditions": conds, "phase": "Pending"}}, "application/merge-patch+json"
                )
                writes[0] += 1
            except Exception:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(3)
        finish(kube, pod)
        time.sleep(3)
    finally:
        stop.set()
        t.join(10)
    assert writes[0] > 10
    final = wait_phase(kube, namespace, "race", "Succeeded")  # the phase it overwrote comes back
    conds = conditions(final)
    assert conds["Audited"]["message"] == str(writes[0] - 1)  # its last write survived
    assert conds["Succeeded"]["status"] == "True"
    _one_job_each(kube, namespace, ["race"])


# ------------------------------------------------------------------ CR deleted while down


def _metric_lines(operator: OperatorProcess, ns: str) -> list[str]:
    return [line for line in operator.metrics().splitlines() if f'namespace="{ns}"' in line]


def test_cr_deleted_while_the_operator_is_down(
    kube: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    result = {"compressionRatio": 3.5, "accuracyDelta": -0.001, "speedup": 2.0, "gatesPassed": True}
    message = json.dumps({"phase": "Succeeded", "result": result, "sequence": 7})
    for name in ("keep", "drop"):
        apply_cr(kube, namespace, name, resources=SMALL)
    for name in ("keep", "drop"):
        finish(kube, running_pod(kube, namespace, name), 0, message)
    for name in ("keep", "drop"):
        assert wait_phase(kube, namespace, name, "Succeeded")["result"]["compressionRatio"] == 3.5
    kube.wait(lambda: len(_metric_lines(operator, namespace)) == 6, "result gauges of both", timeout=30)

    operator.kill()
    try:
        kube.kubectl("-n", namespace, "delete", "compressionjob", "drop", "--wait=true")
        # Garbage collection follows the ownerReferences without the operator.
        kube.wait(lambda: [j["metadata"]["name"] for j in jobs(kube, namespace)] == ["keep"], "drop's Job gone", 60)
        kube.wait(
            lambda: (
                [
                    c["metadata"]["name"]
                    for c in get_json(
                        kube, "-n", namespace, "configmaps", "-l", "app.kubernetes.io/managed-by=kompression-operator"
                    )["items"]
                ]
                == ["keep-job"]
            ),
            "drop's ConfigMap gone",
            60,
        )
    finally:
        operator.start()
    # The restarted operator restores keep's gauges, knows nothing of drop, and does not loop on it.
    kube.wait(lambda: len(_metric_lines(operator, namespace)) == 3, "keep's gauges restored", timeout=30)
    assert all('name="keep"' in line for line in _metric_lines(operator, namespace))
    time.sleep(3)
    text = operator.metrics()
    assert "kompression_reconcile_errors_total 0.0" in text
    # Deleted while the operator runs: its gauges go at once.
    kube.kubectl("-n", namespace, "delete", "compressionjob", "keep", "--wait=true")
    kube.wait(lambda: not _metric_lines(operator, namespace), "keep's gauges removed", timeout=30)
