"""The Kueue objects the Kueue tests queue CompressionJobs in (fixtures registered by conftest.py):
a ResourceFlavor of the kwok H100 nodes, a ClusterQueue with a GPU quota and its LocalQueue `gpu`,
and WorkloadPriorityClasses. Cluster-wide ones get unique names and go after the test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubectl import conditions
from operator_process import get_json

H100 = "NVIDIA-H100-80GB-HBM3"
GPU = {"gpus": 1, "cpu": "100m", "memory": "64Mi"}

MakeQueue = Callable[..., str]


@pytest.fixture
def make_queue(kube: Any, kueue: Any, namespace: str) -> Iterator[MakeQueue]:
    """`make_queue(gpus, preempt=False)`: a ResourceFlavor of the H100 nodes, a ClusterQueue with that
    many GPUs for this namespace, and the LocalQueue `gpu` in it; the namespace enrolled in Kueue."""
    kueue.enroll(namespace)
    made: list[tuple[str, str]] = []

    def make(gpus: int, preempt: bool = False) -> str:
        name = f"{namespace}-{uuid.uuid4().hex[:4]}"
        for obj in queue_objects(namespace, name, gpus, preempt):
            kube.apply(obj)
        made.extend([("clusterqueue", name), ("resourceflavor", name)])
        kube.wait(lambda: active(kube, name), f"ClusterQueue {name} to be active", timeout=60)
        return name

    yield make
    for kind, name in made:
        kube.kubectl("delete", kind, name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def priority_classes(kube: Any, kueue: Any) -> Iterator[dict[str, str]]:
    """WorkloadPriorityClasses `low` (10) and `high` (1000), by their unique names."""
    suffix = uuid.uuid4().hex[:6]
    names = {"low": f"low-{suffix}", "high": f"high-{suffix}"}
    for level, value in (("low", 10), ("high", 1000)):
        kube.apply(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": names[level]},
                "value": value,
            }
        )
    yield names
    for name in names.values():
        kube.kubectl("delete", "workloadpriorityclass", name, "--ignore-not-found", check=False)


def queue_objects(namespace: str, name: str, gpus: int, preempt: bool = False) -> list[dict[str, Any]]:
    """A ResourceFlavor `name` of the H100 nodes, a ClusterQueue `name` with `gpus` GPUs for `namespace`
    (preempting lower priorities within itself when `preempt`), and the LocalQueue `gpu` in it."""
    flavor = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": name},
        "spec": {"nodeLabels": {"nvidia.com/gpu.product": H100}},
    }
    quota = {"cpu": "64", "memory": "512Gi", "ephemeral-storage": "1Ti", "nvidia.com/gpu": str(gpus)}
    cluster_queue = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [
                {
                    "coveredResources": list(quota),
                    "flavors": [
                        {"name": name, "resources": [{"name": k, "nominalQuota": v} for k, v in quota.items()]}
                    ],
                }
            ],
            **({"preemption": {"withinClusterQueue": "LowerPriority"}} if preempt else {}),
        },
    }
    local_queue = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "LocalQueue",
        "metadata": {"name": "gpu", "namespace": namespace},
        "spec": {"clusterQueue": name},
    }
    return [flavor, cluster_queue, local_queue]


def holds_quota(workload: dict[str, Any]) -> bool:
    """Whether a Kueue Workload holds quota now: admitted and not finished."""
    cond = conditions(workload.get("status") or {})
    admitted = cond.get("Admitted", {}).get("status") == "True"
    return admitted and cond.get("Finished", {}).get("status") != "True"


def active(kube: Any, cluster_queue: str) -> bool:
    status = get_json(kube, "clusterqueue", cluster_queue).get("status") or {}
    return conditions(status).get("Active", {}).get("status") == "True"
