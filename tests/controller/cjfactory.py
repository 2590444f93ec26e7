"""CompressionJob manifests for the controller's tests."""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "apiVersion": "kompression.dev/v1alpha1",
    "kind": "CompressionJob",
    "metadata": {"name": "resnet", "namespace": "team-a", "uid": "0b1c-uid", "generation": 1},
    "spec": {
        "model": {
            "uri": "s3://models/resnet.pt2",
            "format": "TorchExport",
            "inputs": [{"name": "x", "shape": [-1, 3, 32, 32]}],
        },
        "steps": [{"name": "int8", "quantize": {"method": "DynamicInt8"}}],
        "output": {"uri": "s3://out/resnet/"},
    },
}


def manifest(name: str = "resnet", namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    """BASE with metadata replaced and top-level spec fields overridden. Each name gets its own
    output prefix (the operator runs one live job per prefix), unless `output` is given."""
    doc = copy.deepcopy(BASE)
    doc["metadata"].update(name=name, namespace=namespace)
    doc["spec"]["output"]["uri"] = f"s3://out/{name}/"
    doc["spec"].update(copy.deepcopy(spec))
    return doc
