"""Torch -> ONNX export and onnxruntime sessions, shared by the onnx, quantize and tensorrt steps."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from kompression.api.v1alpha1 import ModelInput
from kompression.worker.errors import ModelError
from kompression.worker.formats import graph_rebuild
from kompression.worker.model import OnnxModel, TorchModel

DEFAULT_OPSET = 18


def export_onnx(
    model: TorchModel,
    path: Path,
    input_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    *,
    declared: Sequence[ModelInput] = (),
) -> OnnxModel:
    """Export on CPU in float32 and check the graph, so every later tool sees a valid model.
    Dimensions `declared` -1 other than the batch (a sequence length) stay dynamic too."""
    module = graph_rebuild.scoped_for_tracing(copy.deepcopy(model.module).to("cpu").eval())
    eager_attention(module)
    inputs = tuple(x.detach().to("cpu") for x in model.example_inputs)
    names = list(input_names)[: len(inputs)]
    if len(names) < len(inputs):
        names += [f"input_{i}" for i in range(len(names), len(inputs))]
    dynamic_axes = dynamic_axes_for(names, declared, dynamic_batch) or None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The TorchScript-based exporter gives plain Conv/Gemm graphs (scoped node names such as
        # /layer1/layer1.0/conv1/Conv) that onnxruntime's quantizer handles best.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that exporter is chosen on purpose
            torch.onnx.export(
                module,
                inputs,
                str(path),
                input_names=names,
                output_names=["output"],
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                dynamo=False,
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:  # the exporter raises many unrelated types for unsupported ops
        raise ModelError(f"exporting the model to ONNX (opset {opset}) failed: {exc}") from exc
    return OnnxModel(path=path, input_names=names)


def eager_attention(module: torch.nn.Module) -> None:
    """Export a HuggingFace model's attention as its eager math, not as SDPA: the same function
    (outputs within float32 rounding), but the tracing exporter writes SDPA with a boolean mask as
    IsNaN and Where over every score, which onnxruntime runs as separate passes (about a fifth of
    an int8 BERT-class encoder's time, benchmark (f)), where the eager graph adds the mask."""
    for sub in module.modules():  # outermost first: its setter reaches every submodel
        setter = getattr(sub, "set_attn_implementation", None)
        if setter is not None and getattr(getattr(sub, "config", None), "_attn_implementation", None) == "sdpa":
            setter("eager")
            return


def dynamic_axes_for(
    names: Sequence[str], declared: Sequence[ModelInput], dynamic_batch: bool
) -> dict[str, dict[int, str]]:
    """The exporter's dynamic_axes: the batch (when asked) and every other dimension declared -1."""
    axes: dict[str, dict[int, str]] = {}
    shapes = {d.name: d.shape for d in declared}
    for name in names:
        dims = {0: "batch"} if dynamic_batch else {}
        dims.update({i: f"{name}_dim{i}" for i, d in enumerate(shapes.get(name, [])) if i > 0 and d == -1})
        if dims:
            axes[name] = dims
    if dynamic_batch:
        axes["output"] = {0: "batch"}
    return axes


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session with every graph optimization on; threads=0 lets onnxruntime pick."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(sess: ort.InferenceSession, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """First output of the model for positional inputs."""
    feeds = {meta.name: arr for meta, arr in zip(sess.get_inputs(), inputs, strict=False)}
    return np.asarray(sess.run(None, feeds)[0])


def module_path_of_node(node_name: str) -> str:
    """The torch module a node came from, rebuilt from the exporter's scope path.

    Scopes mix short and dotted names ("/layer1/layer1.0/conv1/Conv" is layer1.0.conv1), so a
    component that extends the path so far replaces it, and any other component is appended.
    """
    path = ""
    for part in node_name.strip("/").split("/")[:-1]:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


def nodes_of_modules(model_path: Path, module_names: Sequence[str]) -> dict[str, list[str]]:
    """ONNX node names per torch module name (a module's own nodes and its children's)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    found: dict[str, list[str]] = {name: [] for name in module_names}
    for node in graph.node:
        owner = module_path_of_node(node.name)
        for name in module_names:
            if name in (node.name, owner) or owner.startswith(name + "."):
                found[name].append(node.name)
    return found
