"""llmQuantize with backend ModelOpt: NVIDIA Model Optimizer quantizes the model
(`mtq.quantize` with one of its preset configs and a calibration loop) and writes its unified HF
checkpoint (`export_hf_checkpoint`): safetensors with each Linear's packed weight and scales,
hf_quant_config.json and config.json's quantization_config, which TensorRT-LLM's and vLLM's
ModelOpt loaders read.

No runtime on a CPU loads that checkpoint (transformers has no ModelOpt quantizer: it would drop
the scales and value-cast the packed weights), so the perplexity gate scores ModelOpt's own
simulated quantization in memory, the model the checkpoint is exported from, and the exported
folder is checked tensor by tensor against what those loaders read.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from kompression.api.v1alpha1 import LLMQuantizeStep, LLMSparsifyStep, Metrics
from kompression.worker.errors import RuntimeMissing, StepInvalid
from kompression.worker.formats import hf_folder
from kompression.worker.formats.hf_folder import MODEL_URI
from kompression.worker.llm import sparsity
from kompression.worker.llm.perplexity import perplexity
from kompression.worker.measure.graphs import api_device
from kompression.worker.model import CheckpointFolder

# Our scheme -> (ModelOpt's preset config, the quant_algo its export writes, the algorithm's name).
PRESETS = {
    "W4A16": ("INT4_AWQ_CFG", "W4A16_AWQ", "AWQ"),
    "FP8": ("FP8_DEFAULT_CFG", "FP8", "RTN"),
    "FP8Dynamic": ("FP8_PER_CHANNEL_PER_TOKEN_CFG", "FP8_PER_CHANNEL_PER_TOKEN", "RTN"),
    "NVFP4": ("NVFP4_DEFAULT_CFG", "NVFP4", "RTN"),
}
# What each quantized Linear holds in the checkpoint (tensor suffix -> safetensors dtype, None for
# any float), as the loaders read it: 4-bit weights come packed two to a byte. (AWQ's pre_quant_scale
# is folded into the norm before q/k/v and gate/up, so only some Linears keep one.)
TENSORS: dict[str, dict[str, str | None]] = {
    "W4A16": {"weight": "U8", "weight_scale": None},
    "FP8": {"weight": "F8_E4M3", "weight_scale": None, "input_scale": None},
    "FP8Dynamic": {"weight": "F8_E4M3", "weight_scale": None},
    "NVFP4": {"weight": "U8", "weight_scale": "F8_E4M3", "weight_scale_2": None, "input_scale": None},
}
PACKED = ("W4A16", "NVFP4")
ALWAYS_IGNORED = ("lm_head",)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def version() -> str:
    return importlib.metadata.version("nvidia-modelopt")


def _sparsity() -> Any:
    try:
        # Model Optimizer is optional (backend ModelOpt only) and slow to import.
        import modelopt.torch.sparsity as mts
    except ImportError as exc:
        raise RuntimeMissing(
            f"llmSparsify backend ModelOpt needs NVIDIA Model Optimizer (nvidia-modelopt), which this worker "
            f"cannot import ({exc}); use the worker-llm image, or backend LLMCompressor"
        ) from None
    return mts


def _modelopt() -> tuple[Any, Any]:
    try:
        # Model Optimizer is optional (backend ModelOpt only) and slow to import.
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint
    except ImportError as exc:
        raise RuntimeMissing(
            f"llmQuantize backend ModelOpt needs NVIDIA Model Optimizer (nvidia-modelopt), which this worker "
            f"cannot import ({exc}); use the worker-llm image, or backend LLMCompressor"
        ) from None
    return mtq, export_hf_checkpoint


def config(cfg: LLMQuantizeStep, mtq: Any) -> dict[str, Any]:
    """ModelOpt's preset for the scheme, with the group size and the excluded modules applied."""
    result: dict[str, Any] = copy.deepcopy(getattr(mtq, PRESETS[cfg.scheme][0]))
    entries = result["quant_cfg"]
    if cfg.scheme == "W4A16":
        for entry in entries:
            if entry.get("quantizer_name") == "*weight_quantizer":
                entry["cfg"]["block_sizes"][-1] = cfg.group_size_or_default
    entries.extend({"quantizer_name": f"{name}.*", "enable": False} for name in cfg.excludeLayers)
    return result


