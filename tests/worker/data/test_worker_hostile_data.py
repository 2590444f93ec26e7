"""Data files as an attacker writes them: random bytes and random JSON fed to the readers of
.jsonl, .txt and .npz data end in success or a DataError, never another exception (which would be
exit 1, retried); and `kompression run` on a hostile data file or chat template exits 4 with one
clear line and no traceback."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encoder_helpers import SENTENCES, encoder_inputs
from factories import DigitsCNN, job, make_ctx, write_job
from kompression.api.constants import ENV_ARCHITECTURE_MODULES, ExitCode
from kompression.api.v1alpha1 import DataSource, DistillStep, FineTune, ModelInput
from kompression.worker.data.arrays import load_source, memory_bytes
from kompression.worker.errors import DataError
from kompression.worker.model import Dataset, DataSets, TorchModel
from kompression.worker.steps.training import fine_tune
from kompression.worker.techniques import TECHNIQUES

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = settings(
    max_examples=60,
    deadline=10_000,  # ms; a forked chat-template renderer per example, on a shared 2-core machine
    derandomize=True,  # the same inputs every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TEMPLATE = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
DECLARED = [ModelInput.model_validate(i) for i in encoder_inputs(None)]


def _chat_folder(bert: Path, folder: Path, template: str) -> Path:
    shutil.copytree(bert, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return folder


@pytest.fixture(scope="module")
def chat_bert(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _chat_folder(tiny_bert, tmp_path_factory.mktemp("chat") / "encoder", TEMPLATE)


@pytest.fixture(scope="module")
def tokenizer(chat_bert: Path) -> Any:
    from transformers import AutoTokenizer  # the main env has it; imported once, for this module's readers

    return AutoTokenizer.from_pretrained(chat_bert, local_files_only=True)


def _load(path: Path, tokenizer: Any, declared: list[ModelInput] = DECLARED) -> None:
    """The worker's reader for one data file, as load_datasets calls it (reading, tokenizing, checks)."""
    source = DataSource.model_validate(
        {"uri": f"file://{path}", **({"maxLength": 16} if path.suffix != ".npz" else {})}
    )
    try:
        load_source(source, "spec.data.calibration", declared, lambda uri: path, "train", lambda: tokenizer)
    except DataError as exc:
        assert exc.message.startswith("spec.data.calibration: "), exc.message
        assert "\n" not in exc.message.strip(), exc.message


# --- random input to the in-process readers ----------------------------------------------------

# Any JSON value, with the keys and shapes the reader looks for coming up often.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=()), max_size=20)  # lone surrogates included
)
KEYS = st.sampled_from(["text", "messages", "label", "role", "content"]) | st.text(max_size=5)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": st.text(st.characters(exclude_categories=()))}
)
ROWS = (
    JSON
    | st.fixed_dictionaries({"text": JSON}, optional={"label": JSON})
    | st.fixed_dictionaries({"messages": st.lists(MESSAGE | JSON, max_size=3)}, optional={"label": JSON})
)


@SETTINGS
@given(rows=st.lists(ROWS, min_size=1, max_size=5), ascii_only=st.booleans())
def test_random_json_lines_are_read_or_refused_as_data_errors(
    tmp_path: Path, tokenizer: Any, rows: list[Any], ascii_only: bool
) -> None:
    path = tmp_path / "random.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows), encoding="utf-8", errors="surrogatepass"
    )
    _load(path, tokenizer)


@SETTINGS
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".txt"]))
def test_random_bytes_as_text_data_are_read_or_refused(
    tmp_path: Path, tokenizer: Any, data: bytes, suffix: str
) -> None:
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    _load(path, tokenizer)


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    return out.getvalue()


