"""Pure builders: a CompressionJob in, the child manifests the operator creates out. No I/O.

`kompression render` prints exactly these, and the reconciler sends exactly these, so what a user
previews is what runs.
"""

from __future__ import annotations

from typing import Any

import yaml

from kompression.api import memory_plan
from kompression.api.constants import (
    ANNOTATION_GENERATION,
    ANNOTATION_RECREATION,
    ENV_ARCHITECTURE_MODULES,
    ENV_JOB_FILE,
    ENV_PROGRESS_TOKEN_FILE,
    ENV_PROGRESS_URL,
    ENV_PUSHGATEWAY_URL,
    ENV_STORAGE_RETRY_SECONDS,
    ENV_WORKDIR,
    GPU_PRODUCT_LABEL,
    KUEUE_PRIORITY_CLASS_LABEL,
    KUEUE_QUEUE_LABEL,
    PROGRESS_PATH_PREFIX,
    TERMINATION_MESSAGE_PATH,
    progress_audience,
)
from kompression.api.uris import ENV_PVC_ROOT, PVC_MOUNT_ROOT, pvc_claim
from kompression.api.v1alpha1 import CompressionJob, MemoryPlan, WorkerImage
from kompression.controller.failure_policy import WORKER_CONTAINER, pod_failure_policy
from kompression.controller.labels import COMPONENT_PLANNER, child_labels, owner_reference
from kompression.controller.naming import configmap_name, job_name, planning_job_name
from kompression.controller.settings import Settings
from kompression.controller.views import JobView

CONFIG_DIR = "/etc/kompression"
CONFIG_FILE = "job.yaml"
TOKEN_DIR = "/var/run/secrets/kompression/progress"
TOKEN_FILE = "token"
SCRATCH_DIR = "/scratch"
SHM_DIR = "/dev/shm"
TOKEN_EXPIRATION_S = 3600  # kubelet refreshes the file at 80% of this; the worker rereads it per POST
WORKER_UID = 65532  # the distroless "nonroot" user


def _identity(job: CompressionJob) -> tuple[str, str, str]:
    meta = job.metadata
    if not (meta.name and meta.namespace and meta.uid):
        raise ValueError("the CompressionJob needs metadata.name, namespace and uid to build its children")
    return meta.name, meta.namespace, meta.uid


def job_document(job: CompressionJob) -> str:
    """The manifest the worker reads: the spec plus identity, never status."""
    name, namespace, uid = _identity(job)
    doc = {
        "apiVersion": job.apiVersion,
        "kind": job.kind,
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": job.metadata.generation},
        "spec": job.spec.to_wire(),
    }
    return yaml.safe_dump(doc, sort_keys=False)


def build_configmap(job: CompressionJob) -> dict[str, Any]:
    name, namespace, uid = _identity(job)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(name),
            "namespace": namespace,
            "labels": child_labels(name, uid),
            "annotations": {ANNOTATION_GENERATION: str(job.metadata.generation or 1)},
            "ownerReferences": [owner_reference(name, uid)],
        },
        # The manifest is immutable after creation (CEL rule), so the ConfigMap is too.
        "immutable": True,
        "data": {CONFIG_FILE: job_document(job)},
    }


def progress_url(settings: Settings, namespace: str, name: str) -> str:
    return f"{settings.progress_base_url.rstrip('/')}{PROGRESS_PATH_PREFIX}/{namespace}/{name}"


def _env(job: CompressionJob, settings: Settings) -> list[dict[str, Any]]:
    name, namespace, _ = _identity(job)
    env = [
        {"name": ENV_JOB_FILE, "value": f"{CONFIG_DIR}/{CONFIG_FILE}"},
        {"name": ENV_PROGRESS_URL, "value": progress_url(settings, namespace, name)},
        {"name": ENV_PROGRESS_TOKEN_FILE, "value": f"{TOKEN_DIR}/{TOKEN_FILE}"},
        {"name": ENV_WORKDIR, "value": SCRATCH_DIR},
        # The root filesystem is read-only: caches (torch, HF) go to scratch.
        {"name": "HOME", "value": SCRATCH_DIR},
        # The worker refuses any other `architecture`; set explicitly so the image's default never decides.
        {"name": ENV_ARCHITECTURE_MODULES, "value": ",".join(settings.architecture_modules)},
    ]
    if settings.pushgateway_url:
        env.append({"name": ENV_PUSHGATEWAY_URL, "value": settings.pushgateway_url})
    retry = job.spec.output.retrySeconds
    env.append(
        {
            "name": ENV_STORAGE_RETRY_SECONDS,
            "value": str(retry if retry is not None else settings.storage_retry_seconds),
        }
    )
    if _claim_volumes(job):
        env.append({"name": ENV_PVC_ROOT, "value": PVC_MOUNT_ROOT})
    # `env` beats `envFrom`, so the default endpoint is only set when no Secret could name one.
    if settings.s3_endpoint and job.spec.output.credentials is None:
        env.append({"name": "AWS_ENDPOINT_URL", "value": settings.s3_endpoint})
    return env


