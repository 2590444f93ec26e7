"""The LLM techniques, llmQuantize and llmSparsify, and the capability facts of their backends
(llm-compressor, NVIDIA Model Optimizer): which schemes each takes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import Field

from kompression.api.rules import Rule
from kompression.api.v1alpha1.base import ApiModel, ModulePattern
from kompression.api.v1alpha1.needs import ALWAYS, AllOf, AnyOf, Given, Requires, TechniqueConfig, When, words

LLMScheme = Literal["W4A16", "W8A16", "W8A8", "FP8Dynamic", "FP8", "NVFP4", "MXFP4"]
LLMAlgorithm = Literal["GPTQ", "AWQ", "RTN", "AutoRound"]
LLMKVCache = Literal["FP8"]
LLM_WEIGHT_ONLY_SCHEMES = ("W4A16", "W8A16")
LLM_ALGORITHM_SCHEMES = ("W4A16", "W8A16", "W8A8")
# AWQ scales weight channels by activation saliency before rounding weights alone: weight-only schemes.
LLM_AWQ_SCHEMES = LLM_WEIGHT_ONLY_SCHEMES
# AutoRound tunes each weight's rounding and each group's clipping by signed gradient descent on a decoder
# block's output: llm-compressor's AutoRoundModifier writes it as compressed-tensors for weight-only ints.
LLM_AUTOROUND_SCHEMES = LLM_WEIGHT_ONLY_SCHEMES
# auto-round's defaults (AutoRoundModifier.iters; the learning rate it derives when none is given).
DEFAULT_AUTOROUND_ITERATIONS = 200
# Schemes whose activation scales are learned from calibration text (static, or NVFP4's global scale).
LLM_CALIBRATED_SCHEMES = ("W8A8", "FP8", "NVFP4")
# GPTQ corrects rounding with second-order statistics, AWQ scales by activation saliency, AutoRound tunes
# the rounding on block outputs: all learn from calibration text; RTN rounds to nearest.
LLM_CALIBRATED_ALGORITHMS = ("GPTQ", "AWQ", "AutoRound")
# vLLM serves a calibrated FP8 KV cache (k_scale/v_scale per layer) beside int and FP8 linear layers; the
# 4-bit float formats are left out, since no consumer here can check their pairing.
LLM_KV_CACHE_SCHEMES = ("W4A16", "W8A16", "W8A8", "FP8Dynamic", "FP8")
LLM_GPU_ONLY_SCHEMES = ("NVFP4", "MXFP4")
DEFAULT_LLM_ALGORITHM: LLMAlgorithm = "GPTQ"
DEFAULT_GROUP_SIZE = 128
DEFAULT_SYMMETRIC = True
# AWQ's scale search is made for scales with zero points (llm-compressor's AWQ examples use W4A16_ASYM).
DEFAULT_AWQ_SYMMETRIC = False
DEFAULT_SMOOTHING_STRENGTH = 0.8
LLMBackend = Literal["LLMCompressor", "ModelOpt"]
DEFAULT_LLM_BACKEND: LLMBackend = "LLMCompressor"
# The schemes NVIDIA Model Optimizer quantizes and exports as a unified HF checkpoint (TensorRT-LLM
# reads them from hf_quant_config.json): W4A16 as INT4 AWQ, FP8 as FP8 per tensor, FP8Dynamic as FP8
# per channel with dynamic per-token activations, NVFP4. ("FP8" joins LLMScheme with static FP8.)
MODELOPT_SCHEMES = ("W4A16", "FP8", "FP8Dynamic", "NVFP4")
# Oneshot loads the model with its transformers class and runs the recipe over it; ModelFree is
# llm-compressor's model_free_ptq, which reads each safetensors tensor, rounds it to nearest and writes
# it back, with no model class: for a folder whose architecture transformers does not have.
LLMQuantizeMethod = Literal["Oneshot", "ModelFree"]
DEFAULT_LLM_METHOD: LLMQuantizeMethod = "Oneshot"
# What model_free_ptq can do without a model or data: round weights to nearest (int groups, FP8 per
# channel) and leave the activations dynamic. W8A8's SmoothQuant, FP8's static activation scales and
# NVFP4's global scales are learned from calibration text run through the model.
LLM_MODEL_FREE_SCHEMES = ("W4A16", "W8A16", "FP8Dynamic")


def _autoround_only(option: str) -> Rule:
    """An AutoRound option refused unless the step tunes with AutoRound on a scheme it serves."""
    return Rule(
        cel=f"!has(self.{option}) || (has(self.algorithm) && self.algorithm == 'AutoRound' && self.scheme in "
        + str(list(LLM_AUTOROUND_SCHEMES))
        + ")",
        message=f"`{option}` is only used by algorithm AutoRound (schemes W4A16 and W8A16); set algorithm AutoRound "
        "or remove it",
        field_path=f".{option}",
    )


# Both LLM steps name excluded modules; Model Optimizer matches them by full name only.
MODELOPT_NAMES_IN_FULL = Rule(
    cel="!has(self.backend) || self.backend != 'ModelOpt' || !has(self.excludeLayers) || "
    "self.excludeLayers.all(x, !x.startsWith('re:'))",
    message="backend ModelOpt names excluded modules by their full name (e.g. model.layers.0.mlp.down_proj), "
    "not by `re:` regular expressions",
    field_path=".excludeLayers",
)


class LLMQuantizeStep(TechniqueConfig):
    """Quantize a HuggingFace causal language model with llm-compressor's oneshot, saved as a
    compressed-tensors checkpoint that vLLM, SGLang and transformers load. Runs in the worker-llm image."""

    scheme: LLMScheme = Field(
        description=(
            "What is quantized and to what. W4A16 and W8A16 store int4 or int8 weights in groups and "
            "keep 16-bit activations; W8A8 quantizes weights (per channel) and activations (per token, "
            "dynamic) to int8 after SmoothQuant moves activation outliers into the weights; FP8Dynamic "
            "stores FP8 weights per channel with dynamic per-token FP8 activations (no calibration); FP8 "
            "stores FP8 weights per tensor with static per-tensor FP8 activation scales learned from "
            "data.calibration; NVFP4 and MXFP4 are 4-bit floating-point formats that need an NVIDIA GPU at run time."
        )
    )
    algorithm: LLMAlgorithm | None = Field(
        None,
        description=(
            "W4A16, W8A16 and W8A8 only: GPTQ corrects each layer's rounding error with second-order "
            "information from calibration data; AWQ (W4A16 and W8A16) scales the weight channels that "
            "calibration activations show to matter most before rounding to nearest; AutoRound (W4A16 and "
            "W8A16) learns whether each weight rounds up or down, and each group's clipping, by signed "
            "gradient descent on every decoder block's output over the calibration data; RTN rounds to "
            f"nearest and needs no data. Unset means {DEFAULT_LLM_ALGORITHM}."
        ),
    )
    groupSize: int | None = Field(
        None,
        ge=8,
        le=4096,
        description=(
            "W4A16 and W8A16 only: weights sharing one scale along the input dimension; it must divide "
            f"every quantized layer's input size. Unset means {DEFAULT_GROUP_SIZE}."
        ),
    )
    symmetric: bool | None = Field(
        None,
        description=(
            "W4A16 and W8A16 only: symmetric scales (true) or scales plus zero points (false); unset means "
            f"{str(DEFAULT_AWQ_SYMMETRIC).lower()} with algorithm AWQ (whose scale search expects zero "
            f"points) and {str(DEFAULT_SYMMETRIC).lower()} otherwise."
        ),
    )
    smoothingStrength: float | None = Field(
        None,
        gt=0,
        lt=1,
        description=(
            "W8A8 only: SmoothQuant's migration strength, how much of the activations' range moves into "
            f"the weights; unset means {DEFAULT_SMOOTHING_STRENGTH}."
        ),
    )
    iterations: int | None = Field(
        None,
        ge=1,
        le=10000,
        description=(
            "algorithm AutoRound only: tuning steps per decoder block; more steps can round better and take "
            f"proportionally longer. Unset means {DEFAULT_AUTOROUND_ITERATIONS} (auto-round's default)."
        ),
    )
    learningRate: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "algorithm AutoRound only: the signed gradient descent's step size for the rounding offsets "
            "and clipping. Unset means auto-round's own choice, 1 / iterations."
        ),
    )
    kvCache: LLMKVCache | None = Field(
        None,
        description=(
            "Store the attention key/value cache in FP8 with static per-tensor scales learned from "
            "data.calibration (vLLM reads them as each layer's k_scale and v_scale); schemes W4A16, W8A16, "
            "W8A8, FP8Dynamic and FP8 only. Unset keeps the cache in the model's dtype."
        ),
    )
    excludeLayers: list[ModulePattern] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Modules to keep in their original precision, by name or as `re:REGEX` (llm-compressor's "
            "ignore syntax), e.g. `re:.*mlp.down_proj`. lm_head is always kept."
        ),
    )
    backend: LLMBackend | None = Field(
        None,
        description=(
            "Which library quantizes and in what format the folder is published. LLMCompressor writes "
            "compressed-tensors (vLLM, SGLang, transformers); ModelOpt (NVIDIA Model Optimizer) writes its "
            "unified HF checkpoint with hf_quant_config.json (TensorRT-LLM, vLLM) and serves schemes "
            f"{', '.join(MODELOPT_SCHEMES)}. Unset means {DEFAULT_LLM_BACKEND}."
        ),
    )

    method: LLMQuantizeMethod | None = Field(
        None,
        description=(
            "How llm-compressor reaches the weights. Oneshot loads the model with its transformers class and "
            "runs every algorithm and scheme. ModelFree (llm-compressor's model_free_ptq) reads the folder's "
            "safetensors tensor by tensor and rounds each weight to nearest, with no model class and no data: "
            "for an architecture transformers does not have yet. It serves schemes "
            f"{', '.join(LLM_MODEL_FREE_SCHEMES)} (algorithm RTN for the integer ones), without kvCache; the "
            "token embedding, the output head and MoE routers stay unquantized. Unless transformers knows the "
            "architecture, the folder cannot be run, so the job measures sizes only and may not name "
            f"data.evaluation or data.tasks. Unset means {DEFAULT_LLM_METHOD}."
        ),
    )

    __needs__ = Requires(
        image="worker-llm",
        tokenizer=ALWAYS,
        calibration=AnyOf(
            (
                Given("kvCache"),
                When("scheme", LLM_CALIBRATED_SCHEMES),
                AllOf(
                    (
                        When("scheme", LLM_WEIGHT_ONLY_SCHEMES),
                        When("algorithm", LLM_CALIBRATED_ALGORITHMS, unset=DEFAULT_LLM_ALGORITHM),
                    )
                ),
            )
        ),
        advice={
            "calibration": "add a .txt or .jsonl text file, or quantize with algorithm RTN, scheme FP8Dynamic "
            "and no kvCache",
            "tokenizer": "give a causal language model's transformers folder (safetensors weights and its tokenizer)",
            "gpu": f"{words(LLM_GPU_ONLY_SCHEMES, 'and')} are GPU-only formats (their kernels and their checkpoints' "
            "consumers run on NVIDIA GPUs): set resources.gpus to at least 1 on a GPU node, or use W4A16 or W8A8 "
            "on a CPU",
        },
        gpu=When("scheme", LLM_GPU_ONLY_SCHEMES),
    )
    __rules__ = (
        Rule(
            cel="!has(self.algorithm) || self.scheme in " + str(list(LLM_ALGORITHM_SCHEMES)),
            message="`algorithm` is only used by schemes W4A16, W8A16 and W8A8; FP8Dynamic, FP8, NVFP4 and MXFP4 "
            "round to nearest, so remove it",
            field_path=".algorithm",
        ),
        Rule(
            cel="!has(self.algorithm) || self.algorithm != 'AWQ' || self.scheme in " + str(list(LLM_AWQ_SCHEMES)),
            message="`algorithm` AWQ is only used by the weight-only schemes W4A16 and W8A16 (it protects salient "
            "weight channels before rounding them); use GPTQ or RTN with W8A8",
            field_path=".algorithm",
        ),
        Rule(
            cel="!has(self.algorithm) || self.algorithm != 'AutoRound' || self.scheme in "
            + str(list(LLM_AUTOROUND_SCHEMES)),
            message="`algorithm` AutoRound is only used by the weight-only schemes W4A16 and W8A16 (it tunes the "
            "rounding of weights alone); use GPTQ or RTN with W8A8",
            field_path=".algorithm",
        ),
        _autoround_only("iterations"),
        _autoround_only("learningRate"),
        Rule(
            cel="!has(self.kvCache) || self.scheme in " + str(list(LLM_KV_CACHE_SCHEMES)),
            message="`kvCache` is only used with schemes W4A16, W8A16, W8A8, FP8Dynamic and FP8, whose "
            "checkpoints vLLM serves with a calibrated FP8 KV cache; remove it for NVFP4 and MXFP4",
            field_path=".kvCache",
        ),
        Rule(
            cel="!has(self.groupSize) || self.scheme in " + str(list(LLM_WEIGHT_ONLY_SCHEMES)),
            message="`groupSize` is only used by schemes W4A16 and W8A16; W8A8 and FP8Dynamic scale per "
            "channel, FP8 per tensor, and NVFP4 and MXFP4 have fixed groups of 16 and 32, so remove it",
            field_path=".groupSize",
        ),
        Rule(
            cel="!has(self.symmetric) || self.scheme in " + str(list(LLM_WEIGHT_ONLY_SCHEMES)),
            message="`symmetric` is only used by schemes W4A16 and W8A16; the other schemes are symmetric, "
            "so remove it",
            field_path=".symmetric",
        ),
        Rule(
            cel="!has(self.smoothingStrength) || self.scheme == 'W8A8'",
            message="`smoothingStrength` is only used by scheme W8A8 (SmoothQuant); remove it",
            field_path=".smoothingStrength",
        ),
        # backend ModelOpt
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || self.scheme in " + str(list(MODELOPT_SCHEMES)),
            message="`backend` ModelOpt serves schemes W4A16 (INT4 AWQ), FP8, FP8Dynamic and NVFP4; use backend "
            "LLMCompressor for the others",
            field_path=".backend",
        ),
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || !has(self.kvCache)",
            message="`kvCache` is written by backend LLMCompressor (compressed-tensors' kv_cache_scheme); with backend "
            "ModelOpt remove it",
            field_path=".kvCache",
        ),
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || !has(self.algorithm)",
            message="backend ModelOpt picks its own algorithm (AWQ for W4A16, round-to-nearest with calibrated "
            "scales for the FP schemes); remove `algorithm`",
            field_path=".algorithm",
        ),
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || !has(self.symmetric) || self.symmetric",
            message="backend ModelOpt's INT4 AWQ checkpoint is symmetric (no zero points); remove `symmetric` "
            "or use backend LLMCompressor",
            field_path=".symmetric",
        ),
        MODELOPT_NAMES_IN_FULL,
        # method ModelFree: no model is run, so nothing can be calibrated
        Rule(
            cel="!has(self.method) || self.method != 'ModelFree' || self.scheme in "
            + str(list(LLM_MODEL_FREE_SCHEMES)),
            message="`method` ModelFree rounds weights to nearest without running the model: it serves schemes "
            "W4A16, W8A16 and FP8Dynamic; W8A8 (SmoothQuant), FP8 (static activation scales) and NVFP4 learn from "
            "calibration text run through the model, and MXFP4 is not offered, so use method Oneshot for them",
            field_path=".method",
        ),
        Rule(
            cel="!has(self.method) || self.method != 'ModelFree' || !(self.scheme in "
            + str(list(LLM_WEIGHT_ONLY_SCHEMES))
            + ") || (has(self.algorithm) && self.algorithm == 'RTN')",
            message="`method` ModelFree rounds to nearest without data: schemes W4A16 and W8A16 take it with "
            "algorithm RTN (GPTQ, their default, AWQ and AutoRound learn from calibration text run through the "
            "model; use method Oneshot for them), FP8Dynamic as it is",
            field_path=".method",
        ),
        Rule(
            cel="!has(self.method) || self.method != 'ModelFree' || !has(self.kvCache)",
            message="`kvCache` scales are learned from calibration text run through the model, which method "
            "ModelFree never runs; remove kvCache or use method Oneshot",
            field_path=".kvCache",
        ),
        Rule(
            cel="!has(self.method) || self.method != 'ModelFree' || !has(self.backend) || "
            "self.backend == 'LLMCompressor'",
            message="`backend` ModelOpt cannot take method ModelFree, which is llm-compressor's model_free_ptq "
            "written as compressed-tensors (backend LLMCompressor); remove one of them",
            field_path=".backend",
        ),
    )

    @property
    def method_or_default(self) -> LLMQuantizeMethod:
        """How llm-compressor reaches the weights."""
        return self.method or DEFAULT_LLM_METHOD

    @property
    def algorithm_or_default(self) -> LLMAlgorithm:
        """The weight rounding of the integer schemes."""
        return self.algorithm or DEFAULT_LLM_ALGORITHM

    @property
    def iterations_or_default(self) -> int:
        """AutoRound's tuning steps per decoder block."""
        return DEFAULT_AUTOROUND_ITERATIONS if self.iterations is None else self.iterations

    @property
    def group_size_or_default(self) -> int:
        """Weights per scale of the weight-only schemes."""
        return DEFAULT_GROUP_SIZE if self.groupSize is None else self.groupSize

    @property
    def symmetric_or_default(self) -> bool:
        """Whether the weight-only schemes' scales are symmetric (no zero points)."""
        if self.symmetric is not None:
            return self.symmetric
        return DEFAULT_AWQ_SYMMETRIC if self.algorithm_or_default == "AWQ" else DEFAULT_SYMMETRIC

    @property
    def smoothing_strength_or_default(self) -> float:
        """SmoothQuant's migration strength for W8A8."""
        return DEFAULT_SMOOTHING_STRENGTH if self.smoothingStrength is None else self.smoothingStrength

    @property
    def backend_or_default(self) -> LLMBackend:
        """The library that quantizes and exports."""
        return self.backend or DEFAULT_LLM_BACKEND


