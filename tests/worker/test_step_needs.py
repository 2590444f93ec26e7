"""What the worker reads from the steps' declarations, in its one place (step_needs.job_needs), and
the one size every model kind is measured by (formats.model_size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from factories import job
from kompression.api.validation import parse_job
from kompression.worker import formats, step_needs
from kompression.worker.errors import RuntimeMissing
from kompression.worker.trial import job_device

TEXT = {"uri": "file:///data/train.txt", "samples": 8, "maxLength": 32}
LLM_INPUTS = [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}]


def _llm_job(steps: list[dict[str, Any]], gpus: int = 0) -> Any:
    body = job(
        "file:///models/llama/",
        "file:///out/",
        steps,
        data={"calibration": TEXT, "evaluation": TEXT},
        resources={"gpus": gpus},
    )
    body["spec"]["model"] = {"uri": "file:///models/llama/", "format": "HuggingFace", "inputs": LLM_INPUTS}
    return parse_job(body)


def test_llm_steps_need_the_llm_environment_and_only_calibrating_steps_read_text() -> None:
    needs = step_needs.job_needs(
        _llm_job(
            [
                {"name": "prune", "llmSparsify": {"method": "Wanda"}},
                {"name": "rtn", "llmQuantize": {"scheme": "W4A16", "algorithm": "RTN"}},
            ]
        )
    )
    assert needs.llm
    assert needs.calibration_text == {"prune"}  # Wanda chooses its zeros from text; RTN rounds without any
    assert needs.gpu_only == ()
    assert not step_needs.job_needs(parse_job(job("file:///m.pt2", "file:///out/"))).llm


def test_a_gpu_only_scheme_fails_before_any_work_on_a_worker_without_a_gpu() -> None:
    nvfp4 = _llm_job([{"name": "q", "llmQuantize": {"scheme": "NVFP4"}}])
    assert step_needs.job_needs(nvfp4).gpu_only
    with pytest.raises(RuntimeMissing, match=r"scheme NVFP4 is a GPU-only format .*, and resources\.gpus is 0"):
        job_device(nvfp4)
    assert job_device(_llm_job([{"name": "q", "llmQuantize": {"scheme": "W4A16", "algorithm": "RTN"}}])) == "cpu"


def test_every_model_is_sized_by_the_files_that_hold_its_weights(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "shards").mkdir(parents=True)
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"w" * 100)
    (folder / "shards" / "model-00002-of-00002.safetensors").write_bytes(b"w" * 20)
    (folder / "tokenizer.json").write_bytes(b"t" * 1000)  # no weights: not the model's size
    (folder / "config.json").write_text("{}")
    assert formats.model_size(folder) == 120
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"g" * 70)
    assert formats.model_size(graph) == 70