def describe(cfg: LLMQuantizeStep) -> dict[str, Any]:
    """What report.json records about the method."""
    preset, quant_algo, algorithm = PRESETS[cfg.scheme]
    return {
        "scheme": cfg.scheme,
        "algorithm": algorithm,
        "backend": "modelopt",
        "modelopt": version(),
        "modeloptConfig": preset,
        "format": f"ModelOpt unified HF checkpoint, quant_algo {quant_algo}",
        "groupSize": cfg.group_size_or_default if cfg.scheme == "W4A16" else None,
        "ignored": [*ALWAYS_IGNORED, *cfg.excludeLayers],
        "perplexityOf": "ModelOpt's simulated quantization in memory (no CPU runtime loads the checkpoint)",
    }


def _export_dtype(model_dir: Path) -> torch.dtype:
    """The original's dtype, which the layers ModelOpt leaves unquantized keep."""
    config_json = json.loads((model_dir / "config.json").read_text())
    return DTYPES.get(str(config_json.get("dtype") or config_json.get("torch_dtype")), torch.bfloat16)


def linear_shapes(model: torch.nn.Module, cfg: LLMQuantizeStep) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear the scheme quantizes."""
    excluded = [*ALWAYS_IGNORED, *cfg.excludeLayers]
    return {
        name: (module.out_features, module.in_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not sparsity.named_by(name, excluded)
    }


def _load(source: CheckpointFolder, device: str) -> Any:
    with hf_folder.loading(MODEL_URI, "a causal LM"):
        model: Any = AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=torch.float32 if device == "cpu" else "auto",
            **hf_folder.load_options(source, AutoModelForCausalLM),
        )
    return model.to(device).eval()


def _forward_loop(calibration: list[list[int]] | None, device: str) -> Callable[[torch.nn.Module], None]:
    def loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for ids in calibration or []:
                m(torch.tensor([ids], device=device))

    return loop


def sparsify(
    source: CheckpointFolder, out: Path, cfg: LLMSparsifyStep, *, calibration: list[list[int]], device: str
) -> None:
    """Prune to 2:4 with Model Optimizer's SparseGPT (Hessians from the calibration text, on the
    step's device) and save the pruned model, masks folded into the weights, as a transformers
    folder in the original's dtype: the input of TensorRT-LLM's engine build with weight sparsity,
    and of a following llmQuantize step with backend ModelOpt."""
    mts = _sparsity()
    model = _load(source, device)
    # Model Optimizer's rules: every Linear but lm_head and the excluded modules.
    rules: dict[str, Any] = {"*": {}, "*lm_head*": None, **{f"*{name}": None for name in cfg.excludeLayers}}
    search = {"forward_loop": _forward_loop(calibration, device), "device": device, "verbose": False}
    try:
        model = mts.sparsify(model, [("sparsegpt", {"nn.Linear": rules})], config=search)
    except (ValueError, AssertionError) as exc:
        raise StepInvalid(f"llmSparsify SparseGPT with backend ModelOpt cannot apply to this model: {exc}") from None
    model = mts.export(model)
    model.to(_export_dtype(source.path)).save_pretrained(out)
    hf_folder.tokenizer(source.path, MODEL_URI).save_pretrained(out)


def quantize(
    source: CheckpointFolder,
    out: Path,
    cfg: LLMQuantizeStep,
    *,
    calibration: list[list[int]] | None,
    evaluation: list[list[int]] | None,
    device: str,
) -> Metrics:
    """Quantize with ModelOpt, export the unified HF checkpoint to `out`, check it; returns the
    figures measured in memory: the simulated-quantization perplexity on the evaluation text (None
    without one) and the original's parameter count (quantization removes none). The pipeline
    adds the exported folder's size."""

    mtq, export_hf_checkpoint = _modelopt()
    model = _load(source, device)
    shapes = linear_shapes(model, cfg)
    parameters = sum(p.numel() for p in model.parameters())
    try:
        model = mtq.quantize(model, config(cfg, mtq), _forward_loop(calibration, device) if calibration else None)
    except (ValueError, AssertionError) as exc:  # e.g. a group size that does not divide a layer's input size
        raise StepInvalid(f"llmQuantize {cfg.scheme} with backend ModelOpt cannot apply to this model: {exc}") from None
    value = None if evaluation is None else round(perplexity(model, evaluation, device).value, 4)
    with torch.inference_mode():
        export_hf_checkpoint(model, dtype=_export_dtype(source.path), export_dir=out)
    hf_folder.tokenizer(source.path, MODEL_URI).save_pretrained(out)
    check_checkpoint(out, cfg, shapes, sparse=source.sparsified)
    return Metrics(parameters=parameters, perplexity=value, device=api_device(device), provider="PyTorch")


