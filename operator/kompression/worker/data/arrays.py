"""Data sets for calibration, evaluation and training.

The data format
---------------
A data set holds one array per model input, named as in ``spec.model.inputs``, in one of three forms.

A NumPy ``.npz`` file (``numpy.savez`` or ``numpy.savez_compressed``) holding:

- one array per declared input, under the input's name, each of shape ``(N, ...)`` whose trailing
  dimensions match the input's declared shape (dimensions declared -1, such as a sequence
  length, may be anything). A float input accepts float or integer arrays, read as float32; an
  int64 or int32 input (token ids, attention masks) accepts integer or boolean arrays, read as
  int64. Inputs of different dtypes sit side by side in one file. A model with a single input may
  name its array ``inputs`` instead.
- ``labels`` (optional): an integer array of shape ``(N,)``, class indices. Top1Accuracy,
  fine-tuning and distillation need them; OutputAgreement and CosineSimilarity do not.

Every declared input needs its array: a missing one is a DataError naming the input (no input is
ever filled in). Other keys are ignored, and the file is opened with ``allow_pickle=False``: object
arrays are refused. Values must be finite (no NaN or Inf) and every array must hold the same N.
An archive that declares more unpacked bytes than the worker's memory is refused before unpacking.

Text, for a HuggingFace model folder: a ``.jsonl`` file (one JSON object per line with a ``text``
string, or a ``messages`` conversation that the model's chat template renders, and, for labelled
data, an integer ``label`` on every line) or a ``.txt`` file (one sample per line; blank lines are
skipped). The text is tokenized with the model folder's own tokenizer
(``transformers.AutoTokenizer``, local files only) into the declared inputs (``input_ids``,
``attention_mask``, ``token_type_ids``, whichever the model declares), padded to ``maxLength``
(``padding: MaxLength``, the default) or to the longest sample (``Longest``) and truncated to
``maxLength`` unless ``truncation: false``.

``samples`` keeps the first N samples. For example, a two-input encoder::

    import numpy as np
    ids = np.random.default_rng(0).integers(0, 1000, size=(64, 16))
    mask = np.ones((64, 16), dtype=np.int64)
    np.savez("encoder-eval.npz", input_ids=ids, attention_mask=mask)

Builtin ``Digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), as
a model's single input ``(N, 1, 8, 8)`` float32 scaled to [0, 1] and labels 0-9. A fixed stratified
split keeps 20% (360 images) for evaluation; training and calibration read the other 80%.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kompression.api.v1alpha1 import DataSource, DataSpec, ModelInput
from kompression.worker.data.texts import MAX_LABEL, model_max_length, read_texts
from kompression.worker.errors import DataError
from kompression.worker.formats import hf_folder
from kompression.worker.model import Dataset, DataSets

# Evaluation batches only trade memory for speed: without spec.data.evaluation.batchSize they stay large.
EVALUATION_BATCH_SIZE = 256

DIGITS_EVAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
ROLES = ("calibration", "evaluation", "training")
SHORTHAND = "inputs"  # the array name a single-input model's data may use instead of the input's name
INTEGER_DTYPES = ("int64", "int32")
# Where a container's memory limit is read (cgroup v2, then v1); v2's "max" means no limit.
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
# The files a HuggingFace tokenizer is read from: a fast tokenizer, or a vocabulary (WordPiece,
# BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def digits(split: str, name: str = "x") -> Dataset:
    """The builtin Digits set under input `name`; split is "train" (training, calibration) or "eval"."""
    # scikit-learn takes a second to import; only the builtin set needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        images, labels, test_size=DIGITS_EVAL_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    return Dataset({name: x_train}, y_train) if split == "train" else Dataset({name: x_eval}, y_eval)


def memory_bytes() -> int:
    """The memory this worker may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in CGROUP_MEMORY_LIMITS:
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return total


def read_npz(path: Path, field: str, declared: Sequence[ModelInput]) -> Dataset:
    """Read the documented .npz format; every problem is a DataError naming the field and input."""
    _check_archive(path, field)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            arrays = {}
            for i, spec in enumerate(declared):
                key = spec.name
                if key not in keys and len(declared) == 1 and SHORTHAND in keys:
                    key = SHORTHAND
                if key not in keys:
                    shorthand = f" (or `{SHORTHAND}`, for a single-input model)" if len(declared) == 1 else ""
                    raise DataError(
                        f"{field}: {path.name} has no array for spec.model.inputs[{i}] {spec.name!r}{shorthand}; "
                        f"found {sorted(keys) or 'nothing'}. Save one array per declared input, named as the input"
                    )
                arrays[spec.name] = _sampled(np.asarray(npz[key]), key, path, field)
            labels = _sampled(np.asarray(npz["labels"]), "labels", path, field) if "labels" in keys else None
    except DataError:
        raise
    except Exception as exc:  # numpy and zipfile raise a dozen types for a damaged or hostile file
        raise DataError(
            f"{field}: {path.name} is not a readable .npz file of plain arrays ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]})"
        ) from None
    return Dataset(arrays, labels)


