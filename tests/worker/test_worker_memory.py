"""The worker's memory plan for an LLM job (worker/memory.py): config.json and the safetensors
headers read where the model lies, on the local disk and on the test bed's S3 server (ranged
reads), and resources too small for the plan refused. tests/llm/test_llm_memory.py runs the refusal
through `kompression run` (which needs the worker-llm environment)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from kompression.api import memory_plan
from kompression.api.v1alpha1 import CompressionJob
from kompression.worker import memory
from kompression.worker.errors import ModelError, SpecError
from kompression.worker.storage import objects

TINY_LLAMA = Path(__file__).resolve().parents[1] / "llm" / "fixtures" / "tiny-llama"


def _job(model_uri: str, output_uri: str, **resources: Any) -> CompressionJob:
    return CompressionJob.model_validate(
        {
            "apiVersion": "kompression.dev/v1alpha1",
            "kind": "CompressionJob",
            "metadata": {"name": "tiny-llama"},
            "spec": {
                "model": {
                    "uri": model_uri,
                    "format": "HuggingFace",
                    "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
                },
                "data": {"calibration": {"uri": "file:///nowhere/calibration.txt", "samples": 32, "maxLength": 128}},
                "steps": [{"name": "quantize", "llmQuantize": {"scheme": "W4A16"}}],
                "output": {"uri": output_uri},
                "resources": {"gpus": 0, **resources},
            },
        }
    )


def _model_uri(where: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if where == "file":
        return f"file://{TINY_LLAMA}"
    s3 = request.getfixturevalue("s3")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{s3.create_bucket()}/models/tiny-llama"
    for path in TINY_LLAMA.iterdir():
        objects.upload(path, f"{uri}/{path.name}")
    return uri


@pytest.mark.parametrize("where", ["file", "s3"])
def test_the_plan_reads_every_tensor_from_the_headers_alone(
    where: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = _model_uri(where, request, monkeypatch)
    config, tensors = memory.read_headers(uri)
    assert config == json.loads((TINY_LLAMA / "config.json").read_text())
    with safe_open(TINY_LLAMA / "model.safetensors", "np") as f:
        real = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle is not a mapping)
        assert {k: (t.dtype, list(t.shape)) for k, t in tensors.items()} == {
            k: (s.get_dtype(), s.get_shape()) for k, s in real.items()
        }
    planned = memory.plan(_job(uri, f"file://{tmp_path}/out"))
    assert planned is not None
    assert planned.parts["weights"] == sum(t.nbytes for t in tensors.values())
    # The fixture's 3.7 MB of weights next to the worker's runtime.
    assert memory_plan.RUNTIME_HOST < planned.host < memory_plan.RUNTIME_HOST + 64 * 2**20


def test_a_job_without_an_llm_step_has_no_plan(tmp_path: Path) -> None:
    job = _job(f"file://{TINY_LLAMA}", f"file://{tmp_path}/out").model_dump(mode="json", exclude_none=True)
    job["spec"]["steps"] = [{"name": "q", "quantize": {"method": "DynamicInt8"}}]
    job["spec"]["model"] = {
        "uri": "file:///m.pt2",
        "format": "TorchExport",
        "inputs": [{"name": "x", "shape": [-1, 8]}],
    }
    job["spec"]["data"] = {"evaluation": {"builtin": "Digits"}}
    assert memory.plan(CompressionJob.model_validate(job)) is None


def test_resources_too_small_for_the_plan_are_refused_naming_numbers_and_knobs(tmp_path: Path) -> None:
    job = _job(f"file://{TINY_LLAMA}", f"file://{tmp_path}/out", memory="512Mi", ephemeralStorage="100Mi")
    planned = memory.plan(job)
    assert planned is not None
    with pytest.raises(SpecError) as err:
        memory.check(job, planned)
    message = str(err.value)
    assert f"spec.resources.memory 512Mi is less than the {memory_plan.gib(planned.host)}" in message
    assert planned.knob in message
    assert f"spec.resources.ephemeralStorage 100Mi is less than the {memory_plan.gib(planned.scratch)}" in message
    memory.check(_job(f"file://{TINY_LLAMA}", f"file://{tmp_path}/out"), planned)  # the defaults hold it


def _hostile_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for path in TINY_LLAMA.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_a_link_in_the_folder_is_refused_before_the_plan_reads_a_byte(tmp_path: Path) -> None:
    folder = _hostile_copy(tmp_path)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(TINY_LLAMA / "config.json")
    with pytest.raises(ModelError) as refused:
        memory.plan(_job(f"file://{folder}", f"file://{tmp_path}/out"))
    assert refused.value.message.startswith("spec.model.uri: ")
    assert "config.json is a symbolic link" in refused.value.message


@pytest.mark.parametrize(
    ("file", "content"),
    [
        ("config.json", b"[1, 2]"),  # not an object: the loader's vetting names it, in its words
        ("config.json", b"{" + b" " * (memory.CONFIG_MAX_BYTES + 1) + b"}"),
        ("model.safetensors", (16).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": ["x"]}}'[:16]),
        ("model.safetensors", (40).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": ["x"]}}'[:40]),
    ],
)
def test_a_folder_the_plan_cannot_read_gets_no_plan_and_is_left_to_the_vetting(
    tmp_path: Path, file: str, content: bytes
) -> None:
    folder = _hostile_copy(tmp_path)
    (folder / file).write_bytes(content)
    assert memory.plan(_job(f"file://{folder}", f"file://{tmp_path}/out")) is None


def test_an_object_key_with_dot_dot_is_refused_before_the_plan_reads_a_byte(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = _model_uri("s3", request, monkeypatch)
    objects.upload(TINY_LLAMA / "config.json", f"{uri}/sub/../config.json")
    with pytest.raises(ModelError) as refused:
        memory.plan(_job(uri, f"file://{tmp_path}/out"))
    assert refused.value.message.startswith("spec.model.uri: ")
    assert "'sub/../config.json'" in refused.value.message
