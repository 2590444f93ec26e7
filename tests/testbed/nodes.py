"""The fake nodes kwok simulates: a small GPU fleet that looks like GPU feature discovery labelled it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"  # kwok manages exactly the nodes annotated "=fake"


@dataclass(frozen=True)
class FakeNode:
    name: str
    gpu_product: str | None = None
    gpus: int = 0
    cpu: str = "64"
    memory: str = "512Gi"
    pods: str = "256"

    def manifest(self) -> dict[str, Any]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods, "ephemeral-storage": "1Ti"}
        if self.gpu_product:
            labels[GPU_PRODUCT_LABEL] = self.gpu_product
            labels["nvidia.com/gpu.count"] = str(self.gpus)
            labels["nvidia.com/gpu.present"] = "true"
            resources[GPU_RESOURCE] = str(self.gpus)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                # ttl 0: the node-lifecycle controller must not expect a real kubelet's caching.
                "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            },
            # Node status may be set on create (kubelets register that way); kwok's node stage
            # keeps this capacity and only adds conditions, addresses and nodeInfo.
            "status": {"capacity": resources, "allocatable": dict(resources)},
        }


FAKE_NODES: tuple[FakeNode, ...] = (
    FakeNode("kwok-h100-0", H100, 8),
    FakeNode("kwok-h100-1", H100, 8),
    FakeNode("kwok-a100-0", A100, 8),
    FakeNode("kwok-cpu-0"),
)
