"""How much host memory, GPU memory and scratch disk an LLM step's pod needs, planned before any
weight is read: from the model folder's config.json, its safetensors headers (8 bytes of length,
then JSON naming every tensor's dtype and shape), the recipe and the calibration data.

Pure: the worker reads those bytes (a ranged read from object storage) and the controller reads
the plan the worker reports; neither torch nor kopf is imported here. The figures are a model of
llm-compressor's sequential pipeline and Model Optimizer's in-memory quantization, fitted to the
peaks the LLM tests measure (benchmarks/results/llm_memory.md records the error).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

# A safetensors file starts with the little-endian length of its JSON header.
HEADER_LENGTH_BYTES: Final = 8
# safetensors refuses headers above 100 MB; so do we, before reading one.
MAX_HEADER_BYTES: Final = 100_000_000

DTYPE_BYTES: Final = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
GiB: Final = 1 << 30
MiB: Final = 1 << 20

# What the worker-llm process holds before the model (torch, transformers, llm-compressor, the
# tokenizer, the calibration text): the peak of calibrating the 3.7 MB fixture model was 951 MiB
# with RTN and 1060 MiB with GPTQ (32 samples of 128 tokens).
RUNTIME_HOST: Final = 1000 * MiB
# A CUDA context and torch's allocator reserve, per GPU.
RUNTIME_GPU: Final = 600 * MiB
# Caches (HF, torch) and the report beside the model's two copies on scratch.
SCRATCH_SLACK: Final = 512 * MiB
# Bits per weight each scheme stores (scales included, rounded up), for the published copy.
SCHEME_BITS: Final = {
    "W4A16": 4.5,
    "W8A16": 8.5,
    "W8A8": 8.5,
    "FP8": 8.5,
    "FP8Dynamic": 8.5,
    "NVFP4": 4.5,
    "MXFP4": 4.5,
}
# llmQuantize's method ModelFree, planned as its own algorithm: no calibration text runs through a model.
MODEL_FREE: Final = "ModelFree"
# Algorithms that keep a Hessian (in x in, float32) per Linear of the layer being calibrated.
HESSIAN_ALGORITHMS: Final = ("GPTQ", "SparseGPT")

Kind = Literal["llmQuantize", "llmSparsify"]


class HeaderInvalid(ValueError):
    """Bytes that are not a safetensors header."""


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES.get(self.dtype, 4)


def header_length(prefix: bytes) -> int:
    """The JSON header's length from a file's first 8 bytes."""
    if len(prefix) < HEADER_LENGTH_BYTES:
        raise HeaderInvalid(f"a safetensors file starts with {HEADER_LENGTH_BYTES} bytes of header length")
    n = int.from_bytes(prefix[:HEADER_LENGTH_BYTES], "little")
    if not 2 <= n <= MAX_HEADER_BYTES:
        raise HeaderInvalid(f"a safetensors header of {n} bytes (at most {MAX_HEADER_BYTES})")
    return n


def header_tensors(header: bytes) -> dict[str, Tensor]:
    """Every tensor a safetensors header names, with its dtype and shape."""
    try:
        doc = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderInvalid(f"a safetensors header is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HeaderInvalid("a safetensors header is not a JSON object")
    out: dict[str, Tensor] = {}
    for name, entry in doc.items():
        if name == "__metadata__":
            continue
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("shape"), list)
            and all(isinstance(x, int) and x >= 0 for x in entry["shape"])
            and isinstance(entry.get("dtype"), str)
        ):
            raise HeaderInvalid(f"tensor {name!r} of a safetensors header has no dtype and shape")
        out[name] = Tensor(entry["dtype"], tuple(entry["shape"]))
    return out


@dataclass(frozen=True)
class Workload:
    """What the step does: its kind, scheme and algorithm, the calibration text, and where it runs."""

    kind: Kind
    algorithm: str  # GPTQ, AWQ, RTN, ModelFree (llmQuantize), SparseGPT, Wanda (llmSparsify)
    scheme: str | None  # llmQuantize's; None for llmSparsify
    backend: str  # LLMCompressor or ModelOpt
    samples: int
    sequence_length: int
    gpus: int


@dataclass(frozen=True)
class Plan:
    """The pod's peaks, in bytes, and what makes them up."""

    host: int
    gpu: int  # per GPU; 0 without one
    scratch: int
    parts: dict[str, int]  # the host peak's terms, for the report and the messages
    knob: str  # what lowers the host peak most

    def describe(self) -> str:
        gpu = f", GPU memory {gib(self.gpu)} per GPU" if self.gpu else ""
        return f"host memory {gib(self.host)}{gpu}, scratch disk {gib(self.scratch)}"

    def to_wire(self) -> dict[str, Any]:
        return {"hostBytes": self.host, "gpuBytes": self.gpu, "scratchBytes": self.scratch, "knob": self.knob}


def gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# What the operator adds to a plan's figure where spec.resources leaves memory or ephemeralStorage
# unset: the plan aims within 25% of the measured peak (benchmarks/results/llm_memory.md).
HEADROOM: Final = 0.25


def with_headroom(n: int) -> str:
    """A plan's figure in bytes plus HEADROOM, as a Kubernetes quantity in whole MiB."""
    return f"{math.ceil(n * (1 + HEADROOM) / MiB)}Mi"


def shortfalls(memory: str | None, ephemeral_storage: str | None, host: int, scratch: int, knob: str) -> list[str]:
    """What of spec.resources cannot hold a plan of `host` memory and `scratch` disk, each naming
    the numbers and what to change; one message for the worker's refusal and the operator's. An
    unset field is filled in from the plan, so it never falls short."""
    short = []
    if memory is not None and quantity_bytes(memory) < host:
        short.append(
            f"spec.resources.memory {memory} is less than the {gib(host)} of host memory planned; raise it, "
            f"or lower the need with {knob}"
        )
    if ephemeral_storage is not None and quantity_bytes(ephemeral_storage) < scratch:
        short.append(
            f"spec.resources.ephemeralStorage {ephemeral_storage} is less than the {gib(scratch)} of scratch disk "
            "planned (the model, its compressed copy and caches)"
        )
    return short


def _int(config: dict[str, Any], *names: str, default: int = 0) -> int:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and value > 0:
            return value
    text = config.get("text_config")  # multimodal wrappers keep the LM's sizes there
    return _int(text, *names, default=default) if isinstance(text, dict) else default


