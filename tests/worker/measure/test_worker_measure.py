"""Like-for-like measurement: every model runs on the job's device, ONNX on the matching onnxruntime
provider, and the speedup never compares a CPU with a GPU."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from factories import job, save_tiny, trained_tiny, write_job
from kompression.api.constants import ExitCode
from kompression.api.v1alpha1 import Acceptance, Metrics
from kompression.api.validation import parse_job
from kompression.cli import main
from kompression.worker import pipeline
from kompression.worker.measure import gates, graphs
from kompression.worker.model import Dataset, TorchModel
from kompression.worker.report import files
from kompression.worker.report.files import load_report
from kompression.worker.report.live import Reporter
from kompression.worker.steps.onnx_io import export_onnx
from kompression.worker.storage import publish
from kompression.worker.trial import default_techniques, load, run_steps, score_trial

pytestmark = pytest.mark.usefixtures("one_thread")


CUDA_EP_HERE = "CUDAExecutionProvider" in ort.get_available_providers()
BOTH = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("device", "available", "chosen"),
    [
        ("cuda", BOTH, BOTH),  # GPU job, onnxruntime-gpu: CUDA first, CPU for nodes without a CUDA kernel
        ("cuda:1", ["TensorrtExecutionProvider", *BOTH], BOTH),  # a torchrun rank's device; TensorRT EP unused
        ("cuda", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),  # GPU job, CPU-only onnxruntime
        ("cpu", BOTH, ["CPUExecutionProvider"]),  # CPU job: never the GPU, even where there is one
        ("cuda", ort.get_available_providers(), BOTH if CUDA_EP_HERE else ["CPUExecutionProvider"]),  # this one
    ],
)
def test_onnx_models_run_on_the_provider_of_the_jobs_device(
    device: str, available: list[str], chosen: list[str]
) -> None:
    assert graphs.onnx_providers(device, available) == chosen


def test_a_gpu_job_without_the_cuda_provider_runs_onnx_on_the_cpu_and_says_so(tmp_path: Path) -> None:
    if CUDA_EP_HERE:
        pytest.skip("this onnxruntime has CUDAExecutionProvider; the GPU test covers it")
    model = TorchModel(trained_tiny(), (torch.zeros(1, 1, 8, 8),))
    onnx_model = export_onnx(model, tmp_path / "tiny.onnx", ["x"])
    batch = [np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)]
    on_gpu_job = graphs.runner(onnx_model, 1, "cuda")
    assert (on_gpu_job.device, on_gpu_job.provider) == ("CPU", "CPUExecutionProvider")
    eager = graphs.runner(model, 1, "cpu")
    assert (eager.device, eager.provider) == ("CPU", "PyTorch")
    np.testing.assert_allclose(on_gpu_job.run(batch), eager.run(batch), atol=1e-5)


def _metrics(device: str, latency: float, provider: str) -> Metrics:
    return Metrics.model_validate({"sizeBytes": 1000, "latencyMs": latency, "device": device, "provider": provider})


def test_the_speedup_compares_one_device_only() -> None:
    gpu_original = _metrics("GPU", 2.0, "PyTorch")
    cpu_final = _metrics("CPU", 1.0, "CPUExecutionProvider")
    gpu_final = _metrics("GPU", 0.5, "CUDAExecutionProvider")
    acceptance = Acceptance(minSpeedup=1.5)

    same = gates.compute_result(gpu_original, gpu_final)
    assert same.speedup == 4.0 and same.speedupBaseline is None

    # The original re-timed on the final model's device: CPU against CPU.
    cpu_original = _metrics("CPU", 3.0, "PyTorch")
    retimed = gates.compute_result(gpu_original, cpu_final, cpu_original)
    assert retimed.speedup == 3.0 and retimed.speedupBaseline == cpu_original and retimed.baseline == gpu_original

    # Without a figure on the final's device there is no speedup: the gate fails and says why.
    unlike = gates.compute_result(gpu_original, cpu_final)
    assert unlike.speedup is None
    unlike.gates = gates.evaluate(acceptance, unlike)
    assert [g.passed for g in unlike.gates] == [False]
    message = gates.describe_failures(unlike)
    assert "original ran on GPU, the final model on CPU" in message and "never compared" in message


def test_a_final_model_off_the_jobs_device_is_compared_with_the_original_timed_there(tmp_path: Path) -> None:
    save_tiny(tmp_path / "model.pt2")
    body = job(f"file://{tmp_path}/model.pt2", f"file://{tmp_path}/out/", acceptance={"minSpeedup": 0.01})
    parsed = parse_job(body)
    loaded = load(parsed, parsed.spec.output.uri, tmp_path, Reporter(parsed, mode="quiet"))
    assert (loaded.baseline.metrics.device, loaded.baseline.metrics.provider) == ("CPU", "PyTorch")
    # The one seam: this machine has no GPU, so the baseline is labelled as a GPU job's would be (the
    # original timed on the GPU). Everything after reads only that label; the rest is real: the
    # DynamicInt8 step's ONNX runs on onnxruntime's CPU provider, as on a GPU job whose onnxruntime
    # has no CUDAExecutionProvider, and the original is re-timed on the CPU for the speedup.
    loaded.baseline.metrics.device = "GPU"
    records = run_steps(loaded, parsed.spec.steps, default_techniques(), Reporter(parsed, "quiet"), 0)
    trial = score_trial(loaded, parsed.spec.steps, records)

    result = trial.result
    assert result.final is not None and (result.final.device, result.final.provider) == ("CPU", "CPUExecutionProvider")
    retimed = result.speedupBaseline
    assert retimed is not None and (retimed.device, retimed.provider) == ("CPU", "PyTorch")
    assert retimed.latencyMs is not None and result.final.latencyMs is not None
    assert result.speedup == round(retimed.latencyMs / result.final.latencyMs, 4)
    assert result.baseline is not None and result.baseline.device == "GPU"  # the original's row is unchanged
    assert [g.name for g in result.gates if g.passed] == ["minSpeedup"]
    assert score_trial(loaded, parsed.spec.steps, records).result.speedupBaseline == retimed  # timed once

    rows = pipeline.rows_for(loaded, trial)
    markdown = files.write_markdown(
        Reporter(parsed, "quiet").report.model_copy(update={"result": result}), rows, [], "t", tmp_path / "r.md"
    ).read_text()
    assert "final on CPU with CPUExecutionProvider" in markdown
    assert "the final model did not run on the job's GPU, so the original was re-measured on CPU" in markdown
    table = files.table(rows).splitlines()
    assert table[0].split()[-2:] == ["device", "provider"]
    assert table[2].split()[-2:] == ["GPU", "PyTorch"] and table[3].split()[-2:] == ["CPU", "CPUExecutionProvider"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_a_gpu_job_measures_every_row_on_the_gpu_or_says_where_it_ran(tmp_path: Path) -> None:
    save_tiny(tmp_path / "model.pt2")
    body = job(f"file://{tmp_path}/model.pt2", f"file://{tmp_path}/out/", resources={"gpus": 1})
    body["spec"]["steps"] = [
        {"name": "shrink", "prune": {"method": "L1Structured", "sparsity": 0.5}},
        {"name": "int8", "quantize": {"method": "DynamicInt8"}},
    ]
    assert main(["run", str(write_job(tmp_path / "job.yaml", body)), "--progress", "quiet"]) == ExitCode.OK
    report = load_report(publish.fetch_published(f"file://{tmp_path}/out/", tmp_path / "fetched")["report.json"])
    result = report.result
    assert result is not None and result.baseline is not None and result.final is not None
    assert (result.baseline.device, result.baseline.provider) == ("GPU", "PyTorch")
    pruned = next(s.metrics for s in report.steps if s.name == "shrink")
    assert pruned is not None and (pruned.device, pruned.provider) == ("GPU", "PyTorch")
    if CUDA_EP_HERE:
        assert (result.final.device, result.final.provider) == ("GPU", "CUDAExecutionProvider")
        assert result.speedupBaseline is None
    else:
        assert (result.final.device, result.final.provider) == ("CPU", "CPUExecutionProvider")
        assert result.speedupBaseline is not None and result.speedupBaseline.device == "CPU"


def test_evaluation_runs_in_the_data_sets_batch_size() -> None:
    seen: list[int] = []

    def forward(batch: Sequence[np.ndarray]) -> np.ndarray:
        seen.append(len(batch[0]))
        return batch[0].reshape(len(batch[0]), -1)

    data = Dataset({"x": np.arange(20, dtype=np.float32).reshape(10, 2)}, batch_size=4)
    outputs = graphs.predict(forward, data)
    assert seen == [4, 4, 2]
    assert np.array_equal(outputs, data.inputs["x"])
