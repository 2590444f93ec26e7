"""Names of functions imported only when called: the registry's techniques and the model kinds'
evaluators, so that neither worker environment imports the other's libraries (the main one has
no llm-compressor, the LLM one no onnxruntime or Torch-Pruning)."""

from __future__ import annotations

import importlib
from typing import Any


def resolve(ref: str) -> Any:
    """The attribute a "package.module:attribute" reference names, its module imported now."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
