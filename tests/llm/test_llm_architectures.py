"""Qwen-, Mistral- and Gemma-class causal LMs, in fp16, fp32 and bf16, go through GPTQ's
layer-by-layer calibration and publish compressed-tensors folders that transformers loads on a CPU
and generates with (the trained Llama fixture covers Llama in bf16 elsewhere). Random weights:
these check the architecture and dtype paths, not the quantization error."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from llm_jobs import FIXTURE, Texts, job_yaml, kompression_runs, write_job
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

ARCHITECTURES = {
    "qwen2": (torch.float16, "Qwen2ForCausalLM"),
    "mistral": (torch.float32, "MistralForCausalLM"),
    "gemma3_text": (torch.bfloat16, "Gemma3ForCausalLM"),
}


def _tiny_model(folder: Path, model_type: str, dtype: torch.dtype) -> None:
    """A two-layer model of the architecture with the fixture's tokenizer, saved as safetensors."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=384,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    AutoModelForCausalLM.from_config(config).to(dtype).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURE / name, folder / name)


@pytest.fixture(scope="module")
def published(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    jobs, outputs = [], {}
    for model_type, (dtype, _) in ARCHITECTURES.items():
        folder = tmp_path_factory.mktemp(model_type)
        _tiny_model(folder / "model", model_type, dtype)
        manifest = job_yaml(texts, "{scheme: W4A16, algorithm: GPTQ, groupSize: 32}", eval_samples=8)
        jobs.append(write_job(folder, manifest, model=folder / "model"))
        outputs[model_type] = folder / "out"
    for proc, model_type in zip(kompression_runs(*jobs), ARCHITECTURES, strict=True):
        assert proc.returncode == 0, f"{model_type}: {proc.stderr[-3000:]}"
    return outputs


@pytest.mark.parametrize("model_type", list(ARCHITECTURES))
def test_each_architecture_and_dtype_publishes_a_checkpoint_transformers_generates_from(
    published: dict[str, Path], model_type: str
) -> None:
    dtype, architecture = ARCHITECTURES[model_type]
    out = published[model_type]
    manifest = json.loads((out / "manifest.json").read_text())
    run = out / "runs" / manifest["runId"]
    report = json.loads((run / "report.json").read_text())
    baseline, final = report["result"]["baseline"], report["result"]["final"]
    assert math.isfinite(baseline["perplexity"]) and math.isfinite(final["perplexity"])
    # int4 weights plus a scale per 32 weights against 16- or 32-bit originals (embeddings stay).
    assert final["sizeBytes"] < baseline["sizeBytes"] * (0.6 if dtype == torch.float32 else 0.75)

    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert config["quantization_config"]["format"] == "pack-quantized"
    tokenizer = AutoTokenizer.from_pretrained(run / "model", local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32, local_files_only=True).eval()
    assert type(model).__name__ == architecture
    prompt = tokenizer("This License", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 6
