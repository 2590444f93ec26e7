"""A small CompressionSweep on the quickstart's digits model, as the sweep tests build on it."""

from __future__ import annotations

import copy
from typing import Any

from factories import applied

SWEEP: dict[str, Any] = {
    "apiVersion": "kompression.dev/v1alpha1",
    "kind": "CompressionSweep",
    "metadata": {"name": "digits"},
    "spec": {
        "template": {
            "model": {
                "uri": "file://.kompression/quickstart/digits-cnn.pt2",
                "format": "TorchExport",
                "inputs": [{"name": "x", "shape": [-1, 1, 8, 8], "dtype": "float32"}],
            },
            "data": {
                "calibration": {"builtin": "Digits", "samples": 256},
                "evaluation": {"builtin": "Digits", "metric": "Top1Accuracy"},
                "training": {"builtin": "Digits"},
            },
            "steps": [
                {"name": "prune", "prune": {"method": "L1Structured", "sparsity": 0.5, "fineTune": {"epochs": 5}}},
                {"name": "distill", "distill": {"student": {"fromStep": "prune"}, "epochs": 15}},
                {"name": "int8", "quantize": {"method": "StaticInt8"}},
            ],
            "output": {"uri": "file://.kompression/sweep/out/"},
            "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
        },
        "parameters": [
            {
                "name": "sparsity",
                "step": "prune",
                "field": "sparsity",
                "range": {"start": 0.3, "stop": 0.7, "step": 0.2},
            },
            {"name": "method", "step": "int8", "field": "method", "values": ["DynamicInt8", "StaticInt8"]},
            {"name": "distill", "step": "distill", "values": [True, False]},
        ],
        "objectives": [{"metric": "compressionRatio"}, {"metric": "accuracyDelta"}],
        "parallelism": 2,
    },
}


def sweep(**spec: Any) -> dict[str, Any]:
    """The sample sweep with some spec fields replaced."""
    out = copy.deepcopy(SWEEP)
    out["spec"].update(copy.deepcopy(spec))
    return out


def int8_sweep(name: str, resources: dict[str, Any], excludes: list[list[str]], **spec: Any) -> dict[str, Any]:
    """A sweep of the factories' job over its int8 step's method and excluded layers, its output and
    calibration data in the test bed's S3: the sweep the cluster tests finish by hand on kwok nodes.
    `spec` replaces sweep fields; `runPolicy` goes into the template."""
    run_policy = spec.pop("runPolicy", None)
    template = applied(name, resources=resources, **({"runPolicy": run_policy} if run_policy else {}))["spec"]
    template["output"]["uri"] = f"s3://out/{name}/"
    template["data"] = {"calibration": {"uri": "s3://data/calibration.npz"}}
    return {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionSweep",
        "metadata": {"name": name},
        "spec": {
            "template": template,
            "parameters": [
                {"name": "method", "step": "int8", "field": "method", "values": ["DynamicInt8", "StaticInt8"]},
                {"name": "exclude", "step": "int8", "field": "excludeLayers", "values": excludes},
            ],
            "objectives": [{"metric": "accuracyDelta"}, {"metric": "compressionRatio"}],
            "parallelism": 2,
            **copy.deepcopy(spec),
        },
    }