def reads_weights_only(configs: Iterable[ApiModel]) -> bool:
    """Whether every step of a job is an llmQuantize with method ModelFree: the job never builds a
    model class, so its folder may name an architecture transformers does not have."""
    steps = list(configs)
    return bool(steps) and all(isinstance(c, LLMQuantizeStep) and c.method_or_default == "ModelFree" for c in steps)


LLMSparsifyMethod = Literal["SparseGPT", "Wanda"]


class LLMSparsifyStep(TechniqueConfig):
    """Prune a HuggingFace causal language model to 2:4 semi-structured sparsity with llm-compressor's
    oneshot or NVIDIA Model Optimizer (half the weights of every decoder Linear layer become zero). Runs
    in the worker-llm image; an llmQuantize step may follow it."""

    method: LLMSparsifyMethod = Field(
        description=(
            "How the zeros are chosen, from calibration text: SparseGPT prunes each layer with "
            "second-order information and updates the weights it keeps to make up for the pruned ones; "
            "Wanda prunes the weights with the smallest |weight| x input norm and leaves the rest as they are."
        )
    )
    pattern: Literal["2:4"] = Field(
        "2:4",
        description=(
            "The sparsity pattern: 2:4 keeps at most 2 nonzero weights in every group of 4 consecutive "
            "weights along a layer's input dimension, the semi-structured pattern NVIDIA's sparse tensor "
            "cores (Ampere and newer) run."
        ),
    )
    excludeLayers: list[ModulePattern] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Modules to keep dense, by name or as `re:REGEX` (llm-compressor's ignore syntax), e.g. "
            "`re:.*mlp.down_proj`. lm_head is always kept."
        ),
    )
    backend: LLMBackend | None = Field(
        None,
        description=(
            "The library that prunes and writes the folder. Unset or LLMCompressor: llm-compressor, a "
            "dense folder with the zeros in place, which vLLM (it no longer has 2:4 kernels) serves "
            "dense. ModelOpt: NVIDIA Model Optimizer's SparseGPT, for TensorRT-LLM, alone or followed by "
            "an llmQuantize step with backend ModelOpt and scheme FP8 or FP8Dynamic."
        ),
    )

    __rules__ = (
        Rule(
            cel="!has(self.backend) || self.backend != 'ModelOpt' || self.method == 'SparseGPT'",
            message="`backend` ModelOpt prunes with SparseGPT only (Model Optimizer has no Wanda); set method SparseGPT "
            "or backend LLMCompressor",
            field_path=".backend",
        ),
        MODELOPT_NAMES_IN_FULL,
    )

    @property
    def backend_or_default(self) -> LLMBackend:
        """The library that prunes and writes the folder."""
        return self.backend or DEFAULT_LLM_BACKEND

    __needs__ = Requires(
        image="worker-llm",
        tokenizer=ALWAYS,
        calibration=ALWAYS,
        advice={
            "calibration": "add a .txt or .jsonl text file",
            "tokenizer": "give a causal language model's transformers folder (safetensors weights and its tokenizer)",
        },
    )
