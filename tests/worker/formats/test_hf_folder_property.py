"""Random bytes and random JSON in every file of a HuggingFace folder that the worker reads (config.json,
tokenizer.json, tokenizer_config.json, a safetensors header, model.safetensors.index.json): the one
vetting and the load end in success, a ModelError or a DataError, never another exception; through
`kompression run`, in exit 0, 3 or 4, never 1 (retried) and never a traceback."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encoder_helpers import cosine_job, encoder_inputs
from kompression.api.constants import ExitCode
from kompression.api.v1alpha1 import ModelSource
from kompression.worker.data import arrays
from kompression.worker.errors import DataError, ModelError
from kompression.worker.formats import loader

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors", "model.safetensors.index.json")
# Small numbers only: a config that claims a model of a billion dimensions is a memory question,
# not a parsing one, and would only make this test slow.
SCALARS = st.none() | st.booleans() | st.integers(-4, 64) | st.floats(allow_nan=True) | st.text(max_size=12)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same folders every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def contents(draw: st.DrawFn, name: str, tiny_bert: Path) -> bytes:
    """Random bytes, random JSON, or the real file with random values under some of its keys (which
    reaches past the parsing into transformers); for safetensors, a header of random JSON."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=256))
    if name == "model.safetensors":
        real, tensors = _header(tiny_bert)
        header = json.dumps(draw(JSON) if kind == "json" else _mutated(draw, real)).encode()
        return (
            struct.pack("<Q", len(header)) + header + (tensors if kind == "mutated" else draw(st.binary(max_size=64)))
        )
    if kind == "json" or name == "model.safetensors.index.json":
        real: Any = {"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": "model.safetensors"}}
        value = draw(JSON) if kind == "json" else _mutated(draw, real)
        return json.dumps(value).encode()
    return json.dumps(_mutated(draw, json.loads((tiny_bert / name).read_text()))).encode()


def _mutated(draw: st.DrawFn, value: Any) -> Any:
    """A copy of a JSON object with random values under a few of its keys, at any depth."""
    if not isinstance(value, dict) or not value:
        return draw(JSON)
    out = dict(value)
    for key in draw(st.lists(st.sampled_from(sorted(out)), min_size=1, max_size=3, unique=True)):
        out[key] = _mutated(draw, out[key]) if draw(st.booleans()) else draw(JSON)
    return out


def _header(folder: Path) -> tuple[Any, bytes]:
    """The real file's header, and the tensor bytes after it."""
    raw = (folder / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _folder(tiny_bert: Path, root: Path, name: str, content: bytes) -> Path:
    folder = root / "bert"
    folder.mkdir()
    for path in tiny_bert.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize("name", FILES)
def test_random_folder_files_end_in_success_or_a_model_or_data_error(tiny_bert: Path, name: str) -> None:
    src = ModelSource.model_validate({"uri": "file://bert", "format": "HuggingFace", "inputs": encoder_inputs()})

    @SETTINGS
    @given(content=contents(name, tiny_bert))
    def check(content: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = _folder(tiny_bert, Path(tmp), name, content)
            try:
                loader.load_model(src, folder)
                arrays.tokenizer_for(folder, "spec.data.evaluation")("a cat", truncation=True, max_length=8)
            except (ModelError, DataError):
                pass

    check()


@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_folder_files_through_kompression_run_exit_0_3_or_4(
    tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(FILES))
    content = data.draw(contents(name, tiny_bert))
    root = tmp_path_factory.mktemp("run")
    folder = _folder(tiny_bert, root, name, content)
    proc = subprocess.run(
        [sys.executable, "-m", "kompression", "run", str(cosine_job(folder, root)), "--progress", "json"],
        input="y\n" * 10,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
        timeout=300,
    )
    assert proc.returncode in (ExitCode.OK, ExitCode.MODEL_ERROR, ExitCode.DATA_ERROR), (name, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
