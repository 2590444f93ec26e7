"""The model formats spec.model.format names, one module each, every file treated as untrusted.

Unpickling runs code. So:
- ``torch.load`` is only ever called with ``weights_only=True``.
- ``.pt2`` (TorchExport) archives are vetted before ``torch.export.load`` sees them: only entries of
  the current format with raw tensor payloads pass (pt2_archive lists what torch's loader would
  otherwise unpickle, load or evaluate).
- TorchScript archives are code (a scripted forward() can read files), so they load only when the
  job sets ``spec.model.trustTorchScriptCode``.
- ONNX external-data locations must stay inside the model's folder (no absolute paths, no ``..``,
  no symlinks pointing out).
- HuggingFace folders are vetted by hf_folder (settings, weights, shard index) and load offline with
  ``use_safetensors=True``, ``trust_remote_code=False`` and the worker's attention implementation,
  every weight the model expects present in the files.
"""
