"""The Job of a job with an LLM step, built without a cluster: the worker-llm image, and for
resources.gpus > 1 one torchrun rank per GPU with shared memory between them."""

from __future__ import annotations

from typing import Any

from factories import LLAMA, manifest
from kompression.api.validation import parse_job
from kompression.controller.builders import build_job
from kompression.controller.settings import DEFAULT_WORKER_LLM_IMAGE, Settings

SETTINGS = Settings(worker_image="registry.local/worker:1", worker_llm_image="registry.local/worker-llm:1")

LLM = {
    "model": LLAMA,
    "data": {"calibration": {"uri": "s3://data/calibration.jsonl", "samples": 256, "maxLength": 2048}},
    "steps": [{"name": "w4a16", "llmQuantize": {"scheme": "W4A16", "algorithm": "GPTQ"}}],
}


def _pod(gpus: int, settings: Settings = SETTINGS, **spec: Any) -> dict[str, Any]:
    job = parse_job(manifest(**{**LLM, **spec, "resources": {"gpus": gpus, "memory": "64Gi"}}))
    return dict(build_job(job, settings)["spec"]["template"]["spec"])


def test_each_llm_technique_declares_the_llm_image() -> None:
    assert parse_job(manifest(**LLM)).spec.image == "worker-llm"
    assert parse_job(manifest()).spec.image == "worker"
    sparsify = _pod(1, steps=[{"name": "sparse24", "llmSparsify": {"method": "Wanda"}}])
    assert sparsify["containers"][0]["image"] == "registry.local/worker-llm:1"


def test_an_llm_job_runs_in_the_llm_image_and_others_in_the_worker() -> None:
    assert _pod(1)["containers"][0]["image"] == "registry.local/worker-llm:1"
    other = build_job(parse_job(manifest()), SETTINGS)["spec"]["template"]["spec"]
    assert other["containers"][0]["image"] == "registry.local/worker:1"
    assert _pod(1, Settings())["containers"][0]["image"] == DEFAULT_WORKER_LLM_IMAGE


def test_the_jobs_own_image_wins_over_the_llm_default() -> None:
    assert _pod(1, worker={"image": "mine:2"})["containers"][0]["image"] == "mine:2"


def test_two_gpus_run_two_ranks_that_share_memory() -> None:
    pod = _pod(2)
    (container,) = pod["containers"]
    assert container["command"] == ["kompression", "run", "/etc/kompression/job.yaml", "--nproc-per-node", "2"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    # The ranks share the offloaded model and NCCL's buffers through /dev/shm, bounded by the pod's memory.
    (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_one_gpu_runs_one_process_without_extra_shared_memory() -> None:
    pod = _pod(1)
    (container,) = pod["containers"]
    assert container["command"] == ["kompression", "run", "/etc/kompression/job.yaml"]
    assert "shm" not in {v["name"] for v in pod["volumes"]}


def _claim_mounts(pod: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """claim -> (mountPath, readOnly) of the worker container."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    return {
        claims[m["name"]]: (m["mountPath"], m.get("readOnly", False))
        for m in pod["containers"][0]["volumeMounts"]
        if m["name"] in claims
    }


def test_a_task_file_on_a_claim_of_its_own_is_mounted_read_only() -> None:
    data = {**LLM["data"], "tasks": [{"name": "arc", "uri": "pvc://tasks/arc.jsonl"}]}
    pod = _pod(1, data=data, output={"uri": "pvc://results/llama/"})
    assert _claim_mounts(pod) == {"tasks": ("/mnt/pvc/tasks", True), "results": ("/mnt/pvc/results", False)}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KOMPRESSION_PVC_ROOT"] == "/mnt/pvc"
