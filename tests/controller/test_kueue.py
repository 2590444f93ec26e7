"""CompressionJobs queued by real Kueue (tests/testbed/kueue.py) on the kwok GPU nodes: Kueue's quota
decides who runs, the operator's own GPU limit does not count Kueue's jobs, the CompressionJob says
why it waits, and a preempted job goes back to the queue and later finishes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubectl import apply_cr, conditions, cr, events, finish, running_pod, wait_phase
from kueue_queues import GPU, MakeQueue
from operator_process import OperatorProcess, get_json
from test_kueue_workload import docs_example

from kompression.controller import kueue as reasons

pytestmark = pytest.mark.timeout(300)
# One GPU Job at a time in the operator's own queue: Kueue's jobs must not count against it.
OPERATOR_ARGS = ("--max-gpu-jobs", "1")


def _reason(kube: Any, ns: str, name: str) -> str | None:
    ready = conditions(cr(kube, ns, name).get("status") or {}).get("Ready", {})
    return ready.get("reason")


def _wait_reason(kube: Any, ns: str, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    kube.wait(lambda: _reason(kube, ns, name) == reason, f"{ns}/{name} reason {reason}", timeout=timeout)
    status: dict[str, Any] = cr(kube, ns, name)["status"]
    return status


def _workload(kube: Any, ns: str, job: str) -> dict[str, Any] | None:
    for wl in get_json(kube, "-n", ns, "workloads.kueue.x-k8s.io")["items"]:
        if any(ref["kind"] == "Job" and ref["name"] == job for ref in wl["metadata"].get("ownerReferences", [])):
            return dict(wl)
    return None


def _admitted(kube: Any, ns: str) -> int:
    items = get_json(kube, "-n", ns, "workloads.kueue.x-k8s.io")["items"]
    return sum(conditions(wl.get("status") or {}).get("Admitted", {}).get("status") == "True" for wl in items)


def _phase(kube: Any, ns: str, name: str) -> str | None:
    phase: str | None = (cr(kube, ns, name).get("status") or {}).get("phase")
    return phase


def test_kueue_admits_within_its_quota_and_the_operators_limit_counts_only_its_own(
    kube: Any, namespace: str, operator: OperatorProcess, make_queue: MakeQueue
) -> None:
    make_queue(gpus=2)
    names = ["q1", "q2", "q3"]
    for name in names:
        apply_cr(kube, namespace, name, resources=GPU, runPolicy={"queueName": "gpu"})
    # The operator's limit is one GPU Job; Kueue's two running jobs are not counted against it.
    apply_cr(kube, namespace, "own", resources=GPU)
    wait_phase(kube, namespace, "own", "Running")
    kube.wait(
        lambda: sorted(_phase(kube, namespace, n) or "" for n in names) == ["Queued", "Running", "Running"],
        "two queued jobs running and one queued",
        timeout=90,
    )
    (waiting,) = [n for n in names if _phase(kube, namespace, n) == "Queued"]
    status = _wait_reason(kube, namespace, waiting, reasons.QUEUED)
    message = conditions(status)["Ready"]["message"]
    assert "insufficient unused quota for nvidia.com/gpu" in message, message
    assert "LocalQueue gpu" in message
    assert get_json(kube, "-n", namespace, "job", waiting)["spec"]["suspend"] is True
    kube.wait(lambda: reasons.QUEUED in events(kube, namespace, waiting), "a QueuedByKueue event")
    assert _admitted(kube, namespace) == 2
    running = [n for n in names if n != waiting]
    for name in running:
        # Kueue's flavor put the H100 nodes' label on the pod when it admitted the Job.
        assert running_pod(kube, namespace, name)["spec"]["nodeName"].startswith("kwok-h100")
    # A running job finishes: its quota goes to the waiting one.
    finish(kube, running_pod(kube, namespace, running[0]))
    wait_phase(kube, namespace, running[0], "Succeeded")
    wait_phase(kube, namespace, waiting, "Running", timeout=90)
    for name in (running[1], waiting, "own"):
        finish(kube, running_pod(kube, namespace, name))
    for name in (*names, "own"):
        wait_phase(kube, namespace, name, "Succeeded", timeout=90)


def test_a_queue_kueue_does_not_know_is_reported_inadmissible(
    kube: Any, namespace: str, operator: OperatorProcess, make_queue: MakeQueue
) -> None:
    make_queue(gpus=1)
    apply_cr(kube, namespace, "lost", resources=GPU, runPolicy={"queueName": "no-such-queue"})
    status = _wait_reason(kube, namespace, "lost", reasons.INADMISSIBLE)
    assert status["phase"] == "Queued"
    assert "no-such-queue" in conditions(status)["Ready"]["message"]
    kube.wait(lambda: reasons.INADMISSIBLE in events(kube, namespace, "lost"), "an InadmissibleByKueue event")


def test_a_preempted_job_is_requeued_not_failed_and_later_finishes(
    kube: Any, namespace: str, operator: OperatorProcess, make_queue: MakeQueue, priority_classes: dict[str, str]
) -> None:
    make_queue(gpus=1, preempt=True)
    low, high = priority_classes["low"], priority_classes["high"]
    apply_cr(kube, namespace, "low", resources=GPU, runPolicy={"queueName": "gpu", "workloadPriorityClassName": low})
    wait_phase(kube, namespace, "low", "Running", timeout=90)
    first_pod = running_pod(kube, namespace, "low")
    workload = kube.wait(lambda: _workload(kube, namespace, "low"), "low's Workload")
    assert (workload["spec"]["priorityClassRef"]["name"], workload["spec"]["priority"]) == (low, 10)

    apply_cr(kube, namespace, "high", resources=GPU, runPolicy={"queueName": "gpu", "workloadPriorityClassName": high})
    status = _wait_reason(kube, namespace, "low", reasons.PREEMPTED, timeout=90)
    assert status["phase"] == "Queued"
    assert "Preempted" in conditions(status)["Ready"]["message"]
    assert f"WorkloadPriorityClass {low}, priority 10" in conditions(status)["Ready"]["message"]
    assert get_json(kube, "-n", namespace, "job", "low")["spec"]["suspend"] is True
    kube.wait(lambda: reasons.PREEMPTED in events(kube, namespace, "low"), "a PreemptedByKueue event")
    wait_phase(kube, namespace, "high", "Running", timeout=90)
    assert _phase(kube, namespace, "low") == "Queued"

    finish(kube, running_pod(kube, namespace, "high"))
    wait_phase(kube, namespace, "high", "Succeeded", timeout=90)
    # Its quota back, Kueue admits low again: a new pod, and the job ends as if never interrupted.
    wait_phase(kube, namespace, "low", "Running", timeout=90)
    second_pod = running_pod(kube, namespace, "low")
    assert second_pod["metadata"]["uid"] != first_pod["metadata"]["uid"]
    finish(kube, second_pod)
    final = wait_phase(kube, namespace, "low", "Succeeded", timeout=90)
    assert "Failed" not in {c["type"] for c in final["conditions"] if c["status"] == "True"}
    # The pod stopped by the suspension used none of the job's retries (runPolicy.backoffLimit).
    assert get_json(kube, "-n", namespace, "job", "low")["status"].get("failed", 0) == 0


def test_the_docs_example_runs_through_kueue(kube: Any, kueue: Any, namespace: str, operator: OperatorProcess) -> None:
    """docs/install.md's example as written, but for unique names of its cluster-wide objects."""
    kueue.enroll(namespace)
    flavor, cluster_queue, local_queue, priority, job = docs_example()
    suffix = uuid.uuid4().hex[:6]
    for obj in (flavor, cluster_queue, priority):
        obj["metadata"]["name"] += f"-{suffix}"
    cluster_queue["spec"]["resourceGroups"][0]["flavors"][0]["name"] = flavor["metadata"]["name"]
    local_queue["spec"]["clusterQueue"] = cluster_queue["metadata"]["name"]
    job["spec"]["runPolicy"]["workloadPriorityClassName"] = priority["metadata"]["name"]
    try:
        for obj in (flavor, cluster_queue, priority):
            kube.apply(obj)
        kube.apply(local_queue, namespace)
        kube.apply(job, namespace)
        name = job["metadata"]["name"]
        wait_phase(kube, namespace, name, "Running", timeout=90)
        workload = _workload(kube, namespace, name)
        assert workload is not None and workload["spec"]["priority"] == priority["value"]
        finish(kube, running_pod(kube, namespace, name))
        wait_phase(kube, namespace, name, "Succeeded", timeout=90)
    finally:
        for obj in (cluster_queue, flavor, priority):
            kube.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--wait=false", check=False)
