"""pvc:// on the test bed: the operator mounts the claim that only a job's task file names. The run
through the claims, on a real kubelet, is tests/controller/test_real_node_e2e.py's."""

from __future__ import annotations

from typing import Any

import pytest
from claims import claim_volumes
from kubectl import apply_cr, finish_planning, jobs
from operator_process import OperatorProcess

from factories import LLAMA

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_task_file_on_a_claim_of_its_own_is_mounted_in_the_job(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    """The Job the real API server stores mounts the claim that only data.tasks names (read-only)."""
    spec: dict[str, Any] = {
        "model": LLAMA,
        "data": {
            "calibration": {"uri": "s3://data/calibration.jsonl", "samples": 8, "maxLength": 64},
            "tasks": [{"name": "arc", "uri": "pvc://tasks/arc/test.jsonl"}],
        },
        "steps": [{"name": "w4a16", "llmQuantize": {"scheme": "W4A16", "algorithm": "RTN"}}],
        "acceptance": {"maxAccuracyDrop": 0.05},
        "output": {"uri": "s3://out/llama/"},
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
    }
    apply_cr(kube, namespace, "tasks-claim", **spec)
    finish_planning(kube, namespace, "tasks-claim")
    job = kube.wait(
        lambda: next((j for j in jobs(kube, namespace) if j["metadata"]["name"] == "tasks-claim"), None),
        f"the Job of {namespace}/tasks-claim",
        timeout=60,
    )
    claims, mounts = claim_volumes(job["spec"]["template"]["spec"])
    assert {c: v["readOnly"] for c, v in claims.items()} == {"tasks": True}
    assert mounts == {"tasks": ("/mnt/pvc/tasks", True)}
