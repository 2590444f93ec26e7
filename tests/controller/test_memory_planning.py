"""An LLM job's memory planned before its worker Job, without a cluster: the planning Job's manifest,
what its outcome says, and the decision (refuse, fill in, go on as before). The same against the
API server and the operator process: tests/controller/test_cluster_memory_plan.py."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from factories import LLAMA, manifest
from kompression.api import memory_plan
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import MemoryPlan
from kompression.api.validation import parse_job
from kompression.controller.builders import (
    ResourcesTooSmall,
    build_job,
    build_planning_job,
    planned,
    planned_resources,
)
from kompression.controller.conditions import PLANNING, RESOURCES_TOO_SMALL
from kompression.controller.labels import controller_uid, is_planner
from kompression.controller.observe import Planned, planning
from kompression.controller.settings import Settings
from kompression.controller.store import Store
from kompression.controller.views import JobView, PodView
from kompression.worker import memory

SETTINGS = Settings(
    worker_image="registry.local/worker:1",
    worker_llm_image="registry.local/worker-llm:1",
    worker_node_selector={"pool": "batch"},
)
GiB = 1 << 30
LLM: dict[str, Any] = {
    "model": LLAMA,
    "data": {"calibration": {"uri": "s3://data/calibration.jsonl", "samples": 256, "maxLength": 2048}},
    "steps": [{"name": "w4a16", "llmQuantize": {"scheme": "W4A16", "algorithm": "GPTQ"}}],
}
# A plan as the planning pod reports it: 3 GiB of host memory, 1 GiB of GPU memory, 5 GiB of disk.
PLAN = MemoryPlan(
    hostBytes=3 * GiB,
    gpuBytes=GiB,
    scratchBytes=5 * GiB,
    knob="fewer calibration samples (spec.data.calibration.samples)",
)


def _llm(**resources: Any) -> Any:
    return parse_job(manifest("llama", **{**LLM, "resources": {"gpus": 1, **resources}}))


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_only_jobs_with_an_llm_step_are_planned() -> None:
    assert planned(_llm())
    assert planned(
        parse_job(manifest("sparse", **{**LLM, "steps": [{"name": "s", "llmSparsify": {"method": "Wanda"}}]}))
    )
    assert not planned(parse_job(manifest()))


def test_the_planning_job_reads_headers_with_the_jobs_credentials_and_no_gpu() -> None:
    spec = {
        **LLM,
        "model": {**LLAMA, "uri": "pvc://models/llama/"},
        "output": {"uri": "pvc://results/llama/", "credentials": {"secretName": "s3-creds"}},
        "resources": {"gpus": 2, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
        "runPolicy": {"queueName": "gpu-queue"},
    }
    job = parse_job(manifest("llama", **spec))
    body = build_planning_job(job, SETTINGS)
    assert body["metadata"]["name"] == "llama-plan"
    assert is_planner(body) and controller_uid(body) == job.metadata.uid
    # Not Kueue's to admit, and asks for no GPU: it never counts as the job's GPU Job.
    assert "kueue.x-k8s.io/queue-name" not in body["metadata"]["labels"]
    assert body["spec"].get("suspend") is None
    container = _container(body)
    assert container["image"] == "registry.local/worker-llm:1"
    assert container["command"] == ["kompression", "plan", "/etc/kompression/job.yaml"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "KOMPRESSION_PROGRESS_URL" not in env and env["KOMPRESSION_PVC_ROOT"] == "/mnt/pvc"
    pod = body["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "batch"} and "tolerations" not in pod and "runtimeClassName" not in pod
    assert pod["automountServiceAccountToken"] is False
    # The model's claim alone, read-only; no progress token.
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert list(claims) == ["models"] and claims["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert not any("projected" in v for v in pod["volumes"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/models"]["readOnly"] is True


def test_resources_that_cannot_hold_the_plan_are_refused_with_the_numbers_and_the_knob() -> None:
    with pytest.raises(ResourcesTooSmall) as err:
        planned_resources(_llm(memory="2Gi", ephemeralStorage="4Gi"), PLAN)
    message = str(err.value)
    assert message.startswith(
        "spec.resources.memory 2Gi is less than the 3.00 GiB of host memory planned; raise it, or lower the need "
        "with fewer calibration samples (spec.data.calibration.samples)"
    )
    assert "spec.resources.ephemeralStorage 4Gi is less than the 5.00 GiB of scratch disk planned" in message
    # The worker's own refusal says the same words (one source: api/memory_plan.shortfalls).
    assert message == "; ".join(memory_plan.shortfalls("2Gi", "4Gi", 3 * GiB, 5 * GiB, PLAN.knob))


def test_unset_resources_are_filled_in_from_the_plan_with_the_headroom() -> None:
    job = planned_resources(_llm(), PLAN)
    limits = _container(build_job(job, SETTINGS))["resources"]["limits"]
    assert limits["memory"] == f"{math.ceil(3 * GiB * 1.25 / 2**20)}Mi" == "3840Mi"
    assert limits["ephemeral-storage"] == "6400Mi"
    # What the user set is kept; only the unset field is filled.
    kept = planned_resources(_llm(memory="64Gi"), PLAN)
    limits = _container(build_job(kept, SETTINGS))["resources"]["limits"]
    assert limits["memory"] == "64Gi" and limits["ephemeral-storage"] == "6400Mi"


def test_without_a_plan_or_an_llm_step_the_old_defaults_hold() -> None:
    for job in (planned_resources(_llm(), None), parse_job(manifest())):
        container = _container(build_job(job, SETTINGS))
        assert container["resources"]["limits"]["memory"] == "16Gi"
        assert container["resources"]["requests"]["ephemeral-storage"] == "20Gi"
    # An old manifest that spelled out the old defaults builds the same Job as one that leaves them unset.
    spelled = parse_job(manifest(resources={"gpus": 1, "memory": "16Gi", "ephemeralStorage": "20Gi"}))
    assert build_job(spelled, SETTINGS) == build_job(parse_job(manifest(resources={"gpus": 1})), SETTINGS)


def _planning_job(*conds: str) -> JobView:
    return JobView.of(
        {
            "metadata": {"name": "llama-plan"},
            "status": {"conditions": [{"type": t, "status": "True", "reason": t} for t in conds]},
        }
    )


def _pod(report: WorkerReport | None, exit_code: int) -> PodView:
    message = report.model_dump_json(exclude_none=True) if report is not None else "Traceback ..."
    terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "message": message}
    state = {"terminated": terminated}
    return PodView.of(
        {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "worker", "state": state}]}}
    )


def test_the_planning_jobs_outcome() -> None:
    running = planning(_planning_job(), [])
    assert not isinstance(running, Planned) and running.reason == PLANNING and running.phase == "Pending"
    done = planning(_planning_job("Complete"), [_pod(WorkerReport(phase="Succeeded", memoryPlan=PLAN), 0)])
    assert done == Planned(PLAN.to_wire())
    # No plan could be made (a folder the loader's vetting will refuse in its own words): go on unplanned.
    assert planning(_planning_job("Complete"), [_pod(WorkerReport(phase="Succeeded"), 0)]) == Planned(None)
    assert planning(_planning_job("Failed"), [_pod(None, 1)]) == Planned(None)
    # A model folder the worker refuses to read fails the job here, before a GPU is taken.
    refused = WorkerReport(phase="Failed", reason="ModelError", message="spec.model.uri: a symlink")
    failed = planning(_planning_job("Failed"), [_pod(refused, 3)])
    assert not isinstance(failed, Planned) and (failed.phase, failed.reason) == ("Failed", "ModelError")
    assert failed.message == "spec.model.uri: a symlink" and failed.stalled


def test_the_planning_job_is_kept_apart_from_the_worker_job_in_the_store() -> None:
    job = _llm()
    store = Store()
    planner = {**build_planning_job(job, SETTINGS), "status": {}}
    planner["metadata"] = {**planner["metadata"], "uid": "plan-uid", "resourceVersion": "5"}
    key = store.put_job(planner)
    assert key == ("team-a", "llama") and key in store.planners and key not in store.jobs
    pod = {
        "metadata": {
            "name": "llama-plan-x",
            "namespace": "team-a",
            "uid": "pod-uid",
            "ownerReferences": [{"kind": "Job", "name": "llama-plan", "uid": "plan-uid", "controller": True}],
        },
        "status": {"phase": "Running"},
    }
    # Its pod is found through it, never among the worker Job's pods (nor is it in store.jobs, which
    # the GPU queue, Kueue's Workloads and the progress channel read).
    assert store.put_pod(pod) == key and store.pods_of("team-a", "llama-plan") and not store.pods_of("team-a", "llama")
    # A deletion the watches missed is found on a resync, as for the worker Job.
    assert store.drop_unlisted_jobs([], "9", None) == [key] and key not in store.planners
    store.put_job(planner, deleted=True)
    assert not store.planners


STEPS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "steps.md"


def _llama_7b() -> tuple[dict[str, Any], dict[str, memory_plan.Tensor]]:
    """Llama-2-7B's config.json and safetensors headers (bfloat16), as the planning pod reads them."""
    hidden, intermediate, layers, vocab = 4096, 11008, 32, 32000
    bf16 = memory_plan.Tensor
    tensors = {
        "model.embed_tokens.weight": bf16("BF16", (vocab, hidden)),
        "model.norm.weight": bf16("BF16", (hidden,)),
        "lm_head.weight": bf16("BF16", (vocab, hidden)),
    }
    for i in range(layers):
        layer = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{layer}.self_attn.{proj}.weight"] = bf16("BF16", (hidden, hidden))
        tensors[f"{layer}.mlp.gate_proj.weight"] = bf16("BF16", (intermediate, hidden))
        tensors[f"{layer}.mlp.up_proj.weight"] = bf16("BF16", (intermediate, hidden))
        tensors[f"{layer}.mlp.down_proj.weight"] = bf16("BF16", (hidden, intermediate))
        tensors[f"{layer}.input_layernorm.weight"] = bf16("BF16", (hidden,))
        tensors[f"{layer}.post_attention_layernorm.weight"] = bf16("BF16", (hidden,))
    config = {"hidden_size": hidden, "intermediate_size": intermediate, "num_attention_heads": 32, "vocab_size": vocab}
    return config, tensors