def _check_archive(path: Path, field: str) -> None:
    """An .npz is a zip of .npy files; its arrays are sized by the archive's directory before one is
    unpacked, so a small file that unpacks to more than the worker's memory (a zip bomb, or a size
    that lies) is refused instead of killing the worker."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError(
            f"{field}: {path.name} is not an .npz file (a zip of .npy arrays, as numpy.savez writes): {exc}"
        ) from None
    memory = memory_bytes()
    if unpacked > memory:
        raise DataError(
            f"{field}: {path.name} unpacks to {unpacked} bytes, more than this worker's memory ({memory} bytes); "
            "keep fewer samples in the file or give the job more memory"
        )


def _sampled(array: np.ndarray, key: str, path: Path, field: str) -> np.ndarray:
    if array.ndim == 0:
        raise DataError(
            f"{field}: {path.name}: array {key!r} is a single value; it must be (N, ...), one row per sample"
        )
    return array


def tokenizer_for(folder: Path | None, field: str) -> Any:
    """The model folder's own tokenizer, from local files only (never the network)."""
    if folder is None:
        raise DataError(
            f"{field}: text data is tokenized with the model's own tokenizer, and only a HuggingFace model "
            "folder has one; tokenize beforehand into an .npz with one array per input"
        )
    # Without a vocabulary file transformers builds an empty tokenizer that maps every word to
    # [UNK] without a word of warning, so the files are looked for first.
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(
            f"{field}: the model folder has no tokenizer ({', '.join(TOKENIZER_FILES)}); save it next to the "
            "model with tokenizer.save_pretrained(folder)"
        )
    # The tokenizer's settings may name code of the folder's own (auto_map): refused before transformers reads them.
    hf_folder.vet_tokenizer(folder, field)
    try:
        # transformers is optional (the huggingface extra) and slow to import.
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(
            f"{field}: tokenizing text data needs the transformers package, which this worker lacks"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(str(folder), **hf_folder.OFFLINE)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a folder without a tokenizer
        raise DataError(
            f"{field}: the model folder has no usable tokenizer (tokenizer.json or a vocabulary plus "
            f"tokenizer_config.json): {' '.join(str(exc).split())[:300]}"
        ) from None


def read_text(path: Path, field: str, source: DataSource, declared: Sequence[ModelInput], tokenizer: Any) -> Dataset:
    """Tokenize a text data set into the model's declared inputs."""
    samples = read_texts(path, field, tokenizer)
    texts, labels = samples.texts, samples.labels
    if source.samples is not None:
        texts, labels = texts[: source.samples], None if labels is None else labels[: source.samples]
    fixed = [s.shape[1] for s in declared if len(s.shape) > 1 and s.shape[1] > 0]
    max_length = source.maxLength or (fixed[0] if fixed else None)
    padding = "max_length" if source.padding_or_default == "MaxLength" else "longest"
    truncation = source.truncation_or_default
    limit = model_max_length(tokenizer)
    if max_length is None and padding == "max_length":
        if limit is None:
            raise DataError(f"{field}: the tokenizer states no length limit; set maxLength")
        max_length = limit
    if not truncation:
        lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
        too_long = [i for i, n in enumerate(lengths) if max_length is not None and n > max_length]
        if too_long:
            raise DataError(
                f"{field}: {len(too_long)} sample(s) (the first is sample {too_long[0]}) are longer than "
                f"maxLength {max_length} tokens and truncation is false; raise maxLength or set truncation: true"
            )
    encoded = tokenizer(texts, padding=padding, truncation=truncation, max_length=max_length, return_tensors="np")
    arrays = {}
    for i, spec in enumerate(declared):
        if spec.name not in encoded:
            raise DataError(
                f"{field}: the tokenizer produces {sorted(encoded.keys())}, not spec.model.inputs[{i}] "
                f"{spec.name!r}; declare the model's inputs by the tokenizer's names"
            )
        arrays[spec.name] = np.asarray(encoded[spec.name])
    return Dataset(arrays, labels)


def check(ds: Dataset, declared: Sequence[ModelInput], field: str) -> Dataset:
    """Each array against its declared input: same N, shape (-1 = any), dtype kind, finiteness;
    float inputs come out float32, integer inputs int64."""
    if len(ds) == 0:
        raise DataError(f"{field}: the data set is empty")
    n = len(ds)
    out: dict[str, np.ndarray] = {}
    for i, spec in enumerate(declared):
        where = f"spec.model.inputs[{i}] {spec.name!r}"
        if spec.name not in ds.inputs:
            raise DataError(f"{field}: no data for {where}; every declared input needs its own array")
        array = ds.inputs[spec.name]
        if len(array) != n:
            raise DataError(
                f"{field}: {spec.name!r} has {len(array)} samples but the data set has {n}; they must match"
            )
        trailing, expected = list(array.shape[1:]), spec.shape[1:]
        if len(trailing) != len(expected) or any(e not in (-1, a) for a, e in zip(trailing, expected, strict=False)):
            raise DataError(
                f"{field}: {spec.name!r} has shape {list(array.shape)} but {where} is {spec.shape}: "
                f"each sample must have shape {expected} (-1 = any)"
            )
        if spec.dtype in INTEGER_DTYPES:
            if array.dtype.kind not in "iub":
                raise DataError(f"{field}: {spec.name!r} has dtype {array.dtype}; {where} is {spec.dtype}, so integers")
            out[spec.name] = array.astype(np.int64)
        else:
            if array.dtype.kind not in "fiu":
                raise DataError(f"{field}: {spec.name!r} has dtype {array.dtype}; expected float or integer")
            array = array.astype(np.float32)
            if not np.isfinite(array).all():
                bad = int((~np.isfinite(array)).reshape(n, -1).any(axis=1).sum())
                raise DataError(f"{field}: {bad} sample(s) of {spec.name!r} contain NaN or Inf; clean the data set")
            out[spec.name] = array
    return replace(ds, inputs=out, labels=None if ds.labels is None else _labels(ds.labels, n, field))


def _labels(labels: np.ndarray, n: int, field: str) -> np.ndarray:
    if labels.dtype.kind not in "iu" or labels.ndim != 1 or len(labels) != n:
        raise DataError(f"{field}: `labels` must be integers of shape ({n},); got {labels.dtype} {labels.shape}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > MAX_LABEL:
        raise DataError(f"{field}: `labels` are class indices from 0 to {MAX_LABEL}; these run from {low} to {high}")
    return labels.astype(np.int64)


def load_source(  # noqa: PLR0917 - one call site, every argument is distinct
    source: DataSource,
    field: str,
    declared: Sequence[ModelInput],
    fetch: Callable[[str], Path],
    split: str,
    tokenizer: Callable[[], Any],
) -> Dataset:
    if source.builtin == "Digits":
        ds = digits(split, declared[0].name)
    else:
        assert source.uri is not None  # enforced by the API's rules
        path = fetch(source.uri)
        if source.is_text:
            ds = read_text(path, field, source, declared, tokenizer())
        else:
            ds = read_npz(path, field, declared)
    if source.samples is not None:
        ds = ds.head(source.samples)
    batch_size = source.batchSize
    if split == "eval" and "batchSize" not in source.model_fields_set:
        batch_size = EVALUATION_BATCH_SIZE
    return check(replace(ds, batch_size=batch_size), declared, field)


def load_datasets(
    spec: DataSpec | None,
    declared: Sequence[ModelInput],
    fetch: Callable[[str], Path],
    tokenizer_folder: Path | None = None,
) -> DataSets:
    """Every data set the spec names. fetch(uri) returns a local copy (ObjectNotFound if absent);
    tokenizer_folder is the HuggingFace model folder whose tokenizer reads text data (None: no tokenizer)."""
    out = DataSets()
    if spec is None:
        return out
    loaded: list[Any] = []

    def tokenizer(field: str) -> Any:
        if not loaded:  # loaded once, for the first text set
            loaded.append(tokenizer_for(tokenizer_folder, field))
        return loaded[0]

    for role in ROLES:
        source = getattr(spec, role)
        if source is not None:
            split = "eval" if role == "evaluation" else "train"
            field = f"spec.data.{role}"
            ds = load_source(source, field, declared, fetch, split, partial(tokenizer, field))
            setattr(out, role, ds)
    if spec.evaluation is not None and spec.evaluation.metric == "Top1Accuracy":
        assert out.evaluation is not None
        if out.evaluation.labels is None:
            raise DataError(
                "spec.data.evaluation: metric Top1Accuracy needs `labels`; use OutputAgreement for unlabeled data"
            )
    if out.training is not None and out.training.labels is None:
        raise DataError(
            "spec.data.training: fine-tuning and distillation need labels (`labels` in an .npz, `label` in .jsonl)"
        )
    return out


def first_sample(data: DataSets) -> list[np.ndarray] | None:
    """One real sample of every input (batch of 1), from the first data set there is; None without data."""
    for ds in (data.evaluation, data.calibration, data.training):
        if ds is not None and len(ds):
            return ds.rows(slice(0, 1))
    return None
