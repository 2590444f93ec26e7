"""examples/llm-multi-gpu.yaml on the test bed: the operator creates a Job that runs the worker-llm
image with one torchrun rank per GPU, asks for both GPUs, gives the ranks shared memory, and the
real scheduler places it on a node with two free H100s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl import finish_planning, jobs, running_pod
from operator_process import OperatorProcess

from kompression.controller.settings import DEFAULT_WORKER_LLM_IMAGE

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm-multi-gpu.yaml"


def test_the_multi_gpu_llm_example_runs_two_ranks_in_the_llm_image(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["namespace"] = namespace
    kube.apply(doc)
    name = doc["metadata"]["name"]
    finish_planning(kube, namespace, name)
    (job,) = kube.wait(
        lambda: [j for j in jobs(kube, namespace) if j["metadata"]["name"] == name], "the worker Job", timeout=60
    )
    pod_spec = job["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert container["image"] == DEFAULT_WORKER_LLM_IMAGE
    assert container["command"] == ["kompression", "run", "/etc/kompression/job.yaml", "--nproc-per-node", "2"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    (shm,) = [v for v in pod_spec["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    pod = running_pod(kube, namespace, name)
    assert pod["spec"]["nodeName"].startswith("kwok-h100-")
