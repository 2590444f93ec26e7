"""SafeTensors: weights poured into an architecture the job names (a model builder of the allowed modules), and models saved as weights."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kompression.api import architectures
from kompression.api.v1alpha1 import ModelSource
from kompression.worker.errors import ModelError, SpecError, brief
from kompression.worker.formats.inputs import example_inputs
from kompression.worker.formats.pt2_archive import reject_pickle_checkpoint
from kompression.worker.model import Model, TorchModel


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


def load(source: ModelSource, path: Path) -> Model:
    from safetensors.torch import load_file  # only for SafeTensors models

    assert source.architecture is not None  # enforced by the API's rules
    try:
        state = load_file(str(path))
    except Exception as exc:
        reject_pickle_checkpoint(source, path)
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
