"""The test bed itself works: real control plane, kwok GPU nodes, S3, Prometheus, Pushgateway, helm."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    push_to_gateway,
    start_http_server,
)

from testbed.helm import Helm
from testbed.kube import Kube
from testbed.nodes import A100, FAKE_NODES, GPU_PRODUCT_LABEL, GPU_RESOURCE, H100
from testbed.prom import Prometheus, Pushgateway
from testbed.s3 import S3Server

# Fixture setup (cluster start, about 15 s) counts against the first test's timeout.
pytestmark = pytest.mark.timeout(120)

EXIT_CODE = "kompression.dev/kwok-exit-code"
WAIT = 45.0


def gpu_job(name: str, product: str, exit_code: str | None) -> dict[str, Any]:
    annotations = {EXIT_CODE: exit_code} if exit_code is not None else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {GPU_PRODUCT_LABEL: product},
                    "containers": [
                        {
                            "name": "worker",
                            "image": "kompression.dev/never-pulled:0",  # kwok never pulls images
                            "resources": {"limits": {GPU_RESOURCE: "1"}},
                        }
                    ],
                },
            },
        },
    }


def api(namespace: str, resource: str, name: str = "", group: str = "") -> str:
    """REST path of a namespaced resource; `group` like "batch/v1" (empty: core v1)."""
    base = f"/apis/{group}" if group else "/api/v1"
    return f"{base}/namespaces/{namespace}/{resource}" + (f"/{name}" if name else "")


def job_pods(kube: Kube, namespace: str, job: str) -> list[dict[str, Any]]:
    return list(kube.request("GET", api(namespace, "pods") + f"?labelSelector=job-name%3D{job}")["items"])


def job_status(kube: Kube, namespace: str, job: str) -> dict[str, Any]:
    return dict(kube.request("GET", api(namespace, "jobs", job, "batch/v1"))["status"])


def has_condition(obj_status: dict[str, Any], ctype: str, status: str = "True") -> bool:
    return any(c["type"] == ctype and c["status"] == status for c in obj_status.get("conditions", []))


def gone(kube: Kube, path: str) -> bool:
    try:
        kube.request("GET", path)
    except client.ApiException as err:
        return bool(err.status == 404)
    return False


@pytest.mark.cluster
def test_apiserver_ready(kube: Kube) -> None:
    assert kube.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    assert kube.request("GET", api("default", "serviceaccounts", "default"))["metadata"]["name"]


@pytest.mark.cluster
def test_fake_gpu_nodes(kube: Kube) -> None:
    nodes = {n["metadata"]["name"]: n for n in kube.request("GET", "/api/v1/nodes")["items"]}
    for fake in FAKE_NODES:
        node = nodes[fake.name]
        assert has_condition(node["status"], "Ready")
        assert node["metadata"]["labels"].get(GPU_PRODUCT_LABEL) == fake.gpu_product
        for field in ("capacity", "allocatable"):
            assert node["status"][field].get(GPU_RESOURCE) == (str(fake.gpus) if fake.gpus else None)
    products = [n["metadata"]["labels"].get(GPU_PRODUCT_LABEL) for n in nodes.values()]
    assert products.count(H100) >= 2 and products.count(A100) >= 1 and None in products


@pytest.mark.cluster
def test_gpu_job_succeeds_on_h100(kube: Kube, namespace: str) -> None:
    kube.request("POST", api(namespace, "jobs", group="batch/v1"), gpu_job("ok", H100, "0"))
    kube.wait(lambda: has_condition(job_status(kube, namespace, "ok"), "Complete"), "Job Complete", WAIT)
    (pod,) = job_pods(kube, namespace, "ok")
    assert pod["spec"]["nodeName"] in {n.name for n in FAKE_NODES if n.gpu_product == H100}
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


@pytest.mark.cluster
def test_gpu_job_fails_with_exit_code(kube: Kube, namespace: str) -> None:
    kube.request("POST", api(namespace, "jobs", group="batch/v1"), gpu_job("bad", H100, "3"))
    kube.wait(lambda: has_condition(job_status(kube, namespace, "bad"), "Failed"), "Job Failed", WAIT)
    assert job_status(kube, namespace, "bad")["failed"] == 1
    (pod,) = job_pods(kube, namespace, "bad")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")


@pytest.mark.cluster
def test_unannotated_pod_runs_until_test_sets_exit_code(kube: Kube, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"kubernetes.io/hostname": "kwok-cpu-0"},
            "containers": [{"name": "c", "image": "kompression.dev/never-pulled:0"}],
        },
    }
    kube.request("POST", api(namespace, "pods"), pod)

    def phase() -> str:
        return str(kube.request("GET", api(namespace, "pods", "p"))["status"].get("phase"))

    kube.wait(lambda: phase() == "Running", "pod Running", WAIT)
    threading.Event().wait(1.5)  # kwok must not complete it on its own
    assert phase() == "Running"
    patch = {"metadata": {"annotations": {EXIT_CODE: "0"}}}
    kube.request("PATCH", api(namespace, "pods", "p"), patch, "application/merge-patch+json")
    kube.wait(lambda: phase() == "Succeeded", "pod Succeeded after annotation", WAIT)


@pytest.mark.cluster
def test_unknown_gpu_product_is_unschedulable(kube: Kube, namespace: str) -> None:
    kube.request("POST", api(namespace, "jobs", group="batch/v1"), gpu_job("nowhere", "NVIDIA-B200", "0"))

    def unschedulable() -> bool:
        for pod in job_pods(kube, namespace, "nowhere"):
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    return bool(cond["reason"] == "Unschedulable")
        return False

    kube.wait(unschedulable, "PodScheduled=False/Unschedulable", WAIT)
    (pod,) = job_pods(kube, namespace, "nowhere")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


@pytest.mark.cluster
def test_owner_reference_cascade(kube: Kube, namespace: str) -> None:
    parent = kube.request("POST", api(namespace, "configmaps"), {"metadata": {"name": "parent"}})
    owner = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "parent",
        "uid": parent["metadata"]["uid"],
        "blockOwnerDeletion": True,
    }
    kube.request("POST", api(namespace, "configmaps"), {"metadata": {"name": "child", "ownerReferences": [owner]}})
    # A running Job's pod must go too: that exercises kwok's kill + finalizer-aware removal.
    kube.request("POST", api(namespace, "jobs", group="batch/v1"), gpu_job("long", A100, None))
    kube.wait(
        lambda: [p for p in job_pods(kube, namespace, "long") if p["status"].get("phase") == "Running"],
        "Job pod Running",
        WAIT,
    )

    background = {"propagationPolicy": "Background"}
    kube.request("DELETE", api(namespace, "configmaps", "parent"), background)
    kube.request("DELETE", api(namespace, "jobs", "long", "batch/v1"), background)

    kube.wait(lambda: gone(kube, api(namespace, "configmaps", "child")), "GC of the child ConfigMap", WAIT)
    kube.wait(lambda: not job_pods(kube, namespace, "long"), "GC of the Job's pods", WAIT)


@pytest.mark.cluster
def test_token_request_and_review(kube: Kube, namespace: str) -> None:
    kube.request("POST", api(namespace, "serviceaccounts"), {"metadata": {"name": "worker"}})
    audience = f"kompression.dev/job-{uuid.uuid4().hex[:6]}"
    token_request = {"spec": {"audiences": [audience], "expirationSeconds": 600}}
    token = kube.request("POST", api(namespace, "serviceaccounts", "worker") + "/token", token_request)
    token = token["status"]["token"]

    def review(audiences: list[str]) -> dict[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        return dict(kube.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)["status"])

    ok = review([audience])
    assert ok["authenticated"] and ok["audiences"] == [audience]
    assert ok["user"]["username"] == f"system:serviceaccount:{namespace}:worker"
    assert not review(["https://kubernetes.default.svc.cluster.local"]).get("authenticated")


@pytest.mark.cluster
def test_rbac_is_enforced(kube: Kube, namespace: str) -> None:
    kube.request("POST", api(namespace, "serviceaccounts"), {"metadata": {"name": "reader"}})
    who = f"--as=system:serviceaccount:{namespace}:reader"

    def can_list_pods() -> str:
        proc = kube.kubectl("auth", "can-i", "list", "pods", "-n", namespace, who, check=False)
        return proc.stdout.strip()

    assert can_list_pods() == "no"
    rbac = "rbac.authorization.k8s.io/v1"
    kube.request(
        "POST",
        api(namespace, "roles", group=rbac),
        {"metadata": {"name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
    )
    kube.request(
        "POST",
        api(namespace, "rolebindings", group=rbac),
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    kube.wait(lambda: can_list_pods() == "yes", "RBAC grant to take effect", 10)


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_s3_round_trip(s3: S3Server, checksums: str) -> None:
    s3c = s3.make_client(request_checksum_calculation=checksums, response_checksum_validation=checksums)
    bucket = s3.create_bucket("roundtrip")
    s3c.put_object(Bucket=bucket, Key="models/a.bin", Body=b"\x00weights\xff")
    assert s3c.get_object(Bucket=bucket, Key="models/a.bin")["Body"].read() == b"\x00weights\xff"


@pytest.fixture
def metrics_server() -> Iterator[tuple[str, Gauge]]:
    registry = CollectorRegistry()
    gauge = Gauge("kompression_testbed_gauge", "test bed probe", registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", gauge
    finally:
        server.shutdown()
        thread.join(5)


def test_prometheus_scrapes_loopback_server(prometheus: Prometheus, metrics_server: tuple[str, Gauge]) -> None:
    address, gauge = metrics_server
    gauge.set(42)
    prometheus(scrape_targets=[address])
    assert prometheus.wait_for_value("kompression_testbed_gauge") == 42


def test_pushgateway_push_reaches_prometheus(prometheus: Prometheus, pushgateway: Pushgateway) -> None:
    registry = CollectorRegistry()
    Gauge("kompression_testbed_pushed", "pushed value", registry=registry).set(7)
    push_to_gateway(pushgateway.address, job="testbed-push", registry=registry)
    prometheus(scrape_targets=[pushgateway.scrape_target])
    query = 'kompression_testbed_pushed{job="testbed-push"}'
    assert prometheus.wait_for_value(query) == 7


@pytest.mark.cluster
def test_helm_version(helm: Helm) -> None:
    assert helm.run("version", "--short").stdout.startswith("v3.")
