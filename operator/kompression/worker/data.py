"""Data sets for calibration, evaluation and training.

The data format
---------------
A data set is one NumPy ``.npz`` file (``numpy.savez`` or ``numpy.savez_compressed``) holding:

- ``inputs``: an array of shape ``(N, ...)`` whose trailing dimensions match the model's first
  input in ``spec.model.inputs`` (dimensions declared -1 may be anything). float32, float16 and
  float64 are read as float32; int32 and int64 as int64 (token ids).
- ``labels`` (optional): an integer array of shape ``(N,)``, class indices. Top1Accuracy,
  fine-tuning and distillation need them; OutputAgreement and CosineSimilarity do not.

No other keys are read, and the file is opened with ``allow_pickle=False``: object arrays are
refused. Values must be finite (no NaN or Inf). ``samples`` keeps the first N rows.

Builtin ``Digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), as
inputs ``(N, 1, 8, 8)`` float32 scaled to [0, 1] and labels 0-9. A fixed stratified split keeps
20% (360 images) for evaluation; training and calibration read the other 80%.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from kompression.api.v1alpha1 import DataSource, DataSpec, ModelInput
from kompression.worker.errors import DataError
from kompression.worker.model import Dataset, DataSets

# Evaluation batches only trade memory for speed: without spec.data.evaluation.batchSize they stay large.
EVALUATION_BATCH_SIZE = 256

DIGITS_EVAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
ROLES = ("calibration", "evaluation", "training")


def digits(split: str) -> Dataset:
    """The builtin Digits set; split is "train" (training, calibration) or "eval"."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        images, labels, test_size=DIGITS_EVAL_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    return Dataset(x_train, y_train) if split == "train" else Dataset(x_eval, y_eval)


def read_npz(path: Path, field: str) -> Dataset:
    """Read the documented .npz format; every problem is a DataError naming the field."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "inputs" not in keys:
                raise DataError(f"{field}: {path.name} has no `inputs` array (found {sorted(keys) or 'nothing'})")
            inputs = np.asarray(npz["inputs"])
            labels = np.asarray(npz["labels"]) if "labels" in keys else None
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{field}: not a readable .npz file with plain arrays ({exc})") from None
    if inputs.dtype.kind == "f":
        inputs = inputs.astype(np.float32)
    elif inputs.dtype.kind in "iu":
        inputs = inputs.astype(np.int64)
    else:
        raise DataError(f"{field}: `inputs` has dtype {inputs.dtype}; expected float or integer")
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.ndim != 1 or len(labels) != len(inputs):
            raise DataError(
                f"{field}: `labels` must be integers of shape ({len(inputs)},); got {labels.dtype} {labels.shape}"
            )
        labels = labels.astype(np.int64)
    return Dataset(inputs, labels)


def check(ds: Dataset, declared: ModelInput, field: str) -> Dataset:
    """Shape, finiteness and emptiness checks against the model's first declared input."""
    if len(ds) == 0:
        raise DataError(f"{field}: the data set is empty")
    trailing = list(ds.inputs.shape[1:])
    expected = declared.shape[1:]
    if len(trailing) != len(expected) or any(e not in (-1, a) for a, e in zip(trailing, expected, strict=False)):
        raise DataError(
            f"{field}: inputs have shape {list(ds.inputs.shape)} but spec.model.inputs[{declared.name!r}] is "
            f"{declared.shape}: each sample must have shape {expected} (-1 = any)"
        )
    if ds.inputs.dtype.kind == "f" and not np.isfinite(ds.inputs).all():
        bad = int((~np.isfinite(ds.inputs)).reshape(len(ds), -1).any(axis=1).sum())
        raise DataError(f"{field}: {bad} sample(s) contain NaN or Inf; clean the data set")
    return ds


def load_source(
    source: DataSource, field: str, declared: ModelInput, fetch: Callable[[str], Path], split: str
) -> Dataset:
    if source.builtin == "Digits":
        ds = digits(split)
    else:
        assert source.uri is not None  # enforced by the API's rules
        ds = read_npz(fetch(source.uri), field)
    if source.samples is not None:
        ds = Dataset(ds.inputs[: source.samples], None if ds.labels is None else ds.labels[: source.samples])
    batch_size = source.batchSize
    if split == "eval" and "batchSize" not in source.model_fields_set:
        batch_size = EVALUATION_BATCH_SIZE
    return check(replace(ds, batch_size=batch_size), declared, field)


def load_datasets(spec: DataSpec | None, declared: ModelInput, fetch: Callable[[str], Path]) -> DataSets:
    """Every data set the spec names. fetch(uri) returns a local copy (ObjectNotFound if absent)."""
    out = DataSets()
    if spec is None:
        return out
    for role in ROLES:
        source = getattr(spec, role)
        if source is not None:
            split = "eval" if role == "evaluation" else "train"
            setattr(out, role, load_source(source, f"spec.data.{role}", declared, fetch, split))
    if spec.evaluation is not None and spec.evaluation.metric == "Top1Accuracy":
        assert out.evaluation is not None
        if out.evaluation.labels is None:
            raise DataError(
                "spec.data.evaluation: metric Top1Accuracy needs `labels`; use OutputAgreement for unlabeled data"
            )
    if out.training is not None and out.training.labels is None:
        raise DataError("spec.data.training: fine-tuning and distillation need `labels` in the .npz")
    return out