ARRAYS = st.sampled_from(
    [
        np.zeros((3, 4), np.int64),
        np.ones((2, 5), np.int32),
        np.arange(6, dtype=np.uint64).reshape(3, 2) * np.uint64(2**62),
        np.array([[-1, 2]], np.int64),
        np.zeros((), np.int64),
        np.zeros((0, 4), np.int64),
        np.array([["a", "b"]]),
        np.array([[1.5, np.nan]]),
        np.zeros((2, 2), np.complex64),
        np.array([[object()]], dtype=object),
        np.zeros((2,), dtype=[("a", "i4"), ("b", "f4")]),
    ]
)
# Both inputs are always there, so the checks after unpacking are reached too.
MEMBERS = st.fixed_dictionaries(
    {"input_ids": ARRAYS, "attention_mask": ARRAYS}, optional={"labels": ARRAYS, "inputs": ARRAYS, "other": ARRAYS}
)


@SETTINGS
@given(
    members=MEMBERS,
    damage=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=2),
    compress=st.booleans(),
)
def test_random_npz_archives_are_read_or_refused(
    tmp_path: Path, members: dict[str, np.ndarray], damage: list[tuple[int, int]], compress: bool
) -> None:
    path = tmp_path / "random.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        for name, array in members.items():
            archive.writestr(f"{name}.npy", _npy(array))
    data = bytearray(path.read_bytes())
    for offset, value in damage:  # bytes overwritten anywhere: headers, sizes, array data
        data[offset % len(data)] = value
    path.write_bytes(bytes(data))
    _load(path, None)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes_as_npz_are_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.npz"
    path.write_bytes(data)
    with pytest.raises(DataError):
        load_source(
            DataSource.model_validate({"uri": "file://random.npz"}),
            "spec.data.calibration",
            DECLARED,
            lambda uri: path,
            "train",
            lambda: None,
        )


def test_an_npy_file_named_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "array.npz"
    path.write_bytes(_npy(np.zeros((2, 4), np.int64)))
    with pytest.raises(DataError, match=r"array\.npz is not an \.npz file \(a zip of \.npy arrays"):
        _load_strict(path)


def test_an_archive_that_unpacks_past_the_workers_memory_is_refused_before_unpacking(tmp_path: Path) -> None:
    path = _lying_npz(tmp_path / "bomb.npz", memory_bytes() + 1)
    with pytest.raises(DataError, match=r"bomb\.npz unpacks to \d+ bytes, more than this worker's memory"):
        _load_strict(path)
    # The same archive declaring its true size loads: only the size is refused.
    _load_strict(_lying_npz(tmp_path / "honest.npz", None))


def test_negative_labels_and_scalar_arrays_are_refused(tmp_path: Path) -> None:
    ids = np.ones((2, 4), np.int64)
    np.savez(tmp_path / "neg.npz", input_ids=ids, attention_mask=ids, labels=np.array([0, -3]))
    with pytest.raises(DataError, match=r"`labels` are class indices from 0 to 2147483647; these run from -3 to 0"):
        _load_strict(tmp_path / "neg.npz")
    np.savez(tmp_path / "scalar.npz", input_ids=np.int64(3), attention_mask=ids)
    with pytest.raises(DataError, match=r"array 'input_ids' is a single value; it must be \(N, \.\.\.\)"):
        _load_strict(tmp_path / "scalar.npz")


def _load_strict(path: Path) -> None:
    source = DataSource.model_validate({"uri": f"file://{path}"})
    load_source(source, "spec.data.calibration", DECLARED, lambda uri: path, "train", lambda: None)


def _lying_npz(path: Path, declared_size: int | None) -> Path:
    """A one-array .npz (input_ids and attention_mask, both stored) whose zip directory declares
    `declared_size` bytes for the first array (ZIP64, as a real multi-gigabyte archive does)."""
    entries, central, offset = b"", b"", 0
    for number, name in enumerate((b"input_ids.npy", b"attention_mask.npy")):
        data = _npy(np.ones((2, 4), np.int64))
        crc = zlib.crc32(data)
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, len(data), len(data), len(name), 0)
        lying = number == 0 and declared_size is not None
        extra = struct.pack("<HHQ", 1, 8, declared_size) if lying else b""
        size = 0xFFFFFFFF if lying else len(data)
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                45,
                45,
                0,
                0,
                0,
                0,
                crc,
                len(data),
                size,
                len(name),
                len(extra),
                0,
                0,
                0,
                0,
                offset,
            )
            + name
            + extra
        )
        entry = local + name + data
        entries += entry
        offset += len(entry)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 2, 2, len(central), len(entries), 0)
    path.write_bytes(entries + central + end)
    return path


