"""The generated CompressionSweep CRD on a real kube-apiserver: its CEL rules fit the cost budget, the
sample sweep is accepted and defaulted, bad ones are refused with the field named, the spec is immutable
except parallelism, maxFailedTrials and suspend, and `kubectl get ksweep` shows the sweep's columns."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_sweep_api import _cluster_section_sweeps

from sweep_cases import SWEEP, sweep

pytestmark = pytest.mark.cluster


def _create(kube: Any, namespace: str, manifest: dict[str, Any]) -> Any:
    return kube.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)


def test_the_sample_sweep_is_accepted_and_defaulted(kube: Any, crd: None, namespace: str) -> None:
    assert _create(kube, namespace, SWEEP).returncode == 0
    stored = json.loads(kube.kubectl("get", "ksweep", "digits", "-n", namespace, "-o", "json").stdout)["spec"]
    assert stored["search"] == {"algorithm": "Grid"}
    assert stored["suspend"] is False
    assert stored["template"]["runPolicy"]["backoffLimit"] == 2  # the job spec's defaults apply to the template
    assert stored["parameters"][2]["values"] == [True, False]


@pytest.mark.parametrize(
    "case",
    [
        (
            {"search": {"algorithm": "TPE"}},
            "spec.search.maxTrials",
            "search algorithms Random and TPE need `maxTrials`",
        ),
        (
            {"parameters": [{"name": "s", "step": "nope", "field": "sparsity", "values": [0.5]}]},
            "spec.parameters",
            "each parameter's `step` must name a step of the template",
        ),
        (
            {
                "parameters": [
                    {"name": "s", "step": "prune", "field": "sparsity", "range": {"start": 1, "stop": 0, "step": 0.1}}
                ]
            },
            "spec.parameters[0].range.start",
            "range.start must not exceed range.stop",
        ),
        ({"objectives": [{"metric": "speedup"}, {"metric": "speedup"}]}, "spec.objectives", "may appear once"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_field(
    kube: Any, crd: None, namespace: str, case: tuple[dict[str, Any], str, str]
) -> None:
    spec, field, message = case
    proc = _create(kube, namespace, sweep(**spec))
    assert proc.returncode != 0
    assert field in proc.stderr and message in proc.stderr, proc.stderr


def test_only_parallelism_max_failed_trials_and_suspend_change(kube: Any, crd: None, namespace: str) -> None:
    assert _create(kube, namespace, SWEEP).returncode == 0
    kube.kubectl(
        "patch", "ksweep", "digits", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"parallelism": 3, "suspend": True, "maxFailedTrials": 1}}),
    )  # fmt: skip
    edit = kube.kubectl(
        "patch", "ksweep", "digits", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"objectives": [{"metric": "speedup"}]}}), check=False,
    )  # fmt: skip
    assert edit.returncode != 0 and "immutable after creation" in edit.stderr


def test_printer_columns(kube: Any, crd: None, namespace: str) -> None:
    assert _create(kube, namespace, SWEEP).returncode == 0
    header = kube.kubectl("get", "ksweep", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "DONE", "TOTAL", "BESTRATIO", "BESTACCDELTA", "AGE"]


def test_the_docs_cluster_sweep_is_accepted(kube: Any, crd: None, namespace: str) -> None:
    (manifest,) = _cluster_section_sweeps()
    proc = _create(kube, namespace, manifest)
    assert proc.returncode == 0, proc.stderr
