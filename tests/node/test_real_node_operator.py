"""The chart installs the operator from the operator image as a pod on the real node: its real
ServiceAccount token (projected by the kubelet) reaches the API server through the `kubernetes`
Service's address, its RBAC lets it turn a CompressionJob into a Job, and its metrics port
answers through its Service. Skipped where the real node cannot start (`make test-node`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from factories import applied
from testbed.chart import installed, release_name
from testbed.node import OPERATOR_IMAGE, RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]


def _operator_pod(kube: Any, namespace: str, release: str) -> dict[str, Any] | None:
    items = json.loads(kube.kubectl("-n", namespace, "get", "pods", "-o", "json").stdout)["items"]
    ready = [
        p
        for p in items
        if p["metadata"]["name"].startswith(release)
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]
    return ready[0] if ready else None


def test_the_chart_runs_the_operator_image_on_the_real_node(real_node: RealNode, kube: Any, helm: Any) -> None:
    if not real_node.has_image(OPERATOR_IMAGE):
        pytest.skip(f"{OPERATOR_IMAGE} is not built: run `make images`")
    release = release_name("node")
    system, team = kube.create_namespace("kompression"), kube.create_namespace("team")
    repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
    sets = (
        f"image.repository={repository}",
        f"image.tag={tag}",
        "image.pullPolicy=Never",
        f"nodeSelector.kubernetes\\.io/hostname={real_node.name}",
        # No network plugin here enforces NetworkPolicy; the node's own rules confine the pods.
        "networkPolicy.enabled=false",
    )
    with installed(kube, helm, release, system, *sets) as objects:
        pod = kube.wait(lambda: _operator_pod(kube, system, release), "the operator pod Ready", timeout=300)
        assert pod["spec"]["nodeName"] == real_node.name
        assert pod["spec"]["containers"][0]["image"] == OPERATOR_IMAGE
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

        # Through the API server only: a CompressionJob becomes the operator's Job.
        kube.apply(applied("from-pod", team), team)
        job = kube.wait(
            lambda: json.loads(kube.kubectl("-n", team, "get", "jobs", "-o", "json").stdout)["items"],
            "the Job the operator pod creates",
            timeout=120,
        )
        assert job[0]["metadata"]["ownerReferences"][0]["name"] == "from-pod"

        # Its metrics port, through the API server's proxy to its Service (kube-proxy plays no part).
        service = next(o for o in objects if o["kind"] == "Service")["metadata"]["name"]
        metrics = kube.kubectl("get", "--raw", f"/api/v1/namespaces/{system}/services/{service}:metrics/proxy/metrics")
        assert "kompression_jobs" in metrics.stdout
        kube.kubectl("-n", team, "delete", "compressionjob", "from-pod", "--wait=false")
