"""ONNX: a model file whose external data must stay inside its folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kompression.api.v1alpha1 import ModelSource
from kompression.worker.errors import ModelError, brief
from kompression.worker.formats.inputs import compare_shapes
from kompression.worker.model import OnnxModel


def vet_onnx_external_data(proto: Any, folder: Path, uri: str) -> list[str]:
    """The external-data files the model references, each checked to stay inside folder."""
    from onnx.external_data_helper import _get_all_tensors  # only for ONNX models

    root = folder.resolve()
    names: list[str] = []
    for tensor in _get_all_tensors(proto):
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        candidate = Path(location)
        resolved = (root / candidate).resolve()
        if not location or candidate.is_absolute() or ".." in candidate.parts or not resolved.is_relative_to(root):
            raise ModelError(
                f"{uri}: tensor {tensor.name!r} points its external data at {location!r}, outside the "
                "model's folder; external data must be a relative path next to the .onnx file"
            )
        names.append(location)
    return sorted(set(names))


def load(source: ModelSource, path: Path, fetch_sibling: Callable[[str], Path] | None) -> OnnxModel:
    import onnx  # only for ONNX models

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{source.uri}: not a readable ONNX model: {brief(exc)}") from None
    for name in vet_onnx_external_data(proto, path.parent, source.uri):
        if fetch_sibling is not None:
            fetch_sibling(name)
        target = path.parent / name
        if target.is_symlink() and not target.resolve().is_relative_to(path.parent.resolve()):
            raise ModelError(f"{source.uri}: external data {name!r} is a symlink leaving the model's folder")
        if not target.is_file():
            raise ModelError(f"{source.uri}: external data file {name!r} is missing next to the model")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ModelError(f"{source.uri}: the ONNX model is invalid: {brief(exc)}") from None
    graph_inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(graph_inputs) != len(source.inputs):
        raise ModelError(
            f"{source.uri}: the model takes {len(graph_inputs)} input(s) but spec.model.inputs declares {len(source.inputs)}"
        )
    for declared, gi in zip(source.inputs, graph_inputs, strict=True):
        dims = gi.type.tensor_type.shape.dim
        actual = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        compare_shapes(source.uri, declared, actual)
    return OnnxModel(path, [gi.name for gi in graph_inputs])
