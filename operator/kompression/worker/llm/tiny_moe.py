"""Tiny mixture-of-experts causal LMs with random weights, in the classes transformers ships for
Qwen3-MoE and Mixtral: the models the MoE tests and benchmark (i) quantize, with the tiny Llama's
tokenizer beside them (tests/llm/fixtures/tiny-llama). Random weights check the MoE path (every
expert calibrated and quantized, the routers kept), not the quantization error.

`starve` makes the routers send every token to the first `top-k` experts: zero router weights give
every expert the same score, and top-k keeps the lowest indices among equals, so the others see no
calibration token unless llm-compressor runs every expert on every token.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kompression.worker.llm import moe

# Per model_type, how its config names the experts' count, the experts each token visits and (where
# it differs from intermediate_size) an expert's hidden size.
KINDS: dict[str, dict[str, int]] = {
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128, "decoder_sparse_step": 1},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def build(
    folder: Path,
    model_type: str,
    tokenizer: Path,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    starve: bool = False,
) -> Any:
    """A two-layer MoE model of `model_type` (a key of KINDS) saved as safetensors under `folder`,
    with the tokenizer files copied from the `tokenizer` folder; returns the model."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type,
        hidden_size=128,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=384,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        **KINDS[model_type],
    )
    auto: Any = AutoModelForCausalLM  # from_config is untyped in transformers
    model: Any = auto.from_config(config).to(dtype)
    if starve:
        with torch.no_grad():
            for name in moe.gates(model):
                model.get_submodule(name).weight.zero_()
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer / name, folder / name)
    return model


def main() -> None:
    """`python -m kompression.worker.llm.tiny_moe FOLDER --kind qwen3_moe --tokenizer TINY_LLAMA`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--kind", choices=sorted(KINDS), default="qwen3_moe")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.folder, args.kind, args.tokenizer, seed=args.seed)
    print(args.folder)


if __name__ == "__main__":
    main()