def _resources(job: CompressionJob, settings: Settings) -> dict[str, Any]:
    res = job.spec.resources
    memory, disk = res.memory_or_default, res.ephemeral_storage_or_default
    limits: dict[str, str] = {"memory": memory, "ephemeral-storage": disk}
    if res.gpus > 0:
        limits[settings.gpu_resource] = str(res.gpus)
    requests = {"cpu": res.cpu, "memory": memory, "ephemeral-storage": disk}
    return {"requests": requests, "limits": limits}


_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}

_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": WORKER_UID,
    "runAsGroup": WORKER_UID,
    "fsGroup": WORKER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _claim_volumes(job: CompressionJob) -> list[tuple[str, str, bool]]:
    """(volume name, claim, writable) for every PersistentVolumeClaim the job's URIs name, in spec
    order: the output's and the step cache's claims are writable, the model's, data's and task files' are
    only read."""
    spec = job.spec
    inputs = [spec.model.uri]
    if spec.data is not None:
        inputs += [d.uri for d in (spec.data.calibration, spec.data.training, spec.data.evaluation) if d and d.uri]
        inputs += [t.uri for t in spec.data.tasks or ()]
    # The step cache is written as the output is.
    outputs = [spec.output.uri] + ([spec.stepCache.uri] if spec.stepCache is not None else [])
    out: dict[str, bool] = {}
    for uri, writable in [*((u, False) for u in inputs), *((u, True) for u in outputs)]:
        claim = pvc_claim(uri)
        if claim is not None:
            out[claim] = out.get(claim, False) or writable
    # Claim names may hold dots and run to 253 characters; volume names are DNS labels.
    return [(f"pvc-{i}", claim, writable) for i, (claim, writable) in enumerate(out.items())]


def _command(job: CompressionJob) -> list[str]:
    command = ["kompression", "run", f"{CONFIG_DIR}/{CONFIG_FILE}"]
    # One rank per GPU under torchrun; the worker keeps its own exit codes through the launcher.
    gpus = job.spec.resources.gpus
    return [*command, "--nproc-per-node", str(gpus)] if gpus > 1 else command


def worker_image(job: CompressionJob, settings: Settings) -> str:
    """The job's own image, else the operator's image of the kind its steps declare they run in."""
    if job.spec.worker.image:
        return job.spec.worker.image
    images: dict[WorkerImage, str] = {"worker": settings.worker_image, "worker-llm": settings.worker_llm_image}
    return images[job.spec.image]


def _container(job: CompressionJob, settings: Settings) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": worker_image(job, settings),
        "command": _command(job),
        "env": _env(job, settings),
        "resources": _resources(job, settings),
        "securityContext": dict(_CONTAINER_SECURITY),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        # The worker writes its final WorkerReport there; logs stand in if it died before.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "job", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "progress-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if job.spec.resources.gpus > 1:
        container["volumeMounts"].append({"name": "shm", "mountPath": SHM_DIR})
    for volume, claim, writable in _claim_volumes(job):
        container["volumeMounts"].append(
            {"name": volume, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": not writable}
        )
    container.update(_credentials(job))
    return container


def _credentials(job: CompressionJob) -> dict[str, Any]:
    """The container's envFrom of the job's credentials Secret, if it names one."""
    creds = job.spec.output.credentials
    if creds is None:
        return {}
    # Referenced by name in the job's own namespace: the values never enter the Job spec.
    return {"envFrom": [{"secretRef": {"name": creds.secretName}}]}


def _config_volume(name: str) -> dict[str, Any]:
    """The job's manifest, from its ConfigMap, as the worker reads it."""
    return {
        "name": "job",
        "configMap": {"name": configmap_name(name), "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}]},
    }


def _volumes(job: CompressionJob) -> list[dict[str, Any]]:
    name, namespace, uid = _identity(job)
    # A pod can only name claims in its own namespace: pvc:// cannot reach another tenant's.
    pvcs = [
        {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}}
        for volume, claim, writable in _claim_volumes(job)
    ]
    return [
        _config_volume(name),
        {
            "name": "progress-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": progress_audience(namespace, name, uid),
                            "expirationSeconds": TOKEN_EXPIRATION_S,
                            "path": TOKEN_FILE,
                        }
                    }
                ]
            },
        },
        # Bounded, so that a model that unpacks without end is evicted instead of filling the node's disk.
        {"name": "scratch", "emptyDir": {"sizeLimit": job.spec.resources.ephemeral_storage_or_default}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
        *_shm(job),
        *pvcs,
    ]


