"""`kompression plan`, what the operator's planning pod runs before an LLM job's worker Job exists:
it prints the plan and leaves it as the termination message the operator reads, from config.json
and the safetensors headers alone (a folder whose weights are cut off plans the same); a folder
the worker refuses to read fails it with the worker's reason and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kompression.api import memory_plan
from kompression.api.constants import ExitCode
from kompression.api.v1alpha1 import CompressionJob
from kompression.worker import memory
from kompression.worker.report.live import ENV_TERMINATION_LOG

TINY_LLAMA = Path(__file__).resolve().parents[1] / "llm" / "fixtures" / "tiny-llama"


def _manifest(model: Path, out: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "tiny-llama"},
        "spec": {
            "model": {
                "uri": f"file://{model}",
                "format": "HuggingFace",
                "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
            },
            "data": {"calibration": {"uri": "file:///nowhere/calibration.txt", "samples": 32, "maxLength": 128}},
            "steps": [{"name": "quantize", "llmQuantize": {"scheme": "W4A16", "algorithm": "GPTQ"}}],
            "output": {"uri": f"file://{out}"},
            "resources": {"gpus": 0},
        },
    }


def _plan(tmp_path: Path, doc: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    termination = tmp_path / "termination-log"
    env = {**os.environ, ENV_TERMINATION_LOG: str(termination)}
    proc = subprocess.run(
        [sys.executable, "-m", "kompression", "plan", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc, json.loads(termination.read_text())


def _headers_only(tmp_path: Path) -> Path:
    """The tiny Llama with every weight cut off its safetensors file: the 8 bytes of length and the header."""
    folder = tmp_path / "headers-only"
    folder.mkdir()
    for path in TINY_LLAMA.iterdir():
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            data = data[: memory_plan.HEADER_LENGTH_BYTES + memory_plan.header_length(data)]
            assert len(data) < path.stat().st_size // 100  # the weights are (nearly) all of it
        (folder / path.name).write_bytes(data)
    return folder


def test_the_plan_command_prints_and_leaves_the_plan_from_the_headers_alone(tmp_path: Path) -> None:
    doc = _manifest(_headers_only(tmp_path), tmp_path / "out")
    proc, report = _plan(tmp_path, doc)
    assert proc.returncode == ExitCode.OK, proc.stderr
    # The same plan as the worker makes of the whole folder before it loads it.
    whole = memory.plan(CompressionJob.model_validate(_manifest(TINY_LLAMA, tmp_path / "out")))
    assert whole is not None
    assert report["phase"] == "Succeeded" and report["memoryPlan"] == whole.to_wire()
    assert json.loads(proc.stdout)["memoryPlan"] == whole.to_wire()
    assert report["message"] == f"planned {whole.describe()}"


def test_a_job_without_an_llm_step_gets_no_plan(tmp_path: Path) -> None:
    doc = _manifest(TINY_LLAMA, tmp_path / "out")
    doc["spec"]["model"] = {**doc["spec"]["model"], "uri": f"file://{tmp_path}/model.onnx", "format": "ONNX"}
    doc["spec"]["steps"] = [{"name": "int8", "quantize": {"method": "DynamicInt8"}}]
    del doc["spec"]["data"]
    proc, report = _plan(tmp_path, doc)
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert report["phase"] == "Succeeded" and "memoryPlan" not in report


def test_a_folder_the_worker_refuses_fails_the_plan_with_its_reason(tmp_path: Path) -> None:
    folder = _headers_only(tmp_path)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(TINY_LLAMA / "config.json")
    proc, report = _plan(tmp_path, _manifest(folder, tmp_path / "out"))
    assert proc.returncode == ExitCode.MODEL_ERROR
    assert report["phase"] == "Failed" and report["reason"] == "ModelError"
    assert "config.json is a symbolic link" in report["message"]
