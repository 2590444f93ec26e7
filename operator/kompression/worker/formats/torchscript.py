"""TorchScript: code as much as weights, so loaded only when the job trusts it (spec.model.trustTorchScriptCode)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from kompression.api.v1alpha1 import ModelSource
from kompression.worker.errors import ModelError, brief
from kompression.worker.formats.inputs import example_inputs
from kompression.worker.formats.pt2_archive import reject_pickle_checkpoint
from kompression.worker.model import Model, TorchModel


def load(source: ModelSource, path: Path) -> Model:
    if not source.trustTorchScriptCode:  # the API refuses it too; the worker does not rely on that
        raise ModelError(
            f"{source.uri}: a TorchScript archive is code that runs in the worker; the job must set "
            "spec.model.trustTorchScriptCode: true to load it"
        )
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{source.uri}: not a TorchScript archive (not a zip file); is spec.model.format right?")
    with zipfile.ZipFile(path) as zf:
        if not any(n.endswith("/code/__torch__.py") or "/code/" in n for n in zf.namelist()):
            reject_pickle_checkpoint(source, path)
            raise ModelError(f"{source.uri}: not a TorchScript archive (no code/); was it made by torch.jit.save?")
    try:
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ModelError(f"{source.uri}: cannot load the TorchScript archive: {brief(exc)}") from None
    return TorchModel(module.eval(), example_inputs(source.inputs))
