"""The LLM path's tests run in the worker-llm environment (.venv-llm: llm-compressor with its own
torch): `make test-llm`, which `make test` runs, calls `.venv-llm/bin/pytest tests/llm
--confcutdir=tests/llm`. In the main environment they are skipped, since llm-compressor cannot be
installed there (it pins torch <= 2.14); tests/test_missing_extras.py covers what `kompression run`
says in that environment instead."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# tests/ itself, for the helpers both environments' tests share (hostile.py); tests/conftest.py,
# which puts it there for the main suite, is outside --confcutdir.
_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.append(_TESTS_DIR)

from llm_jobs import Texts  # noqa: E402

from kompression.worker.llm.tiny_llama import paragraphs  # noqa: E402


@pytest.fixture(scope="session")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Texts:
    """The fixture model's split of Debian's license texts (example_model.build makes the same one)."""
    folder = tmp_path_factory.mktemp("text")
    everything = paragraphs()
    held_out = everything[::10]
    train = [t for i, t in enumerate(everything) if i % 10]
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "eval.txt").write_text("\n".join(held_out) + "\n")
    (folder / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in held_out))
    return Texts(folder / "train.txt", folder / "eval.txt", folder / "eval.jsonl")
