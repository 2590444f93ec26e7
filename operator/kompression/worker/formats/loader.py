"""Loading and saving models in the formats spec.model.format names, treating every file as untrusted.

Unpickling runs code. So:
- ``torch.load`` is only ever called with ``weights_only=True``.
- ``.pt2`` (TorchExport) archives are vetted before ``torch.export.load`` sees them: only entries of
  the current format with raw tensor payloads pass (pt2_archive.py lists what torch's loader would
  otherwise unpickle, load or evaluate).
- TorchScript archives are code (a scripted forward() can read files), so they load only when the
  job sets ``spec.model.trustTorchScriptCode``.
- ONNX external-data locations must stay inside the model's folder (no absolute paths, no ``..``,
  no symlinks pointing out).
- HuggingFace folders are vetted by hf_folder (settings, weights, shard index) and load offline with
  ``use_safetensors=True``, ``trust_remote_code=False`` and the worker's attention implementation,
  every weight the model expects present in the files.
"""

from __future__ import annotations

import importlib
import inspect
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from kompression.api import architectures
from kompression.api.v1alpha1 import ModelInput, ModelSource
from kompression.worker.errors import ModelError, RuntimeMissing, SpecError, brief
from kompression.worker.formats import graph_rebuild, hf_folder
from kompression.worker.formats.pt2_archive import PICKLE_ADVICE, vet_pt2_archive
from kompression.worker.model import Model, OnnxModel, TorchModel

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
}