def test_the_steps_pages_memory_examples_are_what_the_operator_decides() -> None:
    """docs/steps.md (Memory planned before the pod starts): the 7B Llama job of the page, left
    unset, gets the figures the page names; with memory: 16Gi, the refusal the page quotes."""
    page = STEPS_PAGE.read_text()
    section = page[page.index("### Memory planned before the pod starts") :]
    doc = next(yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "llama-7b-w4a16" in b)
    job = parse_job({**doc, "metadata": {**doc["metadata"], "namespace": "team-a", "uid": "u", "generation": 1}})
    assert job.spec.resources.memory is None and job.spec.resources.ephemeralStorage is None
    config, tensors = _llama_7b()
    (work,) = memory.workloads(job)
    made = memory_plan.plan(config, tensors, work)
    plan = MemoryPlan.model_validate(made.to_wire())
    limits = _container(build_job(planned_resources(job, plan), SETTINGS))["resources"]["limits"]
    prose = " ".join(section.split())
    host = memory_plan.gib(made.host)
    assert f"a memory request and limit of `{limits['memory']}` ({host} planned, plus 25%)" in prose
    assert f"`{limits['ephemeral-storage']}` of scratch disk" in prose
    sixteen = job.model_copy(
        update={
            "spec": job.spec.model_copy(update={"resources": job.spec.resources.model_copy(update={"memory": "16Gi"})})
        }
    )
    with pytest.raises(ResourcesTooSmall) as err:
        planned_resources(sixteen, plan)
    quoted = re.search(r"\n\n {6}(spec\.resources\.memory 16Gi .*?)\n\n", section, re.S)
    assert quoted is not None and " ".join(quoted.group(1).split()) == str(err.value)
    troubleshooting = (STEPS_PAGE.parent / "troubleshooting.md").read_text()
    for reason in (PLANNING, RESOURCES_TOO_SMALL):
        assert f"| `{reason}` |" in troubleshooting, reason


def test_a_model_free_step_is_planned_without_calibration() -> None:
    """method ModelFree runs no text through a model, so its plan holds no calibration cache: a job
    that fits it is not refused for the cache Oneshot would have needed."""
    page = STEPS_PAGE.read_text()
    section = page[page.index("### Memory planned before the pod starts") :]
    doc = next(yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "llama-7b-w4a16" in b)
    for step in doc["spec"]["steps"]:
        if "llmQuantize" in step:
            step["llmQuantize"] |= {"method": "ModelFree", "algorithm": "RTN"}
    doc["spec"].pop("data", None)
    job = parse_job({**doc, "metadata": {**doc["metadata"], "namespace": "team-a", "uid": "u", "generation": 1}})
    (work,) = memory.workloads(job)
    assert work.algorithm == memory_plan.MODEL_FREE
    config, tensors = _llama_7b()
    assert "calibrationCache" not in memory_plan.plan(config, tensors, work).parts
