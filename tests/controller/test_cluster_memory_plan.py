"""An LLM job's memory planned before its GPU pod, on the test bed: the operator makes a planning Job,
its pod runs the real `kompression plan` here (as tests/controller/kubelet.py runs a kwok pod's
container) against the tiny Llama on the loopback S3 server, and then the operator refuses the job
with the numbers and the knob, never making its worker Job, or makes the worker Job with the
planned memory filled in. A job without an LLM step is not planned. The decisions themselves:
tests/controller/test_memory_planning.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubelet
import pytest
from kubectl import apply_cr, conditions, events, finish, jobs, running_pod, status, wait_phase
from operator_process import OperatorProcess

from factories import LLAMA
from kompression.api.memory_plan import gib, with_headroom
from kompression.controller.labels import COMPONENT_PLANNER
from kompression.controller.naming import planning_job_name

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]
TINY_LLAMA = Path(__file__).resolve().parents[1] / "llm" / "fixtures" / "tiny-llama"


def _llm_job(kube: Any, namespace: str, s3: Any, name: str, **resources: Any) -> None:
    bucket = s3.create_bucket(f"plan-{name}")
    for f in sorted(TINY_LLAMA.iterdir()):
        s3.client.put_object(Bucket=bucket, Key=f"models/tiny-llama/{f.name}", Body=f.read_bytes())
    creds = {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
        "AWS_ENDPOINT_URL": s3.endpoint_url,
    }
    literals = (f"--from-literal={k}={v}" for k, v in creds.items())
    kube.kubectl("-n", namespace, "create", "secret", "generic", f"{name}-creds", *literals)
    apply_cr(
        kube,
        namespace,
        name,
        model={**LLAMA, "uri": f"s3://{bucket}/models/tiny-llama/"},
        data={"calibration": {"uri": f"s3://{bucket}/data/train.txt", "samples": 16, "maxLength": 128}},
        steps=[{"name": "w4a16", "llmQuantize": {"scheme": "W4A16", "algorithm": "GPTQ"}}],
        output={"uri": f"s3://{bucket}/out/", "credentials": {"secretName": f"{name}-creds"}},
        resources={"gpus": 1, "cpu": "100m", **resources},
    )


def _run_planning_pod(kube: Any, namespace: str, name: str, tmp_path: Path) -> dict[str, Any]:
    """Run the planning pod's container for real; end the kwok pod with its exit code and message."""
    pod = running_pod(kube, namespace, planning_job_name(name))
    kube.wait(
        lambda: conditions(status(kube, namespace, name)).get("Ready", {}).get("reason") == "Planning",
        "the Planning condition",
    )
    assert pod["spec"]["containers"][0]["command"][:2] == ["kompression", "plan"]
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"].get("limits", {})
    prepared = kubelet.prepare(kube, pod, tmp_path / "root", "worker")
    code = kubelet.run(prepared, tmp_path / "plan.log", timeout=120)
    assert code == 0, (tmp_path / "plan.log").read_text()[-4000:]
    message = prepared.termination_log.read_text()
    finish(kube, pod, code, message)
    report: dict[str, Any] = json.loads(message)
    return report


def _planning_job_gone(kube: Any, namespace: str, name: str) -> None:
    kube.wait(
        lambda: all(j["metadata"]["name"] != planning_job_name(name) for j in jobs(kube, namespace)),
        "the planning Job to be deleted",
        timeout=60,
    )


def test_an_llm_job_whose_memory_cannot_hold_the_plan_is_refused_before_its_worker_job(
    kube: Any, namespace: str, operator: OperatorProcess, s3: Any, tmp_path: Path
) -> None:
    _llm_job(kube, namespace, s3, "small", memory="512Mi")
    report = _run_planning_pod(kube, namespace, "small", tmp_path)
    plan = report["memoryPlan"]
    kube.kubectl("-n", namespace, "wait", "--for=condition=Failed", "compressionjob/small", "--timeout=60s")
    final = wait_phase(kube, namespace, "small", "Failed")
    failed = conditions(final)["Failed"]
    assert failed["reason"] == "ResourcesTooSmall"
    assert failed["message"] == (
        f"spec.resources.memory 512Mi is less than the {gib(plan['hostBytes'])} of host memory planned; raise it, "
        f"or lower the need with {plan['knob']}"
    )
    assert final["memoryPlan"] == plan and conditions(final)["Stalled"]["status"] == "True"
    assert "ResourcesTooSmall" in events(kube, namespace, "small")
    _planning_job_gone(kube, namespace, "small")
    # No worker Job was ever made: its name never had a Job, and the status never named one.
    assert not jobs(kube, namespace) and "jobName" not in final
    assert "JobCreated" not in events(kube, namespace, "small")


def test_an_llm_job_with_memory_unset_gets_the_planned_memory_in_its_worker_job(
    kube: Any, namespace: str, operator: OperatorProcess, s3: Any, tmp_path: Path
) -> None:
    _llm_job(kube, namespace, s3, "unset")
    report = _run_planning_pod(kube, namespace, "unset", tmp_path)
    plan = report["memoryPlan"]
    (job,) = kube.wait(
        lambda: [j for j in jobs(kube, namespace) if j["metadata"]["name"] == "unset"], "the worker Job", timeout=60
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["memory"] == with_headroom(plan["hostBytes"])
    assert container["resources"]["requests"]["memory"] == with_headroom(plan["hostBytes"])
    assert container["resources"]["limits"]["ephemeral-storage"] == with_headroom(plan["scratchBytes"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert status(kube, namespace, "unset")["memoryPlan"] == plan
    assert "MemoryPlanned" in events(kube, namespace, "unset")
    _planning_job_gone(kube, namespace, "unset")


def test_a_job_without_an_llm_step_is_not_planned(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    apply_cr(kube, namespace, "cnn", resources={"gpus": 1, "cpu": "100m"})
    (job,) = kube.wait(lambda: jobs(kube, namespace), "the worker Job", timeout=60)
    assert job["metadata"]["name"] == "cnn"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] != COMPONENT_PLANNER
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "16Gi"
    assert "memoryPlan" not in status(kube, namespace, "cnn")
