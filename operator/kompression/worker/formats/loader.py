"""spec.model.format -> the module that loads it, and the inputs check every loaded model passes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kompression.api.v1alpha1 import ModelSource
from kompression.worker.formats import hf_folder, huggingface, onnx_file, safetensors_weights, torch_export, torchscript
from kompression.worker.formats.inputs import check_inputs
from kompression.worker.model import Model


def load_model(
    source: ModelSource,
    path: Path,
    fetch_sibling: Callable[[str], Path] | None = None,
    *,
    checkpoint: bool = False,
    any_architecture: bool = False,
) -> Model:
    """Load the model at path (already local) as source.format says, and check its inputs.

    fetch_sibling(relative_name) brings a file stored next to the model (ONNX external data)
    into the same local folder; it is only called for names that passed the path checks.
    checkpoint: a HuggingFace folder stays a CheckpointFolder (vetted, not loaded), the model of
    the LLM techniques, which read and write folders as servers load them; any_architecture: its
    config.json may name an architecture transformers does not have (a job that reads weights only).
    """
    if checkpoint:
        return hf_folder.vet(path, hf_folder.MODEL_URI, any_architecture=any_architecture)
    loaders: dict[str, Callable[[ModelSource, Path], Model]] = {
        "TorchExport": torch_export.load,
        "TorchScript": torchscript.load,
        "SafeTensors": safetensors_weights.load,
        "HuggingFace": huggingface.load,
    }
    if source.format == "ONNX":
        model: Model = onnx_file.load(source, path, fetch_sibling)
    else:
        model = loaders[source.format](source, path)
    check_inputs(model, source.inputs, source.uri)
    return model
