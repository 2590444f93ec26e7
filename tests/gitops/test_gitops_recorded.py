"""The Argo CD health check judges statuses the real operator wrote on the test bed.

The operator runs as the chart's ServiceAccount with `operator.maxGpuJobsPerNamespace=2`; kwok exit-code
annotations and the real scheduler drive one CompressionJob into each state below. Each live
status is run through deploy/argocd/health.lua and compared with its recording in
testdata/recorded-*.yaml (phase, condition types/statuses/reasons, health), so a change in what the
operator writes shows up here as drift. The recordings run offline too, as health_test.yaml cases.

Re-record after an intended change: `KOMPRESSION_RECORD_HEALTH=1 pytest tests/gitops/test_gitops_recorded.py`,
then update the recorded cases' messages in health_test.yaml.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from factories import applied
from testbed.argocd import health
from testbed.chart import operator_as_chart_sa, operator_available

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not operator_available(), reason="`kompression operator` does not exist yet"),
]

HERE = Path(__file__).resolve().parent
RECORD = os.environ.get("KOMPRESSION_RECORD_HEALTH") == "1"
H100 = "NVIDIA-H100-80GB-HBM3"
PLACEHOLDER_TIME = "2026-01-01T00:00:00Z"

CPU_ONLY: dict[str, Any] = {"gpus": 0, "cpu": "1", "memory": "1Gi"}


def _manifest(name: str, **spec: Any) -> dict[str, Any]:
    return applied(name, **{"resources": CPU_ONLY, **spec})


class Bed:
    def __init__(self, kube: Any, namespace: str) -> None:
        self.kube, self.ns = kube, namespace

    def apply(self, doc: dict[str, Any]) -> None:
        self.kube.kubectl("apply", "-n", self.ns, "-f", "-", input=json.dumps(doc))

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kube.kubectl("get", "kjob", name, "-n", self.ns, "-o", "json").stdout)
        return result

    def wait_status(self, name: str, ok: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            obj = self.get(name)
            status = obj.get("status") or {}
            current = status.get("observedGeneration") == obj["metadata"].get("generation")
            return obj if current and ok(status) else None

        result: dict[str, Any] = self.kube.wait(probe, f"{self.ns}/{name}: {what}", timeout=90)
        return result

    def finish_pod(self, job: str, code: int) -> None:
        def pods() -> list[str]:
            out = self.kube.kubectl("get", "pods", "-n", self.ns, "-l", f"job-name={job}", "-o", "name").stdout
            return out.split()

        pod = self.kube.wait(pods, f"a pod of {job}", timeout=90)[0]
        self.kube.kubectl("annotate", "-n", self.ns, pod, f"kompression.dev/kwok-exit-code={code}")


def _reason(status: dict[str, Any], type_: str) -> str | None:
    return next((c.get("reason") for c in status.get("conditions") or [] if c["type"] == type_), None)


def _phase(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("phase") == phase


def _normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """What is kept in testdata: no server-set identity, fixed times, namespace `ml`."""
    meta = obj["metadata"]
    status = copy.deepcopy(obj.get("status") or {})
    for cond in status.get("conditions") or []:
        cond["lastTransitionTime"] = PLACEHOLDER_TIME
    for key in ("startTime", "completionTime", "lastProgressTime"):
        if key in status:
            status[key] = PLACEHOLDER_TIME
    text = json.dumps(status).replace(meta["namespace"], "ml")
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {"name": meta["name"], "namespace": "ml", "generation": meta["generation"]},
        "spec": obj["spec"],
        "status": json.loads(text),
    }


def _signature(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    return {
        "phase": status.get("phase"),
        "health": health(obj)[0],
        "conditions": sorted((c["type"], c["status"], c.get("reason")) for c in status.get("conditions") or []),
    }


def test_health_of_statuses_recorded_from_the_operator(kube: Any, helm: Any, tmp_path: Path) -> None:
    team = kube.create_namespace("team")
    bed = Bed(kube, team)
    live: dict[str, tuple[dict[str, Any], str]] = {}  # recording name -> (object, expected health)
    with operator_as_chart_sa(kube, helm, tmp_path, "kph", "operator.maxGpuJobsPerNamespace=2") as log:
        try:
            # Running: a GPU job on an H100 node, holding GPU slot 1 of 2.
            bed.apply(_manifest("running", resources={"gpus": 1, "gpuProduct": H100}))
            live["running"] = (bed.wait_status("running", _phase("Running"), "Running"), "Progressing")
            # Pending, Unschedulable: a GPU product no node has (slot 2 of 2).
            bed.apply(_manifest("unschedulable", resources={"gpus": 1, "gpuProduct": "NVIDIA-B200"}))
            live["unschedulable"] = (
                bed.wait_status("unschedulable", lambda s: _reason(s, "Ready") == "Unschedulable", "Unschedulable"),
                "Progressing",
            )
            # Queued: both GPU slots are taken.
            bed.apply(_manifest("queued", resources={"gpus": 1, "gpuProduct": H100}))
            live["queued"] = (bed.wait_status("queued", _phase("Queued"), "Queued"), "Progressing")
            # Suspended before it ever ran.
            bed.apply(_manifest("suspended", runPolicy={"suspend": True}))
            live["suspended"] = (bed.wait_status("suspended", _phase("Suspended"), "Suspended"), "Suspended")
            # Succeeded: the worker exits 0.
            bed.apply(_manifest("succeeded"))
            bed.finish_pod("succeeded", 0)
            live["succeeded"] = (bed.wait_status("succeeded", _phase("Succeeded"), "Succeeded"), "Healthy")
            # Failed with GateFailed: exit code 6 is permanent (podFailurePolicy FailJob).
            bed.apply(_manifest("gate-failed"))
            bed.finish_pod("gate-failed", 6)
            live["gate-failed"] = (bed.wait_status("gate-failed", _phase("Failed"), "Failed"), "Degraded")
        except Exception as exc:
            raise AssertionError(f"{exc}\noperator log:\n{log.read_text()[-4000:]}") from exc
        finally:
            kube.kubectl("delete", "namespace", team, "--wait=false", check=False)

    assert _reason(live["gate-failed"][0]["status"], "Failed") == "GateFailed"
    drift = []
    for name, (obj, expected) in live.items():
        status, message = health(obj)
        assert status == expected, f"{name}: Lua says {status} ({message}), expected {expected}"
        path = HERE / "testdata" / f"recorded-{name}.yaml"
        if RECORD:
            path.write_text(yaml.safe_dump(_normalized(obj), sort_keys=False))
        elif _signature(_normalized(obj)) != _signature(yaml.safe_load(path.read_text())):
            drift.append(f"{name}: live {_signature(obj)} != recorded {_signature(yaml.safe_load(path.read_text()))}")
    assert not drift, (
        "the operator's statuses drifted from testdata/recorded-*.yaml "
        "(KOMPRESSION_RECORD_HEALTH=1 re-records):\n" + "\n".join(drift)
    )