def check_checkpoint(
    folder: Path, cfg: LLMQuantizeStep, shapes: dict[str, tuple[int, int]], *, sparse: LLMSparsifyStep | None = None
) -> None:
    """The folder is the unified HF checkpoint TensorRT-LLM and vLLM read for this scheme: the
    quant_algo in hf_quant_config.json and config.json, and every quantized Linear's tensors with the
    dtypes and packed sizes their ModelOpt loaders allocate; after a 2:4 llmSparsify (`sparse`),
    every quantized Linear's published weight keeps 2 zeros in each group of 4. A mismatch is a
    StepInvalid: nothing that a server cannot load, or that lost its pattern, is published."""

    quant_algo = PRESETS[cfg.scheme][1]
    problems: list[str] = []
    hf_quant = json.loads((folder / "hf_quant_config.json").read_text())
    if hf_quant.get("producer", {}).get("name") != "modelopt":
        problems.append("hf_quant_config.json names no modelopt producer")
    if hf_quant.get("quantization", {}).get("quant_algo") != quant_algo:
        problems.append(f"hf_quant_config.json's quant_algo is not {quant_algo}")
    embedded = json.loads((folder / "config.json").read_text()).get("quantization_config", {})
    if embedded.get("quant_method") != "modelopt" or embedded.get("quant_algo") != quant_algo:
        problems.append(f"config.json's quantization_config is not modelopt {quant_algo}")
    tensors: dict[str, tuple[str, list[int]]] = {}  # name -> (safetensors dtype, shape)
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                piece = f.get_slice(key)
                tensors[key] = (piece.get_dtype(), piece.get_shape())
    for name, (rows, columns) in sorted(shapes.items()):
        for suffix, dtype in TENSORS[cfg.scheme].items():
            tensor = tensors.get(f"{name}.{suffix}")
            if tensor is None:
                problems.append(f"{name}.{suffix} is missing")
            elif dtype is not None and tensor[0] != dtype:
                problems.append(f"{name}.{suffix} is {tensor[0]}, not {dtype}")
        weight = tensors.get(f"{name}.weight")
        packed = rows * columns // (2 if cfg.scheme in PACKED else 1)
        if weight is not None and math.prod(weight[1]) != packed:
            problems.append(f"{name}.weight holds {math.prod(weight[1])} values, not {packed}")
    if sparse is not None:
        pruned = [f"{name}.weight" for name in shapes if not sparsity.named_by(name, sparse.excludeLayers)]
        conforming = {
            name: sparsity.conforming(weight, 2, 4).float().mean().item()
            for name, weight in sparsity.stored_weights(folder, pruned.__contains__)
        }
        problems += [f"{name} keeps 2:4 in only {f:.1%} of its groups of 4" for name, f in conforming.items() if f < 1]
    if problems:
        raise StepInvalid(
            f"backend ModelOpt exported a checkpoint TensorRT-LLM could not load as {quant_algo}: "
            + "; ".join(problems[:5])
        )
