"""gpu_check's llm section: a Llama quantized through `kompression run` (the worker-llm path), then
generate tokens/s of the original and of each published folder (compressed-tensors, and ModelOpt's
unified checkpoint), in vLLM when it is importable and in transformers on the GPU.

On a GPU the model is a random-weight Llama of about 1B parameters (speed does not depend on the
weights; the fixture's tokenizer, so its vocabulary is small); on a dry run it is the tiny-llama
fixture. Whatever is missing (llm-compressor for the quantization, vllm, CUDA) is recorded as a
row saying so, never as a figure.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "llm" / "fixtures" / "tiny-llama"
# The interpreter of the worker-llm environment (llm-compressor pins its own torch); by default this one.
LLM_PYTHON_ENV = "KOMPRESSION_LLM_PYTHON"
Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class LlmSizes:
    random_model: bool  # a ~1B random-weight Llama (GPU) instead of the fixture (dry run)
    schemes: tuple[str, ...]  # llmQuantize steps (flow mappings) that need no calibration text
    prompts: int
    prompt_tokens: int
    new_tokens: int
    quantize_timeout_s: int


GPU = LlmSizes(
    True,
    ("{scheme: W4A16, algorithm: RTN}", "{scheme: FP8Dynamic}", "{scheme: FP8Dynamic, backend: ModelOpt}"),
    32,
    128,
    256,
    300,
)
DRY = LlmSizes(False, ("{scheme: W4A16, algorithm: RTN}",), 2, 16, 4, 300)


def random_llama(folder: Path) -> Path:
    """A bf16 Llama with TinyLlama-1.1B's layer shapes and the fixture's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    fixture = json.loads((FIXTURE / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=fixture["vocab_size"],
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=fixture["bos_token_id"],
        eos_token_id=fixture["eos_token_id"],
        pad_token_id=fixture["pad_token_id"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initializing 1B weights on a CPU is slow
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(FIXTURE).save_pretrained(folder)
    return folder


def job_yaml(model: Path, output: Path, step: str, gpus: int) -> str:
    return f"""\
apiVersion: kompression.dev/v1alpha1
kind: CompressionJob
metadata: {{name: gpu-check-llm}}
spec:
  model:
    uri: file://{model}
    format: HuggingFace
    inputs: [{{name: input_ids, shape: [-1, -1], dtype: int64}}]
  steps:
  - name: quantize
    llmQuantize: {step}
  output: {{uri: 'file://{output}/'}}
  resources: {{gpus: {gpus}}}
"""


def llm_python() -> str:
    return os.environ.get(LLM_PYTHON_ENV) or sys.executable


def missing_llmcompressor(python: str) -> str | None:
    """Why `python` cannot run an llmQuantize job, or None when it can."""
    try:
        proc = subprocess.run(
            [python, "-c", "import llmcompressor, compressed_tensors"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} cannot run ({exc})"
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"llm-compressor is not importable by {python} ({last}); set {LLM_PYTHON_ENV} to the worker-llm python"
    return None


def quantize(model: Path, work: Path, step: str, gpus: int, timeout_s: int) -> tuple[Path | None, str]:
    """The published folder of an llmQuantize job run by `kompression run`, or None and why not."""
    output = work / "out"
    job = work / "job.yaml"
    job.write_text(job_yaml(model, output, step, gpus))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.monotonic()
    proc = subprocess.run(
        [llm_python(), "-m", "kompression", "run", str(job)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"kompression run exited {proc.returncode}: {last[:300]}"
    manifest = json.loads((output / "manifest.json").read_text())
    folder = output / "runs" / manifest["runId"] / "model"
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return folder, f"kompression run {seconds:.0f} s, weights {size / 2**20:.1f} MiB"


def prompt_ids(sizes: LlmSizes) -> list[list[int]]:
    """Equal-length prompts (no padding in the transformers batch), cut from the fixture tokenizer's text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    text = " ".join(["Permission is hereby granted, free of charge, to any person obtaining a copy"] * 64)
    ids = tokenizer(text)["input_ids"][: sizes.prompt_tokens + sizes.prompts]
    return [ids[i : i + sizes.prompt_tokens] for i in range(sizes.prompts)]


def vllm_tokens_per_s(folder: Path, prompts: list[list[int]], sizes: LlmSizes) -> tuple[float | None, str]:
    """Generated tokens per second of vLLM's offline LLM on the folder (quantization read from its config)."""
    if importlib.util.find_spec("vllm") is None:
        return None, "vllm not installed"
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(folder),
        dtype="bfloat16",
        max_model_len=sizes.prompt_tokens + sizes.new_tokens + 16,
        gpu_memory_utilization=0.35,
        seed=0,
    )
    params = SamplingParams(max_tokens=sizes.new_tokens, ignore_eos=True, temperature=0.0)
    requests: list[Any] = [{"prompt_token_ids": ids} for ids in prompts]
    try:
        llm.generate(requests[:2], params, use_tqdm=False)  # warm-up
        started = time.perf_counter()
        outputs = llm.generate(requests, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        quantization = getattr(getattr(llm.llm_engine, "model_config", None), "quantization", None)
    finally:
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return tokens / seconds, f"vLLM, {len(prompts)} prompts x {sizes.new_tokens} tokens, quantization {quantization}"


def transformers_tokens_per_s(
    folder: Path, prompts: list[list[int]], sizes: LlmSizes, device: str
) -> tuple[float | None, str]:
    """Generated tokens per second of transformers' generate, greedy, the prompts as one batch."""
    from transformers import AutoModelForCausalLM

    if (folder / "hf_quant_config.json").is_file():
        # transformers would load it without its scales (fp8 values cast as they are): a wrong model.
        return None, "not run: transformers has no loader for ModelOpt checkpoints"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    ids = torch.tensor(prompts, device=device)
    kwargs = {"max_new_tokens": sizes.new_tokens, "min_new_tokens": sizes.new_tokens, "do_sample": False}
    try:
        with torch.inference_mode():
            model.generate(ids[:1], **kwargs)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            out = model.generate(ids, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
    finally:
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    tokens = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    return (
        tokens / seconds,
        f"transformers generate, {device} {str(dtype).removeprefix('torch.')}, batch {len(prompts)}",
    )


def _measure(fn: Any) -> tuple[float | None, str]:
    try:
        result: tuple[float | None, str] = fn()
    except Exception as exc:  # one engine failing on one folder is a result, not a reason to lose the rest
        return None, f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return result


def llm(device: str) -> list[Row]:
    sizes = GPU if device == "cuda" else DRY
    with tempfile.TemporaryDirectory(prefix="gpu-check-llm-") as tmp:
        work = Path(tmp)
        model = random_llama(work / "original") if sizes.random_model else FIXTURE
        label = "random Llama 1.1B shapes" if sizes.random_model else "tiny-llama fixture"
        section = f"llm {label}, {sizes.prompts}x{sizes.prompt_tokens} prompt, {sizes.new_tokens} new tokens"
        folders: dict[str, Path] = {"original bf16": model}
        rows: list[Row] = []
        why_not = missing_llmcompressor(llm_python())
        for i, step in enumerate(sizes.schemes):
            if why_not is not None:
                rows.append({"section": section, "candidate": f"llmQuantize {step}", "note": f"not run: {why_not}"})
                continue
            (work / str(i)).mkdir()
            folder, note = quantize(model, work / str(i), step, 1 if device == "cuda" else 0, sizes.quantize_timeout_s)
            rows.append({"section": section, "candidate": f"llmQuantize {step}", "note": note})
            if folder is not None:
                folders[step] = folder
        prompts = prompt_ids(sizes)
        engines = {"vLLM": lambda f: vllm_tokens_per_s(f, prompts, sizes)}
        if device == "cuda" or not sizes.random_model:
            engines["transformers"] = lambda f: transformers_tokens_per_s(f, prompts, sizes, device)
        for engine, measure in engines.items():
            baseline: float | None = None
            for name, folder in folders.items():
                value, note = _measure(lambda m=measure, f=folder: m(f))
                row: Row = {"section": section, "candidate": f"{name} ({engine})", "note": note}
                if value is not None:
                    baseline = value if baseline is None and name == "original bf16" else baseline
                    row.update(tokens_per_s=round(value, 1), ms=round(1000 / value, 3))
                    if baseline:
                        row["speedup"] = round(value / baseline, 3)
                    row["note"] = f"{value:.1f} tokens/s; {note}"
                rows.append(row)
        return rows
