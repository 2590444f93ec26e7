"""What a model weighs: its parameter count and the bytes of the files that hold its weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def parameter_count(module: torch.nn.Module) -> int:
    return sum(int(p.numel()) for p in module.parameters())


def model_size(artifact: Path) -> int:
    """The model's size, the one figure compressionRatio divides (the original's over the final
    model's), on every path: the bytes of the files that hold its weights as published. A model in
    one file (.pt2, .onnx, a TensorRT engine, .safetensors) is that file, its graph included; a
    HuggingFace folder is its .safetensors files (config, tokenizer and chat template hold no weights)."""
    if artifact.is_dir():
        return sum(f.stat().st_size for f in artifact.rglob("*.safetensors") if f.is_file())
    return os.path.getsize(artifact)
