"""HuggingFace model folders loaded as graphs (encoders, classifiers): vetted by hf_folder, loaded offline, their output chosen."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from kompression.api.v1alpha1 import ModelSource
from kompression.worker.errors import ModelError, RuntimeMissing
from kompression.worker.formats import hf_folder
from kompression.worker.formats.inputs import example_inputs
from kompression.worker.model import Model, TorchModel

# The output a HuggingFace model hands the pipeline when spec.model.output is unset: a task head's
# scores, else a bare encoder's token states (BERT-class, ViT).
DEFAULT_OUTPUTS = ("logits", "last_hidden_state")


class HuggingFaceOutput(torch.nn.Module):
    """HuggingFace models return output objects; the pipeline compresses and measures one tensor of it."""

    def __init__(self, inner: torch.nn.Module, output: str) -> None:
        super().__init__()
        self.inner = inner
        self.output = output

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return getattr(self.inner(*args), self.output)  # type: ignore[no-any-return]


def _huggingface_output(module: torch.nn.Module, source: ModelSource) -> str:
    """The output to use: spec.model.output if the model returns it, else the architecture's default."""
    try:
        with torch.no_grad():
            out = module(*example_inputs(source.inputs, batch=2))
    except Exception:  # check_inputs reports inputs the model rejects, naming each declared input
        return source.output or DEFAULT_OUTPUTS[0]
    names = [k for k, v in out.items() if isinstance(v, torch.Tensor)] if hasattr(out, "items") else []
    if source.output is not None:
        if source.output not in names:
            raise ModelError(
                f"{source.uri}: spec.model.output {source.output!r} is not an output of this "
                f"{type(module).__name__}; it returns {', '.join(names) or 'no named tensors'}"
            )
        return source.output
    chosen = next((name for name in DEFAULT_OUTPUTS if name in names), None)
    if chosen is None:
        raise ModelError(
            f"{source.uri}: this {type(module).__name__} returns neither {' nor '.join(DEFAULT_OUTPUTS)}; "
            f"set spec.model.output to one of {', '.join(names) or 'its outputs'}"
        )
    return chosen


def load(source: ModelSource, path: Path) -> Model:
    try:
        transformers = importlib.import_module("transformers")
    except ImportError:
        raise RuntimeMissing(
            "format HuggingFace needs the transformers package, which this worker lacks: "
            "pip install 'kompression[worker]' (or use an image with it), or export the model with torch.export "
            "(format TorchExport)"
        ) from None
    folder = hf_folder.vet(path, source.uri)
    cls: Any = folder.architecture or transformers.AutoModel
    with hf_folder.loading(source.uri, "the HuggingFace model (safetensors weights only)"):
        module, info = cls.from_pretrained(
            str(path), output_loading_info=True, **hf_folder.load_options(folder, transformers.AutoModel)
        )
    hf_folder.check_complete(info, module, source.uri)
    module.eval()
    return TorchModel(
        HuggingFaceOutput(module, _huggingface_output(module, source)).eval(), example_inputs(source.inputs)
    )