def _shm(job: CompressionJob) -> list[dict[str, Any]]:
    """Shared memory for torchrun's ranks, in place of the container runtime's 64 MiB /dev/shm:
    NCCL passes tensors between the GPUs of a pod through it, and an LLM job's ranks share the
    offloaded model there (compressed-tensors sizes the CPU share of the model by it). It is
    memory, so it counts against the pod's memory limit and may grow to it."""
    if job.spec.resources.gpus <= 1:
        return []
    return [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": job.spec.resources.memory_or_default}}]


def _pod(container: dict[str, Any], volumes: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """What every pod of the operator's Jobs shares: no retries of its own, no API credentials."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy requires it; retries are the Job's
        # The only credential a worker pod gets is the single-audience progress token.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": dict(_POD_SECURITY),
        "containers": [container],
        "volumes": volumes,
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return spec


def _pod_spec(job: CompressionJob, settings: Settings) -> dict[str, Any]:
    res, policy = job.spec.resources, job.spec.runPolicy
    spec = _pod(_container(job, settings), _volumes(job), settings)
    if policy.priorityClassName:
        spec["priorityClassName"] = policy.priorityClassName
    tolerations: list[dict[str, Any]] = []
    node_selector = dict(settings.worker_node_selector)
    if res.gpus > 0:
        tolerations.append({"key": settings.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
        if res.gpuProduct:
            node_selector[GPU_PRODUCT_LABEL] = res.gpuProduct  # the job's own choice wins
        if settings.worker_runtime_class:
            spec["runtimeClassName"] = settings.worker_runtime_class
    tolerations += [dict(t) for t in settings.extra_tolerations if t not in tolerations]
    if tolerations:
        spec["tolerations"] = tolerations
    if node_selector:
        spec["nodeSelector"] = node_selector
    return spec


def starts_suspended(job: CompressionJob) -> bool:
    # Kueue admits a Job by unsuspending it, so a queued Job must be born suspended.
    return job.spec.runPolicy.suspend or job.spec.runPolicy.queueName is not None


def build_job(job: CompressionJob, settings: Settings, recreation: int = 0) -> dict[str, Any]:
    """The worker Job; `recreation` counts the Jobs of this CompressionJob deleted unfinished before."""
    name, namespace, uid = _identity(job)
    policy = job.spec.runPolicy
    labels = child_labels(name, uid)
    job_labels = dict(labels)
    if policy.queueName:
        job_labels[KUEUE_QUEUE_LABEL] = policy.queueName
    if policy.workloadPriorityClassName:
        job_labels[KUEUE_PRIORITY_CLASS_LABEL] = policy.workloadPriorityClassName
    spec: dict[str, Any] = {
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": policy.backoffLimit,
        "activeDeadlineSeconds": policy.activeDeadlineSeconds,
        "suspend": starts_suspended(job),
        "podFailurePolicy": pod_failure_policy(),
        "template": {
            "metadata": {
                "labels": labels,
                **({"annotations": dict(settings.pod_annotations)} if settings.pod_annotations else {}),
            },
            "spec": _pod_spec(job, settings),
        },
    }
    if policy.ttlSecondsAfterFinished is not None:
        spec["ttlSecondsAfterFinished"] = policy.ttlSecondsAfterFinished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name),
            "namespace": namespace,
            "labels": job_labels,
            "annotations": {
                ANNOTATION_GENERATION: str(job.metadata.generation or 1),
                **({ANNOTATION_RECREATION: str(recreation)} if recreation else {}),
            },
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": spec,
    }


def job_spec_drift(job: CompressionJob, existing: JobView) -> dict[str, Any]:
    """The merge patch that brings an existing Job in line with the mutable runPolicy fields."""
    policy = job.spec.runPolicy
    patch: dict[str, Any] = {}
    # Kueue owns `suspend` of a queued Job; the operator must not admit behind its back.
    if policy.queueName is None and existing.suspend != policy.suspend:
        patch["suspend"] = policy.suspend
    if existing.ttl_seconds_after_finished != policy.ttlSecondsAfterFinished:
        patch["ttlSecondsAfterFinished"] = policy.ttlSecondsAfterFinished
    return {"spec": patch} if patch else {}


# ------------------------------------------------------------------ the memory plan of an LLM job

# The planning pod reads a config.json and the safetensors headers, nothing more: a little CPU and
# memory (the interpreter, pydantic and a storage client), on any node, never a GPU.
PLANNING_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "256Mi"},
    "limits": {"memory": "512Mi", "ephemeral-storage": "256Mi"},
}
PLANNING_DEADLINE_S = 600  # a header read that hangs this long is a storage problem: the job goes on unplanned
PLANNING_BACKOFF_LIMIT = 1


def planned(job: CompressionJob) -> bool:
    """Whether the operator plans the job's memory before its worker Job: one with an LLM step (the
    worker-llm image runs exactly those)."""
    return job.spec.image == "worker-llm"


class ResourcesTooSmall(Exception):
    """spec.resources cannot hold the memory plan; the message names the numbers and the knob."""


def planned_resources(job: CompressionJob, plan: MemoryPlan | None) -> CompressionJob:
    """`job` with its unset memory and ephemeralStorage filled in from `plan` (plus the stated
    headroom); `job` itself without a plan. ResourcesTooSmall where what is set cannot hold it."""
    if plan is None:
        return job
    res = job.spec.resources
    short = memory_plan.shortfalls(res.memory, res.ephemeralStorage, plan.hostBytes, plan.scratchBytes, plan.knob)
    if short:
        raise ResourcesTooSmall("; ".join(short))
    filled: dict[str, str] = {}
    if res.memory is None:
        filled["memory"] = memory_plan.with_headroom(plan.hostBytes)
    if res.ephemeralStorage is None:
        filled["ephemeralStorage"] = memory_plan.with_headroom(plan.scratchBytes)
    if not filled:
        return job
    spec = job.spec.model_copy(update={"resources": res.model_copy(update=filled)})
    return job.model_copy(update={"spec": spec})


def build_planning_job(job: CompressionJob, settings: Settings) -> dict[str, Any]:
    """The Job whose pod runs `kompression plan` on the job's manifest: it reads the model folder's
    config.json and safetensors headers with the job's own credentials and claim (the operator never
    reads object storage) and leaves the plan as its termination message. No GPU, no progress token."""
    name, namespace, uid = _identity(job)
    labels = child_labels(name, uid, COMPONENT_PLANNER)
    progress = {ENV_PROGRESS_URL, ENV_PROGRESS_TOKEN_FILE}
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": worker_image(job, settings),
        "command": ["kompression", "plan", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": [e for e in _env(job, settings) if e["name"] not in progress],
        "resources": PLANNING_RESOURCES,
        "securityContext": dict(_CONTAINER_SECURITY),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "job", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    volumes: list[dict[str, Any]] = [
        _config_volume(name),
        {"name": "scratch", "emptyDir": {"sizeLimit": PLANNING_RESOURCES["limits"]["ephemeral-storage"]}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    # Only the model's claim, read-only: the plan reads nothing else.
    claim = pvc_claim(job.spec.model.uri)
    if claim is not None:
        container["volumeMounts"].append({"name": "model", "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    container.update(_credentials(job))
    pod = _pod(container, volumes, settings)
    if settings.worker_node_selector:
        pod["nodeSelector"] = dict(settings.worker_node_selector)
    if settings.extra_tolerations:
        pod["tolerations"] = [dict(t) for t in settings.extra_tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": planning_job_name(name),
            "namespace": namespace,
            "labels": labels,
            "annotations": {ANNOTATION_GENERATION: str(job.metadata.generation or 1)},
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": PLANNING_BACKOFF_LIMIT,
            "activeDeadlineSeconds": PLANNING_DEADLINE_S,
            "podFailurePolicy": pod_failure_policy(),
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
