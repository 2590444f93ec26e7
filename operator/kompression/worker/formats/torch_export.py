"""TorchExport: a vetted .pt2 archive rebuilt as real layers, and models saved as .pt2."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kompression.api.v1alpha1 import ModelInput, ModelSource
from kompression.worker.errors import ModelError, brief
from kompression.worker.formats import graph_rebuild
from kompression.worker.formats.inputs import compare_shapes, example_inputs
from kompression.worker.formats.pt2_archive import vet_pt2_archive
from kompression.worker.formats.size import parameter_count
from kompression.worker.model import Model, TorchModel


def load(source: ModelSource, path: Path) -> Model:
    vet_pt2_archive(path, source.uri)
    try:
        program = torch.export.load(str(path))
        _check_program_inputs(program, source)
    except ModelError:
        raise
    except Exception as exc:  # whatever torch raises on a file it cannot read is the file's fault
        raise ModelError(f"{source.uri}: cannot load the TorchExport archive: {brief(exc)}") from None
    try:
        module = graph_rebuild.rebuild(program)
    except Exception as exc:  # FX raises assorted types on graphs it cannot rewrite
        raise ModelError(
            f"{source.uri}: cannot rebuild the exported program as layers: {brief(exc)}; "
            "save the weights as SafeTensors with `architecture` instead"
        ) from None
    # Techniques run on the rebuilt layers, so they must compute what the program computes.
    for probe in _parity_probes(program, source.inputs):
        graph_rebuild.check_parity(program, module, probe, source.uri)
    return TorchModel(module, example_inputs(source.inputs))


def _parity_probes(program: Any, inputs: list[ModelInput]) -> list[tuple[torch.Tensor, ...]]:
    """Inputs to compare program and rebuild on: the archive's own example inputs when it kept
    them, and seeded random values of the declared shapes (integer inputs stay zero: their valid
    range, such as a vocabulary, is unknown)."""
    generator = torch.Generator().manual_seed(0)
    declared = tuple(
        torch.randn(x.shape, generator=generator) if x.is_floating_point() else x
        for x in example_inputs(inputs, batch=2)
    )
    probes = [declared]
    kept = getattr(program, "example_inputs", None)
    if kept is not None:
        args, kwargs = kept
        if not kwargs and len(args) == len(inputs) and all(isinstance(a, torch.Tensor) for a in args):
            probes.append(tuple(args))
    return probes


def _check_program_inputs(program: Any, source: ModelSource) -> None:
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user = set(program.graph_signature.user_inputs)
    shapes = [n.meta.get("val") for n in placeholders if n.name in user]
    if len(shapes) != len(source.inputs):
        raise ModelError(
            f"{source.uri}: the model takes {len(shapes)} input(s) but spec.model.inputs declares {len(source.inputs)}"
        )
    for declared, val in zip(source.inputs, shapes, strict=True):
        if val is None or not hasattr(val, "shape"):
            continue
        actual = [int(d) if isinstance(d, int) or str(d).isdigit() else -1 for d in val.shape]
        compare_shapes(source.uri, declared, actual)


def save_torch_export(model: TorchModel, path: Path, declared: Sequence[ModelInput] = ()) -> Path:
    """Save as a .pt2 archive (dynamic batch when the model allows it, and the other dimensions
    `declared` -1, such as a sequence length, dynamic too) and check it holds every parameter."""
    module = model.module.eval()
    batch2 = tuple(torch.cat([t, t]) for t in model.example_inputs)
    dim = torch.export.Dim("batch", min=1, max=65536)
    shapes = [d.shape for d in declared] if len(declared) == len(batch2) else [[] for _ in batch2]
    # AUTO lets torch.export find how the dimensions relate (ids and mask share one sequence length).
    dynamic = tuple(
        {0: dim, **{i: torch.export.Dim.AUTO for i, d in enumerate(shape) if i > 0 and d == -1}} for shape in shapes
    )
    params = list(inspect.signature(module.forward).parameters.values())
    if len(params) == 1 and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        # forward(*args) (a HuggingFace wrapper): torch.export sees one argument, the tuple.
        dynamic_shapes: Any = {params[0].name: dynamic}
    else:
        dynamic_shapes = dynamic
    try:
        program = torch.export.export(module, batch2, dynamic_shapes=dynamic_shapes)
    except Exception:
        # Some graphs (quantized ones, data-dependent code) specialize the batch: keep it static.
        program = torch.export.export(module, model.example_inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    saved = sum(int(t.numel()) for n, t in program.state_dict.items() if n in dict(module.named_parameters()))
    expected = parameter_count(module)
    if saved != expected:
        raise ModelError(f"saving {path.name}: the archive holds {saved} parameters but the model has {expected}")
    return path