# --- `kompression run` on hostile data: exit 4, one clear line, no traceback ---------------------


@pytest.fixture(scope="module")
def looping_bert(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _chat_folder(tiny_bert, tmp_path_factory.mktemp("looping") / "encoder", LOOPS)


def _run(tmp_path: Path, model: Path, data: Path) -> subprocess.CompletedProcess[str]:
    text_only = {"maxLength": 16} if data.suffix == ".jsonl" else {}
    body = job(
        f"file://{model}",
        f"file://{tmp_path}/out/",
        steps=[{"name": "int8", "quantize": {"method": "DynamicInt8"}}],
        data={"evaluation": {"uri": f"file://{data}", "metric": "CosineSimilarity"} | text_only},
    )
    body["spec"]["model"] = {"uri": f"file://{model}", "format": "HuggingFace", "inputs": encoder_inputs(16)}
    return subprocess.run(
        [sys.executable, "-m", "kompression.cli", "run", str(write_job(tmp_path / "job.yaml", body))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _hostile_runs() -> Iterator[tuple[str, str, str]]:
    """(name, the data file's .jsonl text, what the error says)."""
    yield "nested", '{"text": "a cat"}\n' + "[" * 50_000 + "]" * 50_000 + "\n", "line 2: its JSON is nested too deeply"
    yield "surrogate", '{"text": "a cat \\ud800"}\n', "line 1: holds a lone UTF-16 surrogate"
    yield (
        "loops",
        json.dumps({"messages": [{"role": "user", "content": SENTENCES[0]}]}) + "\n",
        "line 1: the model's chat template ran longer than 5 s",
    )


@pytest.mark.parametrize("case", list(_hostile_runs()), ids=[r[0] for r in _hostile_runs()])
def test_kompression_run_on_hostile_text_exits_4_without_a_traceback(
    tiny_bert: Path, looping_bert: Path, tmp_path: Path, case: tuple[str, str, str]
) -> None:
    name, text, message = case
    data = tmp_path / "hostile.jsonl"
    data.write_text(text)
    proc = _run(tmp_path, looping_bert if name == "loops" else tiny_bert, data)
    assert proc.returncode == ExitCode.DATA_ERROR, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"spec.data.evaluation: hostile.jsonl {message}" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_kompression_run_on_a_zip_bomb_exits_4_without_a_traceback(tiny_bert: Path, tmp_path: Path) -> None:
    data = _lying_npz(tmp_path / "bomb.npz", memory_bytes() + 1)
    proc = _run(tmp_path, tiny_bert, data)
    assert proc.returncode == ExitCode.DATA_ERROR, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "spec.data.evaluation: bomb.npz unpacks to" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("technique", ["fine-tune", "distill"])
def test_a_label_past_the_models_classes_is_a_data_error_not_an_index_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, technique: str
) -> None:
    # The Digits CNN has ten outputs; the last sample's label is 10.
    train = Dataset({"x": np.zeros((8, 1, 8, 8), np.float32)}, np.array([0, 1, 2, 3, 4, 5, 6, 10]))
    message = r"spec\.data\.training: label 10 is not a class of the model, whose output has 10 \(labels 0 to 9\)"
    if technique == "fine-tune":
        with pytest.raises(DataError, match=message):
            fine_tune(DigitsCNN(), train, FineTune(epochs=1, batchSize=8), "cpu", progress=lambda f, m: None)
        return
    monkeypatch.setenv(ENV_ARCHITECTURE_MODULES, "factories")  # the student is a test class
    student = {"architecture": "factories:DigitsCNN", "architectureArguments": {"width": 6, "hidden": 32}}
    step = {"name": "kd", "distill": {"student": student, "epochs": 1, "batchSize": 8}}
    teacher = TorchModel(DigitsCNN().eval(), (torch.zeros(1, 1, 8, 8),))
    ctx = make_ctx(step, tmp_path, teacher=teacher, data=DataSets(training=train))
    with pytest.raises(DataError, match=message):
        TECHNIQUES[DistillStep](teacher, ctx)
