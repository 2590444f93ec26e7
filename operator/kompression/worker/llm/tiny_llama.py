"""A tiny Llama trained briefly on local text: a model whose quantization error can be measured.

Random weights hide rounding error (every output is noise either way), so the tests and benchmark
(g-llm) build this model: a byte-free BPE tokenizer and a three-layer Llama with grouped-query
attention, trained for a few hundred steps on Debian's license texts (always present on Debian and
Ubuntu). Every tenth paragraph is held out as evaluation text; the rest is also calibration text.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from kompression.worker.llm.perplexity import perplexity

LICENSES = Path("/usr/share/common-licenses")
VOCAB_SIZE = 384
SEQUENCE = 64


@dataclass(frozen=True)
class ExampleLLM:
    folder: Path  # the HuggingFace folder: config, bf16 safetensors, tokenizer
    train_text: Path  # .txt, one paragraph per line (calibration text)
    eval_text: Path  # .txt, held-out paragraphs
    eval_jsonl: Path  # the same held-out paragraphs as .jsonl ({"text": ...} per line)
    perplexity: float  # fp32 perplexity on eval_text after training


def paragraphs(root: Path = LICENSES) -> list[str]:
    """The license texts split into paragraphs of one line each, in a fixed order."""
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink())
    if not files:
        raise FileNotFoundError(f"no text under {root}: the example LLM trains on Debian's license texts")
    out: list[str] = []
    for path in files:
        for block in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            line = " ".join(block.split())
            if len(line) >= 40:
                out.append(line)
    return out


def build(folder: Path, *, seed: int = 0, steps: int = 300, threads: int = 1) -> ExampleLLM:
    """Train the tokenizer and the model, and write them and the text splits under `folder`."""

    torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    texts = paragraphs()
    held_out = texts[::10]
    train = [t for i, t in enumerate(texts) if i % 10]
    splits = folder.parent
    (splits / "train.txt").write_text("\n".join(train) + "\n")
    (splits / "eval.txt").write_text("\n".join(held_out) + "\n")
    (splits / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in held_out))

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    special = ["<unk>", "<s>", "</s>"]
    raw.train_from_iterator(train, trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=special))
    fast: Any = transformers.PreTrainedTokenizerFast  # untyped in some transformers releases
    tokenizer = fast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder)

    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model: Any = transformers.LlamaForCausalLM(config)
    stream = torch.tensor(
        [tid for t in train for tid in [tokenizer.bos_token_id, *tokenizer(t)["input_ids"]]], dtype=torch.long
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - SEQUENCE - 1, (16,))
        batch = torch.stack([stream[s : s + SEQUENCE] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    perplexity = _perplexity(model, tokenizer, held_out)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    return ExampleLLM(folder, splits / "train.txt", splits / "eval.txt", splits / "eval.jsonl", perplexity)


def _perplexity(model: object, tokenizer: object, texts: list[str]) -> float:
    return math.exp(perplexity(model, [tokenizer(t)["input_ids"] for t in texts]).mean_nll)  # type: ignore[operator]


def main() -> None:
    """`python -m kompression.worker.llm.tiny_llama FOLDER`: how tests/llm/fixtures/tiny-llama was made."""

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    built = build(args.folder, seed=args.seed, steps=args.steps, threads=args.threads)
    print(f"{built.folder}: held-out perplexity {built.perplexity:.3f}")


if __name__ == "__main__":
    main()