def _layer_of(name: str) -> str | None:
    """`model.layers.3` of `model.layers.3.mlp.up_proj.weight`: the decoder layer a tensor is in."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "h", "blocks") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return None


def plan(config: dict[str, Any], tensors: dict[str, Tensor], work: Workload) -> Plan:
    """The pod's peak host memory, GPU memory and scratch disk for one LLM step on this model.

    Host: the runtime, the weights as loaded (float32 where Model Optimizer runs on a CPU, else
    their stored dtype: llm-compressor keeps the model offloaded in host memory even with a GPU),
    the sequential pipeline's cache of every calibration sample's hidden states (inputs and outputs
    of the layer being calibrated), the layer's float32 working copy and Hessians, and the
    published copy saved from memory. GPU: one decoder layer at a time with its Hessians and one
    sample's activations for llm-compressor; the whole model for Model Optimizer."""

    hidden = _int(config, "hidden_size", "n_embd", "d_model")
    intermediate = _int(config, "intermediate_size", "moe_intermediate_size", "ffn_dim", default=4 * hidden)
    heads = _int(config, "num_attention_heads", "n_head", default=1)
    vocab = _int(config, "vocab_size", default=32_000)
    weights = sum(t.nbytes for t in tensors.values())
    params = sum(math.prod(t.shape) for t in tensors.values())
    layers: dict[str, list[Tensor]] = {}
    for name, tensor in tensors.items():
        layer = _layer_of(name)
        if layer is not None:
            layers.setdefault(layer, []).append(tensor)
    largest = max(layers.values(), key=lambda ts: sum(math.prod(t.shape) for t in ts), default=[])
    layer_params = sum(math.prod(t.shape) for t in largest)
    hessians = (
        sum(t.shape[1] ** 2 * 4 for t in largest if len(t.shape) == 2)
        if work.algorithm in HESSIAN_ALGORITHMS
        else sum(t.shape[1] * 4 for t in largest if len(t.shape) == 2)  # per-channel statistics
    )
    on_gpu = work.gpus > 0
    tokens = work.samples * work.sequence_length
    # Hidden states are in the weights' dtype (llm-compressor loads dtype "auto").
    element = max((DTYPE_BYTES.get(t.dtype, 4) for t in largest), default=2)
    # One sample through one layer: the MLP's intermediate and the attention scores, float32.
    sample_activations = work.sequence_length * (4 * hidden + 3 * intermediate) * 4 + (
        heads * work.sequence_length**2 * 4
    )
    published = int(params * SCHEME_BITS.get(work.scheme or "", 16) / 8)
    if work.algorithm == MODEL_FREE:
        # model_free_ptq rounds one safetensors file at a time; the weights are counted whole because
        # the step loads the model to score it (perplexity) wherever transformers has its class.
        parts = {"runtime": RUNTIME_HOST, "weights": weights, "published": published}
        gpu = RUNTIME_GPU + max((t.nbytes for t in tensors.values()), default=0) * 4 if on_gpu else 0
    elif work.backend == "ModelOpt":
        # The whole model on one device (float32 on a CPU), changed in place. Model Optimizer's
        # SparseGPT collects every Linear's Hessian in one forward loop before it prunes any.
        all_hessians = (
            sum(t.shape[1] ** 2 * 4 for n, t in tensors.items() if _layer_of(n) and len(t.shape) == 2)
            if work.algorithm in HESSIAN_ALGORITHMS
            else 0
        )
        on_device = {
            "weights": weights if on_gpu else params * 4,
            "hessians": all_hessians,
            "activations": sample_activations + work.sequence_length * vocab * 4,  # and the logits
        }
        # With a GPU the host holds the weights while they load, and the exported copy.
        parts = {"runtime": RUNTIME_HOST, **(on_device if not on_gpu else {"weights": weights}), "published": published}
        gpu = RUNTIME_GPU + sum(on_device.values()) + published if on_gpu else 0
    else:
        parts = {
            "runtime": RUNTIME_HOST,
            "weights": weights,
            # The sequential pipeline keeps every sample's hidden states, in and out of the layer,
            # in host memory (its intermediates cache offloads them there, also with a GPU).
            "calibrationCache": 2 * tokens * hidden * element,
            "layer": layer_params * 4 + hessians,
            "activations": 0 if on_gpu else sample_activations,
            "published": published,
        }
        gpu = RUNTIME_GPU + layer_params * 4 + hessians + sample_activations if on_gpu else 0
    host = sum(parts.values())
    scratch = weights + published + SCRATCH_SLACK
    return Plan(host, gpu, scratch, parts, _knob(parts, on_gpu))


def _knob(parts: dict[str, int], on_gpu: bool) -> str:
    """What lowers the host peak most, in the manifest's words."""
    biggest = max((k for k in parts if k != "runtime"), key=lambda k: parts[k])
    if biggest == "calibrationCache":
        return (
            "fewer calibration samples (spec.data.calibration.samples) or shorter sequences "
            "(spec.data.calibration.maxLength)"
        )
    if biggest == "weights" and not on_gpu:
        return "a GPU (spec.resources.gpus), or more memory (spec.resources.memory)"
    return "more memory (spec.resources.memory)"


_SUFFIXES: Final = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "Pi": 1 << 50,
    "Ei": 1 << 60,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "m": 10**-3,
}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity (16Gi, 512M, 1e9) in bytes; the API's pattern has checked its form."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * _SUFFIXES[suffix])
    return int(float(quantity))
