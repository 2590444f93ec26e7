"""llm-compressor modifiers built from the typed llmQuantize options (the quantization itself is
llm-compressor's: GPTQ, AWQ, AutoRound, SmoothQuant and round-to-nearest are never reimplemented here)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from compressed_tensors.quantization import QuantizationArgs, preset_name_to_scheme
from llmcompressor.modifiers.autoround import AutoRoundModifier
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform.awq import AWQModifier
from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
from llmcompressor.pipelines.cache import IntermediatesCache

from kompression.api.v1alpha1 import LLM_WEIGHT_ONLY_SCHEMES, LLMQuantizeStep
from kompression.worker.llm import moe

# compressed-tensors' preset names for each scheme.
PRESETS = {
    "W4A16": "W4A16",
    "W8A16": "W8A16",
    "W8A8": "W8A8",
    "FP8Dynamic": "FP8_DYNAMIC",
    "FP8": "FP8",
    "NVFP4": "NVFP4",
    "MXFP4": "MXFP4",
}
ALWAYS_IGNORED = ("lm_head",)


def ignore_list(cfg: LLMQuantizeStep) -> list[str]:
    return [*ALWAYS_IGNORED, *(x for x in cfg.excludeLayers if x not in ALWAYS_IGNORED)]


def scheme(cfg: LLMQuantizeStep) -> Any:
    """The QuantizationScheme for Linear layers: the preset, with the weight-only options applied."""

    result = preset_name_to_scheme(PRESETS[cfg.scheme], ["Linear"])
    if cfg.scheme in LLM_WEIGHT_ONLY_SCHEMES:
        result.weights.group_size = cfg.group_size_or_default
        result.weights.symmetric = cfg.symmetric_or_default
    return result


def kv_cache_scheme(cfg: LLMQuantizeStep) -> QuantizationArgs | None:
    """FP8 keys and values with one static scale per layer and tensor, observed on calibration text:
    the form vLLM loads as k_scale and v_scale."""
    if cfg.kvCache is None:
        return None
    return QuantizationArgs(num_bits=8, type="float", strategy="tensor", dynamic=False, symmetric=True)


def algorithm(cfg: LLMQuantizeStep) -> str:
    """How the weights are rounded, as report.json names it."""
    if cfg.scheme not in ("W4A16", "W8A16", "W8A8"):
        return "RTN"
    return ("SmoothQuant+" if cfg.scheme == "W8A8" else "") + cfg.algorithm_or_default


def modifiers(cfg: LLMQuantizeStep, model: torch.nn.Module) -> list[Any]:
    """The oneshot recipe: [SmoothQuant for W8A8 | AWQ's channel scaling], then GPTQ, AutoRound or
    round-to-nearest, which also observes the static activation and KV cache scales. The model's
    MoE gates are never quantized (moe.py)."""

    groups = {"group_0": scheme(cfg)}
    ignore = [*ignore_list(cfg), *moe.gates(model)]
    recipe: list[Any] = []
    if cfg.scheme == "W8A8":
        recipe.append(SmoothQuantModifier(smoothing_strength=cfg.smoothing_strength_or_default))
    rounding = algorithm(cfg).removeprefix("SmoothQuant+")
    if rounding == "AWQ":
        # AWQ only rescales channels (it reads the quantization scheme the next modifier attaches);
        # the rounding is QuantizationModifier's, as in llm-compressor's own AWQ recipes.
        recipe.append(AWQModifier())
    if rounding == "AutoRound":
        recipe.append(
            AutoRoundModifier(
                config_groups=groups,
                ignore=ignore,
                kv_cache_scheme=kv_cache_scheme(cfg),
                iters=cfg.iterations_or_default,
                lr=cfg.learningRate,
                # Inductor compiles the tuning loop for the host's C++ compiler without an accelerator:
                # minutes per block shape that a CPU run never earns back (measured on the tiny Llama).
                enable_torch_compile=torch.accelerator.is_available(),
            )
        )
        return recipe
    modifier = GPTQModifier if rounding == "GPTQ" else QuantizationModifier
    recipe.append(modifier(config_groups=groups, ignore=ignore, kv_cache_scheme=kv_cache_scheme(cfg)))
    return recipe


@contextmanager
def host_only_safe() -> Iterator[None]:
    """Around oneshot: on a host without an accelerator, AWQ's cache pinning (page-locked memory,
    which only speeds copies to a GPU; llm-compressor PR #2813) raises "Found no NVIDIA driver",
    so there it is skipped; with an accelerator nothing changes."""
    if torch.accelerator.is_available():
        yield
        return
    pin = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = pin


def _args(args: Any) -> str:
    return f"{args.type}{args.num_bits} {'dynamic' if args.dynamic else 'static'} {args.strategy}"


def describe(cfg: LLMQuantizeStep) -> dict[str, Any]:
    """What report.json records about the method."""
    s = scheme(cfg)
    weights = s.weights
    kv = kv_cache_scheme(cfg)
    return {
        "scheme": cfg.scheme,
        "algorithm": algorithm(cfg),
        "weights": f"{weights.type}{weights.num_bits} {weights.strategy}",
        "groupSize": weights.group_size,
        "symmetric": weights.symmetric,
        "activations": None if s.input_activations is None else _args(s.input_activations),
        "kvCache": None if kv is None else _args(kv),
        "ignored": ignore_list(cfg),
        **(
            {"iterations": cfg.iterations_or_default, "learningRate": cfg.learningRate}
            if cfg.algorithm_or_default == "AutoRound"
            else {}
        ),
    }
