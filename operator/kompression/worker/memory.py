"""The worker's first phase for an LLM job: plan its memory (api/memory_plan.py) from the model
folder's config.json and safetensors headers, read where the model lies (a ranged read of each
header, never the weights), and refuse a job whose spec.resources cannot hold the plan before a
single weight is downloaded.

The controller cannot do this at admission: it never reads object storage (it holds no
credentials of the jobs' Secrets, and its image has no storage client). The worker reports the
plan instead, and the operator names it when the pod is killed for memory.
"""

from __future__ import annotations

import json

from kompression.api import memory_plan
from kompression.api.memory_plan import Plan, Workload
from kompression.api.v1alpha1 import CompressionJob, LLMQuantizeStep, LLMSparsifyStep
from kompression.worker.errors import ModelError, SpecError
from kompression.worker.storage import objects

# Calibration samples planned for when spec.data.calibration.samples is unset (every sample of
# the file is used; counting them would mean reading it) and tokens per sample when maxLength is.
DEFAULT_SAMPLES = 512
DEFAULT_SEQUENCE_LENGTH = 2048  # token_ids.DEFAULT_MAX_LENGTH, the cap of an LLM step's samples


def workloads(job: CompressionJob) -> list[Workload]:
    """What each LLM step of the job does, as the plan needs it."""
    calibration = job.spec.data.calibration if job.spec.data is not None else None
    samples = (calibration.samples if calibration else None) or DEFAULT_SAMPLES
    length = (calibration.maxLength if calibration else None) or DEFAULT_SEQUENCE_LENGTH
    gpus = job.spec.resources.gpus
    out = []
    for step in job.spec.steps:
        cfg = step.config
        if isinstance(cfg, LLMQuantizeStep):
            algorithm = cfg.algorithm_or_default if cfg.scheme in ("W4A16", "W8A16", "W8A8") else "RTN"
            out.append(Workload("llmQuantize", algorithm, cfg.scheme, cfg.backend_or_default, samples, length, gpus))
        elif isinstance(cfg, LLMSparsifyStep):
            out.append(Workload("llmSparsify", cfg.method, None, cfg.backend_or_default, samples, length, gpus))
    return out


def read_headers(model_uri: str) -> tuple[dict[str, object], dict[str, memory_plan.Tensor]]:
    """config.json and every tensor the folder's safetensors headers name, reading only the headers."""
    base = model_uri.rstrip("/")
    try:
        config = json.loads(objects.read_bytes(f"{base}/config.json"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"spec.model.uri: cannot read config.json of {model_uri}: {exc}") from None
    tensors: dict[str, memory_plan.Tensor] = {}
    for name in objects.list_files(base):
        if "/" in name or not name.endswith(".safetensors"):
            continue
        uri = f"{base}/{name}"
        try:
            n = memory_plan.header_length(objects.read_bytes(uri, 0, memory_plan.HEADER_LENGTH_BYTES))
            end = memory_plan.HEADER_LENGTH_BYTES + n
            tensors.update(memory_plan.header_tensors(objects.read_bytes(uri, memory_plan.HEADER_LENGTH_BYTES, end)))
        except memory_plan.HeaderInvalid as exc:
            raise ModelError(f"spec.model.uri: {name} is not a safetensors file: {exc}") from None
    return config, tensors


def plan(job: CompressionJob) -> Plan | None:
    """The largest plan over the job's LLM steps (they run one after another); None without any."""
    work = workloads(job)
    if not work:
        return None
    config, tensors = read_headers(job.spec.model.uri)
    return max((memory_plan.plan(config, tensors, w) for w in work), key=lambda p: p.host)


def check(job: CompressionJob, planned: Plan) -> None:
    """Refuse a job whose spec.resources cannot hold the plan, naming the numbers and the knob."""
    res = job.spec.resources
    short = []
    if memory_plan.quantity_bytes(res.memory) < planned.host:
        short.append(
            f"spec.resources.memory {res.memory} is less than the {memory_plan.gib(planned.host)} of host memory "
            f"planned; raise it, or lower the need with {planned.knob}"
        )
    if memory_plan.quantity_bytes(res.ephemeralStorage) < planned.scratch:
        short.append(
            f"spec.resources.ephemeralStorage {res.ephemeralStorage} is less than the "
            f"{memory_plan.gib(planned.scratch)} of scratch disk planned (the model, its compressed copy and caches)"
        )
    if short:
        raise SpecError("; ".join(short))