def example_inputs(inputs: list[ModelInput], batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Zero tensors matching the declared inputs; the first -1 is the batch, other -1s become 1."""
    out = []
    for spec in inputs:
        shape = [batch if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(spec.shape)]
        out.append(torch.zeros(shape, dtype=TORCH_DTYPES[spec.dtype]))
    return tuple(out)


# Where a checkpoint folder's problems are reported (the LLM techniques read it as the manifest names it).
MODEL_URI = "spec.model.uri"


def load_model(
    source: ModelSource, path: Path, fetch_sibling: Callable[[str], Path] | None = None, *, checkpoint: bool = False
) -> Model:
    """Load the model at path (already local) as source.format says, and check its inputs.

    fetch_sibling(relative_name) brings a file stored next to the model (ONNX external data)
    into the same local folder; it is only called for names that passed the path checks.
    checkpoint: a HuggingFace folder stays a CheckpointFolder (vetted, not loaded), the model of
    the LLM techniques, which read and write folders as servers load them.
    """
    if checkpoint:
        return hf_folder.vet(path, MODEL_URI)
    loaders: dict[str, Callable[[ModelSource, Path], Model]] = {
        "TorchExport": _load_torch_export,
        "TorchScript": _load_torchscript,
        "SafeTensors": _load_safetensors,
        "HuggingFace": _load_huggingface,
    }
    if source.format == "ONNX":
        model: Model = _load_onnx(source, path, fetch_sibling)
    else:
        model = loaders[source.format](source, path)
    check_inputs(model, source.inputs, source.uri)
    return model


def _reject_pickle_checkpoint(source: ModelSource, path: Path) -> None:
    """A torch.save() file offered as some other format gets a precise explanation."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist()):
                raise ModelError(f"{source.uri} is a torch.save() pickle, not {source.format}: {PICKLE_ADVICE}")


# --------------------------------------------------------------------------------------------
# TorchExport


def _load_torch_export(source: ModelSource, path: Path) -> Model:
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
        _compare_shapes(source.uri, declared, actual)


def _compare_shapes(uri: str, declared: ModelInput, actual: list[int]) -> None:
    mismatch = len(actual) != len(declared.shape) or any(
        a not in (d, -1) and d != -1 for a, d in zip(actual, declared.shape, strict=False)
    )
    if mismatch:
        raise ModelError(
            f"{uri}: input {declared.name!r} is declared in spec.model.inputs with shape {declared.shape} "
            f"but the model expects {actual} (-1 = dynamic)"
        )


# --------------------------------------------------------------------------------------------
# TorchScript, SafeTensors, HuggingFace


def _load_torchscript(source: ModelSource, path: Path) -> Model:
    if not source.trustTorchScriptCode:  # the API refuses it too; the worker does not rely on that
        raise ModelError(
            f"{source.uri}: a TorchScript archive is code that runs in the worker; the job must set "
            "spec.model.trustTorchScriptCode: true to load it"
        )
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{source.uri}: not a TorchScript archive (not a zip file); is spec.model.format right?")
    with zipfile.ZipFile(path) as zf:
        if not any(n.endswith("/code/__torch__.py") or "/code/" in n for n in zf.namelist()):
            _reject_pickle_checkpoint(source, path)
            raise ModelError(f"{source.uri}: not a TorchScript archive (no code/); was it made by torch.jit.save?")
    try:
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ModelError(f"{source.uri}: cannot load the TorchScript archive: {brief(exc)}") from None
    return TorchModel(module.eval(), example_inputs(source.inputs))


def import_ref(ref: str, field: str) -> Callable[..., Any]:
    """Resolve `module.path:Name` to the object it names, if the operator allows its module.

    Nothing is imported before the check: importing a module runs it.
    """
    allowed = architectures.allowed_modules(os.environ)
    if not architectures.reference_allowed(ref, allowed):
        raise SpecError(f"{field}: {architectures.refusal(ref, allowed)}")
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(
            f"{field}: cannot import module {module_name!r} ({exc}); is it installed in the worker image?"
        ) from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise SpecError(f"{field}: module {module_name!r} has no callable {attr!r}")
    # An allowed module may re-export something from elsewhere (a zoo that imports os): the object
    # itself must come from an allowed module too.
    home = getattr(obj, "__module__", None) or ""
    if not architectures.module_allowed(home, allowed):
        raise SpecError(
            f"{field}: {ref} is defined in {home or 'an unknown module'}; {architectures.refusal(ref, allowed)}"
        )
    return obj  # type: ignore[no-any-return]


def build_architecture(ref: str, kwargs: dict[str, Any] | None, field: str) -> torch.nn.Module:
    """The module an architecture reference (and its arguments) builds, for spec.model and distill's student
    alike: whatever is wrong with the reference is a SpecError naming `field`."""
    factory = import_ref(ref, field)
    try:
        module = factory(**(kwargs or {}))
    except Exception as exc:
        raise SpecError(f"{field}: calling {ref} with {kwargs or {}} failed: {brief(exc)}") from None
    if not isinstance(module, torch.nn.Module):
        raise SpecError(f"{field}: {ref} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _load_safetensors(source: ModelSource, path: Path) -> Model:
    from safetensors.torch import load_file  # only for SafeTensors models

    assert source.architecture is not None  # enforced by the API's rules
    try:
        state = load_file(str(path))
    except Exception as exc:
        _reject_pickle_checkpoint(source, path)
        raise ModelError(f"{source.uri}: not a readable safetensors file: {brief(exc)}") from None
    module = build_architecture(source.architecture, source.architectureArguments, "spec.model.architecture")
    missing, unexpected = _key_diff(module.state_dict(), state)
    if missing or unexpected:
        raise ModelError(
            f"{source.uri}: the weights do not fit {source.architecture}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; check architectureArguments"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{source.uri}: the weights do not fit {source.architecture}: {brief(exc)}") from None
    return TorchModel(module.eval(), example_inputs(source.inputs))


def _key_diff(expected: dict[str, Any], got: dict[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


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


def _load_huggingface(source: ModelSource, path: Path) -> Model:
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


# --------------------------------------------------------------------------------------------
# ONNX


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


def _load_onnx(source: ModelSource, path: Path, fetch_sibling: Callable[[str], Path] | None) -> OnnxModel:
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
        _compare_shapes(source.uri, declared, actual)
    return OnnxModel(path, [gi.name for gi in graph_inputs])


# --------------------------------------------------------------------------------------------
# checks and saving


def check_inputs(model: Model, inputs: list[ModelInput], uri: str) -> None:
    """Run an eager model once on declared-shape zeros: a mismatch becomes a ModelError naming the input."""
    if not isinstance(model, TorchModel):
        return
    try:
        with torch.no_grad():
            model.module(*example_inputs(inputs, batch=2))
    except Exception as exc:
        shapes = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise ModelError(
            f"{uri}: the model rejects inputs of the declared shapes ({shapes}; -1 tried as 2 for the batch, "
            f"1 elsewhere): {brief(exc)}. Fix spec.model.inputs to match the model"
        ) from None


def parameter_count(module: torch.nn.Module) -> int:
    return sum(int(p.numel()) for p in module.parameters())


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


def save_safetensors(module: torch.nn.Module, path: Path) -> Path:
    """Save the state dict (contiguous, de-aliased copies) as safetensors and check the element count."""
    from safetensors.torch import load_file, save_file  # only when weights are saved

    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    back = load_file(str(path))
    if sum(t.numel() for t in back.values()) != sum(t.numel() for t in state.values()):
        raise ModelError(f"saving {path.name}: the file does not hold every tensor of the state dict")
    return path


def model_size(artifact: Path) -> int:
    """The model's size, the one figure compressionRatio divides (the original's over the final
    model's), on every path: the bytes of the files that hold its weights as published. A model in
    one file (.pt2, .onnx, a TensorRT engine, .safetensors) is that file, its graph included; a
    HuggingFace folder is its .safetensors files (config, tokenizer and chat template hold no weights)."""
    if artifact.is_dir():
        return sum(f.stat().st_size for f in artifact.rglob("*.safetensors") if f.is_file())
    return os.path.getsize(artifact)
