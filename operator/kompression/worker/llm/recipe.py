"""llm-compressor modifiers built from the typed llmQuantize options (the quantization itself is
llm-compressor's: GPTQ, SmoothQuant and round-to-nearest are never reimplemented here)."""

from __future__ import annotations

from typing import Any

from compressed_tensors.quantization import preset_name_to_scheme
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

from kompression.api.v1alpha1 import LLM_WEIGHT_ONLY_SCHEMES, LLMQuantizeStep

# compressed-tensors' preset names for each scheme.
PRESETS = {
    "W4A16": "W4A16",
    "W8A16": "W8A16",
    "W8A8": "W8A8",
    "FP8Dynamic": "FP8_DYNAMIC",
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


def modifiers(cfg: LLMQuantizeStep) -> list[Any]:
    """The oneshot recipe: [SmoothQuant for W8A8], then GPTQ or round-to-nearest."""

    groups = {"group_0": scheme(cfg)}
    ignore = ignore_list(cfg)
    recipe: list[Any] = []
    if cfg.scheme == "W8A8":
        recipe.append(SmoothQuantModifier(smoothing_strength=cfg.smoothing_strength_or_default))
    uses_gptq = cfg.scheme in ("W4A16", "W8A16", "W8A8") and cfg.algorithm_or_default == "GPTQ"
    modifier = GPTQModifier if uses_gptq else QuantizationModifier
    recipe.append(modifier(config_groups=groups, ignore=ignore))
    return recipe


def describe(cfg: LLMQuantizeStep) -> dict[str, Any]:
    """What report.json records about the method."""
    s = scheme(cfg)
    weights = s.weights
    return {
        "scheme": cfg.scheme,
        "algorithm": (
            ("SmoothQuant+" if cfg.scheme == "W8A8" else "") + cfg.algorithm_or_default
            if cfg.scheme in ("W4A16", "W8A16", "W8A8")
            else "RTN"
        ),
        "weights": f"{weights.type}{weights.num_bits} {weights.strategy}",
        "groupSize": weights.group_size,
        "symmetric": weights.symmetric,
        "activations": None
        if s.input_activations is None
        else f"{s.input_activations.type}{s.input_activations.num_bits} "
        f"{'dynamic' if s.input_activations.dynamic else 'static'} {s.input_activations.strategy}",
        "ignored": ignore_list(cfg),
    }
