"""The operator, as a process, against the real test bed (apiserver, controller-manager, scheduler, kwok)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubectl import apply_cr, conditions, cr, events, finish, pods, wait_phase
from operator_process import OperatorProcess, get_json

pytestmark = pytest.mark.timeout(300)
H100 = "NVIDIA-H100-80GB-HBM3"


def _finish_pod(kube: Any, ns: str, job: str, code: int) -> None:
    finish(kube, kube.wait(lambda: pods(kube, ns, job), f"a pod of {job}")[0], code)


def test_lifecycle_gpu_job_to_success(kube: Any, namespace: str, operator: OperatorProcess, prometheus: Any) -> None:
    apply_cr(kube, namespace, "life", resources={"gpus": 2, "gpuProduct": H100})
    job = kube.wait(lambda: get_json(kube, "-n", namespace, "jobs")["items"], "the Job")[0]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CompressionJob"
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": H100}
    status = wait_phase(kube, namespace, "life", "Running")
    assert conditions(status)["Ready"]["status"] == "False"
    (pod,) = pods(kube, namespace, "life")
    assert pod["spec"]["nodeName"].startswith("kwok-h100")
    _finish_pod(kube, namespace, "life", 0)
    kube.kubectl("-n", namespace, "wait", "--for=condition=Succeeded", "compressionjob/life", "--timeout=60s")
    kube.kubectl("-n", namespace, "wait", "--for=condition=Ready", "compressionjob/life", "--timeout=10s")
    status = cr(kube, namespace, "life")["status"]
    assert status["observedGeneration"] == 1 and status["completionTime"]
    assert {"JobCreated", "Succeeded"} <= events(kube, namespace, "life")
    prom = prometheus(scrape_targets=[f"127.0.0.1:{operator.metrics_port}"])
    assert prom.wait_for_value('kompression_jobs{phase="Succeeded"}', timeout=60) >= 1
    assert prom.wait_for_value("sum(kompression_job_duration_seconds_count)", timeout=60) >= 1
    # cascade deletion through the ownerReference
    kube.kubectl("-n", namespace, "delete", "compressionjob", "life", "--wait=true")
    kube.wait(lambda: not get_json(kube, "-n", namespace, "jobs")["items"], "the Job to be collected", timeout=60)
    kube.wait(
        lambda: (
            not get_json(
                kube, "-n", namespace, "configmaps", "-l", "app.kubernetes.io/managed-by=kompression-operator"
            )["items"]
        ),
        "the ConfigMap",
        timeout=60,
    )


def test_gpu_product_no_node_has_stays_pending_unschedulable(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    apply_cr(kube, namespace, "nowhere", resources={"gpus": 1, "gpuProduct": "NVIDIA-B200"})
    kube.wait(
        lambda: (
            conditions(cr(kube, namespace, "nowhere").get("status") or {}).get("Ready", {}).get("reason")
            == "Unschedulable"
        ),
        "reason Unschedulable",
        timeout=60,
    )
    assert cr(kube, namespace, "nowhere")["status"]["phase"] == "Pending"
    kube.wait(lambda: "Unschedulable" in events(kube, namespace, "nowhere"), "an Unschedulable event")


def test_permanent_exit_code_fails_at_once_with_reason(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    apply_cr(kube, namespace, "gate", runPolicy={"backoffLimit": 5})
    wait_phase(kube, namespace, "gate", "Running")
    _finish_pod(kube, namespace, "gate", 6)
    status = wait_phase(kube, namespace, "gate", "Failed")
    assert conditions(status)["Failed"]["reason"] == "GateFailed"
    assert conditions(status)["Stalled"]["status"] == "True"
    assert len(pods(kube, namespace, "gate")) == 1  # no retry for a permanent code


def test_deadline_and_backoff_failures_surface_with_their_reasons(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    # The real Job controller ends both: a deadline on a pod that never finishes, and retries
    # used up by a retryable exit code (1).
    apply_cr(kube, namespace, "slow", runPolicy={"activeDeadlineSeconds": 3})
    apply_cr(kube, namespace, "flaky", runPolicy={"backoffLimit": 0})
    wait_phase(kube, namespace, "flaky", "Running")
    _finish_pod(kube, namespace, "flaky", 1)
    for name, reason in (("slow", "DeadlineExceeded"), ("flaky", "BackoffLimitExceeded")):
        status = wait_phase(kube, namespace, name, "Failed", timeout=90)
        assert conditions(status)["Failed"]["reason"] == reason
        kube.wait(lambda n=name, r=reason: r in events(kube, namespace, n), f"a {reason} event")


def _set_suspend(kube: Any, namespace: str, name: str, suspend: bool) -> None:
    patch = json.dumps({"spec": {"runPolicy": {"suspend": suspend}}})
    kube.kubectl("-n", namespace, "patch", "compressionjob", name, "--type=merge", "-p", patch)


def test_suspend_both_ways(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    apply_cr(kube, namespace, "pause", runPolicy={"suspend": True})
    wait_phase(kube, namespace, "pause", "Suspended")
    assert get_json(kube, "-n", namespace, "job", "pause")["spec"]["suspend"] is True
    _set_suspend(kube, namespace, "pause", False)
    wait_phase(kube, namespace, "pause", "Running")
    _set_suspend(kube, namespace, "pause", True)
    wait_phase(kube, namespace, "pause", "Suspended")
    assert get_json(kube, "-n", namespace, "job", "pause")["spec"]["suspend"] is True


def test_kueue_queue_name_labels_and_suspends(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    apply_cr(kube, namespace, "kq", runPolicy={"queueName": "gpu"})
    status = wait_phase(kube, namespace, "kq", "Queued")
    assert conditions(status)["Ready"]["reason"] == "WaitingForKueue"
    job = get_json(kube, "-n", namespace, "job", "kq")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert job["spec"]["suspend"] is True
    # Kueue admits by unsuspending; the operator must follow, not fight it
    kube.kubectl("-n", namespace, "patch", "job", "kq", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_phase(kube, namespace, "kq", "Running")


def test_sigkill_at_several_points_never_makes_a_second_job(
    kube: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    other = OperatorProcess(kube, tmp_path)
    operator.stop()  # one operator at a time: this test owns the restarts
    try:
        names = [f"k{i}" for i in range(6)]
        for i, name in enumerate(names):
            apply_cr(kube, namespace, name)
            if i % 2 == 0:
                other.start()
            else:
                other.kill()
        other.kill()
        other.start()
        for name in names:
            wait_phase(kube, namespace, name, "Running")
        other.kill()
        for name in names:
            _finish_pod(kube, namespace, name, 0)
        other.start()
        for name in names:
            wait_phase(kube, namespace, name, "Succeeded")
        jobs = get_json(kube, "-n", namespace, "jobs")["items"]
        assert sorted(j["metadata"]["name"] for j in jobs) == names
    finally:
        other.stop()
        operator.start()


def test_job_deleted_by_hand_is_recreated_while_unfinished(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    apply_cr(kube, namespace, "gone")
    wait_phase(kube, namespace, "gone", "Running")
    uid = get_json(kube, "-n", namespace, "job", "gone")["metadata"]["uid"]
    # Not --wait: kubectl would watch the name, which the operator reuses at once.
    kube.kubectl("-n", namespace, "delete", "job", "gone", "--cascade=foreground", "--wait=false")
    kube.wait(
        lambda: [j for j in get_json(kube, "-n", namespace, "jobs")["items"] if j["metadata"]["uid"] != uid],
        "the recreated Job",
        timeout=60,
    )
    kube.wait(lambda: "JobRecreated" in events(kube, namespace, "gone"), "a JobRecreated event")
