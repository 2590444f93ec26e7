"""A tiny BERT encoder saved as a HuggingFace folder with its own WordPiece tokenizer, built
locally (random weights, a small vocabulary): a two-input model (token ids + attention mask) that
needs no download."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from factories import job, write_job

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the",
    "a",
    "an",
    "cat",
    "dog",
    "bird",
    "fish",
    "sat",
    "ran",
    "flew",
    "swam",
    "on",
    "under",
    "over",
    "mat",
    "log",
    "tree",
    "pond",
    "quick",
    "slow",
    "brown",
    "lazy",
    "small",
    "big",
    "red",
    "blue",
    "green",
    "jumps",
    "sleeps",
    "sings",
    "and",
    "or",
    "but",
    "is",
    "was",
    "very",
    "not",
]
SENTENCES = [
    "the quick brown dog jumps over the lazy cat",
    "a small bird sings",
    "the fish swam under the log and the cat sat on the mat",
    "a big red dog ran",
    "the blue bird flew over the green tree",
    "an old fish",  # "old" is not in the vocabulary: [UNK]
    "the cat sleeps",
    "a lazy dog is very slow but not small",
]


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) and its fast tokenizer, saved with save_pretrained (safetensors)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIAL, *WORDS])}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        architectures=["BertModel"],
    )
    model = BertModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def encoder_inputs(length: int | None = 16) -> list[dict[str, object]]:
    """spec.model.inputs for the encoder: ids and mask, int64; length None declares it dynamic (-1)."""
    shape = [-1, -1 if length is None else length]
    return [
        {"name": "input_ids", "shape": shape, "dtype": "int64"},
        {"name": "attention_mask", "shape": shape, "dtype": "int64"},
    ]


def cosine_job(folder: Path, root: Path) -> Path:
    """root/job.yaml: the encoder folder as a HuggingFace model, scored by cosine similarity on
    SENTENCES (root/texts.jsonl), published under root/out/."""
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES))
    body = job(
        f"file://{folder}",
        f"file://{root}/out/",
        data={"evaluation": {"uri": f"file://{texts}", "metric": "CosineSimilarity", "maxLength": 16}},
    )
    body["spec"]["model"] = {"uri": f"file://{folder}", "format": "HuggingFace", "inputs": encoder_inputs(16)}
    return write_job(root / "job.yaml", body)
