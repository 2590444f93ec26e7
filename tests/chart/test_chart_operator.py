"""The chart's RBAC is enough: the real operator, acting as the chart's ServiceAccount, takes a
CompressionJob to Succeeded; kstatus conditions satisfy `kubectl wait`; and the Argo CD health check
judges the real statuses it wrote. Skipped until `kompression operator` exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.argocd import health
from testbed.chart import operator_as_chart_sa, operator_available

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not operator_available(), reason="`kompression operator` does not exist yet"),
]

JOB = """
apiVersion: kompression.dev/v1alpha1
kind: CompressionJob
metadata: {name: chart-rbac}
spec:
  model: {uri: "s3://models/m.pt2", format: TorchExport, inputs: [{name: x, shape: [-1, 4]}]}
  steps: [{name: int8, quantize: {method: DynamicInt8}}]
  output: {uri: "s3://out/m/"}
  resources: {gpus: 0, cpu: "1", memory: 1Gi}
"""


def test_operator_as_chart_service_account_runs_a_job(kube: Any, helm: Any, tmp_path: Path) -> None:
    team = kube.create_namespace("team")
    with operator_as_chart_sa(kube, helm, tmp_path, "kpo") as log:
        kube.kubectl("apply", "-n", team, "-f", "-", input=JOB)
        pod = kube.wait(
            lambda: kube.kubectl("get", "pods", "-n", team, "-o", "name").stdout.strip(),  # noqa: PLW0108
            "the worker pod",
            timeout=120,
        )
        running = kube.wait(lambda: _running(kube, team), "phase Running", timeout=60)
        kube.kubectl("annotate", "-n", team, pod.splitlines()[0], "kompression.dev/kwok-exit-code=0")
        kube.kubectl("wait", "-n", team, "--for=condition=Succeeded", "kjob/chart-rbac", "--timeout=120s", timeout=150)
        kube.kubectl("wait", "-n", team, "--for=condition=Ready", "kjob/chart-rbac", "--timeout=30s", timeout=60)
        final = _status(kube, team)
        kube.kubectl("delete", "namespace", team, "--wait=false")
    assert final["status"]["phase"] == "Succeeded"
    assert health(final)[0] == "Healthy"
    assert health(running)[0] == "Progressing"
    text = log.read_text()
    # An RBAC denial reads `... is forbidden: User "system:serviceaccount:..." cannot <verb> ...`; other
    # 403s (a namespace of another test being deleted) say nothing about the chart's rules.
    assert "is forbidden: User" not in text, f"the chart's RBAC is missing something:\n{text[-3000:]}"


def _status(kube: Any, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = yaml.safe_load(
        kube.kubectl("get", "kjob/chart-rbac", "-n", namespace, "-o", "yaml").stdout
    )
    return result


def _running(kube: Any, namespace: str) -> dict[str, Any] | None:
    obj = _status(kube, namespace)
    return obj if (obj.get("status") or {}).get("phase") == "Running" else None
