"""The worker's first phase for an LLM job: plan its memory (api/memory_plan.py) from the model
folder's config.json and safetensors headers, read where the model lies (a ranged read of each
header, never the weights), and refuse a job whose spec.resources cannot hold the plan before a
single weight is downloaded.

The controller never reads object storage (it holds no credentials of the jobs' Secrets, and its
image has no storage client), so at admission it runs `kompression plan` (worker/cli.py) in a
planning pod of the job's own image and credentials, and refuses or fills in spec.resources from
what that pod reports (controller/builders.py:planned_resources); the worker plans again as it
starts, and the operator names the plan when the pod is killed for memory.
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
            algorithm: str = cfg.algorithm_or_default if cfg.scheme in ("W4A16", "W8A16", "W8A8") else "RTN"
            if cfg.method_or_default == "ModelFree":
                algorithm = memory_plan.MODEL_FREE
            out.append(Workload("llmQuantize", algorithm, cfg.scheme, cfg.backend_or_default, samples, length, gpus))
        elif isinstance(cfg, LLMSparsifyStep):
            out.append(Workload("llmSparsify", cfg.method, None, cfg.backend_or_default, samples, length, gpus))
    return out


# A config.json is a few KiB; a larger one is left to the folder's vetting, not read whole here.
CONFIG_MAX_BYTES = 1 << 20


class Unplanned(Exception):
    """The folder says nothing a plan can use; the folder's own vetting (formats/hf_folder) names
    what is wrong with it when the model is loaded, in its words."""


def read_headers(model_uri: str) -> tuple[dict[str, object], dict[str, memory_plan.Tensor]]:
    """config.json and every tensor the folder's safetensors headers name, reading only the headers.

    The folder is untrusted and not yet vetted: a local one must hold nothing but regular files and
    folders, and an object key nothing but plain relative segments, before a byte is read (the same
    refusals the loader's fetch makes, so the author reads the same message). Anything else the
    plan cannot read raises Unplanned."""
    base = model_uri.rstrip("/")
    try:
        if objects.parse_uri(base).is_local:
            objects.vet_local(base)
        names = objects.list_files(base)
        for name in names:
            objects.check_key(base, name)
        raw = objects.read_bytes(f"{base}/config.json", 0, CONFIG_MAX_BYTES + 1)
    except objects.UnsafeSource as exc:
        raise ModelError(f"spec.model.uri: {exc.message}") from None
    except (OSError, objects.StorageError) as exc:
        raise Unplanned(f"config.json: {exc}") from None
    try:
        config = json.loads(raw) if len(raw) <= CONFIG_MAX_BYTES else None
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise Unplanned("config.json is not a JSON object of at most 1 MiB")
    tensors: dict[str, memory_plan.Tensor] = {}
    for name in names:
        if "/" in name or not name.endswith(".safetensors"):
            continue
        uri = f"{base}/{name}"
        try:
            n = memory_plan.header_length(objects.read_bytes(uri, 0, memory_plan.HEADER_LENGTH_BYTES))
            end = memory_plan.HEADER_LENGTH_BYTES + n
            tensors.update(memory_plan.header_tensors(objects.read_bytes(uri, memory_plan.HEADER_LENGTH_BYTES, end)))
        except memory_plan.HeaderInvalid as exc:
            raise Unplanned(f"{name}: {exc}") from None
    return config, tensors


def plan(job: CompressionJob) -> Plan | None:
    """The largest plan over the job's LLM steps (they run one after another); None without any,
    or when the folder gives no plan to make (the loader's vetting then refuses it)."""
    work = workloads(job)
    if not work:
        return None
    try:
        config, tensors = read_headers(job.spec.model.uri)
        return max((memory_plan.plan(config, tensors, w) for w in work), key=lambda p: p.host)
    except Unplanned:
        return None


def check(job: CompressionJob, planned: Plan) -> None:
    """Refuse a job whose spec.resources cannot hold the plan, naming the numbers and the knob. An
    unset memory or ephemeralStorage is the operator's to fill in from the same plan."""
    res = job.spec.resources
    short = memory_plan.shortfalls(res.memory, res.ephemeralStorage, planned.host, planned.scratch, planned.knob)
    if short:
        raise SpecError("; ".join(short))
