"""End to end through `kompression run` with the real techniques on tiny models: publication, reports,
progress channel, gates, the Auto search's float fallback, distillation resumed after a kill, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import NoneType
from typing import Any, get_args

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from factories import files_under, job, npz, save_tiny, train_on_digits, write_job
from kompression.api.constants import ExitCode
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import TECHNIQUE_FIELDS, Step
from kompression.cli import main
from kompression.worker.data.arrays import digits
from kompression.worker.formats import torch_export
from kompression.worker.model import TorchModel
from kompression.worker.report.files import load_report
from kompression.worker.storage import publish
from kompression.worker.techniques import TECHNIQUES

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def env(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KOMPRESSION_STORAGE_RETRIES", "2")
    monkeypatch.setenv("KOMPRESSION_STORAGE_BACKOFF_SECONDS", "0")
    return workdir


def termination(env: Path) -> WorkerReport:
    text = (env / "termination-log").read_text()
    assert len(text.encode()) < 4096
    return WorkerReport.model_validate_json(text)


def test_run_publishes_model_reports_and_manifest(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    steps = [{"name": "shrink", "prune": {"method": "L1Structured", "sparsity": 0.5}}]
    # Tiny's .pt2 is mostly graph metadata (10 KB of JSON around 5 KB of weights), so halving its
    # channels shrinks the file by a few percent only; the parameter count below shows the cut.
    body = job("file://model.pt2", "file://out/", steps, acceptance={"minCompressionRatio": 1.02})
    assert main(["run", str(write_job(env / "job.yaml", body)), "--progress", "json"]) == ExitCode.OK
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events][-1] == "Finished" and events[-1]["percent"] == 100
    assert any(e["event"] == "StepFinished" and e["step"] == "shrink" for e in events)

    manifest = publish.read_manifest("file://out/")
    assert manifest is not None and manifest["passed"] is True
    fetched = publish.fetch_published("file://out/", env / "fetched")  # verifies every sha256
    assert {
        "model.pt2",
        "model.safetensors",
        "report.json",
        "report.md",
        "size.png",
        "accuracy.png",
        "latency.png",
    } <= set(fetched)
    report = load_report(fetched["report.json"])
    assert report.result is not None and report.result.compressionRatio is not None
    assert report.result.compressionRatio > 1.02 and report.result.gatesPassed
    assert report.result.final is not None and report.result.final.parameters is not None
    assert report.result.final.parameters < 0.6 * 1370  # half the channels of Tiny's conv really went
    assert report.environment is not None and report.environment.torch
    markdown = fetched["report.md"].read_text()
    assert "![size](size.png)" in markdown
    # Where every row ran: a CPU job measures the original and the pruned model with PyTorch on the CPU.
    assert "device" in markdown and "provider" in markdown
    assert "original on CPU with PyTorch, final on CPU with PyTorch" in markdown
    final = termination(env)
    assert final.phase == "Succeeded" and final.result is not None
    assert final.result.final is not None and (final.result.final.device, final.result.final.provider) == (
        "CPU",
        "PyTorch",
    )
    finished = [e["metrics"] for e in events if e["event"] == "StepFinished"]  # the steps' status metrics
    assert [(m["device"], m["provider"]) for m in finished] == [("CPU", "PyTorch")]
    assert any(a.kind == "Manifest" for a in final.artifacts)
    assert not (env / "out" / "checkpoints").exists()


def test_onnx_steps_are_measured_on_the_onnxruntime_provider_of_the_jobs_device(env: Path) -> None:
    save_tiny(env / "model.pt2")
    path = write_job(env / "job.yaml", job("file://model.pt2", "file://out/"))  # DynamicInt8 -> ONNX
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.OK
    report = load_report(publish.fetch_published("file://out/", env / "fetched")["report.json"])
    assert report.result is not None and report.result.baseline and report.result.final
    assert (report.result.baseline.device, report.result.baseline.provider) == ("CPU", "PyTorch")
    assert (report.result.final.device, report.result.final.provider) == ("CPU", "CPUExecutionProvider")
    assert report.result.speedupBaseline is None  # one device: the speedup is the plain ratio
    assert report.result.speedup == round(report.result.baseline.latencyMs / report.result.final.latencyMs, 4)  # type: ignore[operator]


def test_rerun_is_idempotent_and_keeps_at_most_two_runs(env: Path) -> None:
    save_tiny(env / "model.pt2")
    path = write_job(env / "job.yaml", job("file://model.pt2", "file://out/"))
    names = []
    for _ in range(3):
        assert main(["run", str(path), "--progress", "json"]) == ExitCode.OK
        manifest = publish.read_manifest("file://out/")
        assert manifest is not None
        names.append(sorted(a["uri"].rsplit("/", 1)[1] for a in manifest["artifacts"]))
    assert names[0] == names[1] == names[2]
    assert len(list((env / "out" / "runs").iterdir())) == 2  # the current run and the previous one


def test_crash_before_manifest_leaves_the_previous_result(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_tiny(env / "model.pt2")
    path = write_job(env / "job.yaml", job("file://model.pt2", "file://out/"))
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.OK
    before = publish.read_manifest("file://out/")

    def crash(self: publish.Publisher, metadata: dict[str, Any]) -> None:
        raise RuntimeError("killed between artifacts and manifest")

    monkeypatch.setattr(publish.Publisher, "commit", crash)
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.UNEXPECTED
    assert publish.read_manifest("file://out/") == before  # the reader still sees the complete old run
    publish.fetch_published("file://out/", env / "fetched")


def test_crash_before_first_manifest_publishes_nothing(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_tiny(env / "model.pt2")
    path = write_job(env / "job.yaml", job("file://model.pt2", "file://out/"))
    monkeypatch.setattr(
        publish.Publisher, "commit", lambda self, metadata: (_ for _ in ()).throw(RuntimeError("killed"))
    )
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.UNEXPECTED
    assert publish.read_manifest("file://out/") is None


def test_gate_failure_keeps_best_model_under_rejected(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    path = write_job(env / "job.yaml", job("file://model.pt2", "file://out/", acceptance={"minCompressionRatio": 50}))
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.GATE_FAILED
    err = capsys.readouterr().err
    assert "minCompressionRatio" in err and "below the minimum 50.00x" in err and "Traceback" not in err
    assert publish.read_manifest("file://out/") is None
    rejected = publish.read_manifest("file://out/rejected")
    assert rejected is not None and rejected["passed"] is False
    final = termination(env)
    assert final.phase == "Failed" and final.reason == "GateFailed"
    assert final.result is not None and not final.result.gatesPassed


OUTLIER = 1000.0


def _mlp_with_an_outlier_input(folder: Path) -> None:
    """A trained MLP and Digits data whose first pixel (always 0 in Digits) reads OUTLIER.

    The first layer ignores that pixel (its weights there are zero), so in float the model is the
    trained one; in int8 that layer's input gets one per-tensor range [0, OUTLIER] and every real
    pixel rounds to zero: the activation-outlier case the Auto search's float fallback is for.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    assert not digits("train").inputs["x"][:, 0, 0, 0].any()
    train_on_digits(model, epochs=8)
    with torch.no_grad():
        model[1].weight[:, 0] = 0
    torch_export.save_torch_export(TorchModel(model.eval(), (torch.zeros(1, 1, 8, 8),)), folder / "model.pt2")
    for split, name in (("train", "calibration"), ("eval", "evaluation")):
        data = digits(split)
        inputs = data.inputs["x"].copy()
        inputs[:, 0, 0, 0] = OUTLIER
        npz(folder / f"{name}.npz", inputs, data.labels)


def _assert_float_and_int8_layers(published: Path, float_layers: set[str]) -> None:
    """The published QDQ graph computes float_layers in float (float weights, and an input no int8
    rounding went through) and every other layer in int8 (QDQ on input and weight)."""
    graph = onnx.load(str(published)).graph
    produced_by = {out: node for node in graph.node for out in node.output}
    layers = {node.name: node for node in graph.node if node.op_type in ("Gemm", "MatMul", "Conv")}
    assert set(layers) == {"/1/Gemm", "/3/Gemm", "/5/Gemm"}
    assert not any(node.op_type.startswith(("QLinear", "MatMulInteger", "ConvInteger")) for node in graph.node)

    def dequantized(name: str) -> bool:
        return name in produced_by and produced_by[name].op_type == "DequantizeLinear"

    initializers = {t.name: t for t in graph.initializer}
    for name, layer in layers.items():
        if name in float_layers:
            assert layer.input[1] in initializers and initializers[layer.input[1]].data_type == onnx.TensorProto.FLOAT
            assert not dequantized(layer.input[0]) and not dequantized(layer.input[1]), name
        else:
            assert dequantized(layer.input[0]) and dequantized(layer.input[1]), name


def _outlier_job(quantize: dict[str, Any], acceptance: dict[str, Any]) -> dict[str, Any]:
    return job(
        "file://model.pt2",
        "file://out/",
        steps=[{"name": "int8", "quantize": quantize}],
        data={
            "evaluation": {"uri": "file://evaluation.npz"},
            "calibration": {"uri": "file://calibration.npz", "samples": 128},
        },
        acceptance={"maxAccuracyDrop": 0.02, **acceptance},
    )


def test_auto_strategy_keeps_the_int8_sensitive_layer_in_float_in_the_published_onnx(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mlp_with_an_outlier_input(env)
    # excludeLayers replaces the step's own measured choice, so the spec's trial is int8 up to the head;
    # the next trial adds the layer the step measures as the most int8-sensitive of the others.
    body = _outlier_job({"method": "StaticInt8", "excludeLayers": ["5"]}, {"strategy": "Auto", "maxTrials": 3})
    assert main(["run", str(write_job(env / "job.yaml", body)), "--progress", "json"]) == ExitCode.OK
    trials = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    accuracies = [e["metrics"]["accuracy"] for e in trials if e["event"] == "StepFinished"]
    assert len(accuracies) == 2  # the spec's trial, then the most sensitive layer in float too
    assert accuracies[0] < 0.3 and accuracies[1] > 0.85  # int8 at the outlier input collapsed; the fallback did not

    fetched = publish.fetch_published("file://out/", env / "fetched")
    report = json.loads(fetched["report.json"].read_text())
    notes = report["details"]["models"][1]["notes"]
    assert notes["floatLayersAddedByAuto"].startswith("1 (")  # measured as the most sensitive, error in brackets
    assert notes["floatLayers"] == f"5, {notes['floatLayersAddedByAuto']}"  # added to the step's own choice
    assert report["result"]["gates"][0]["passed"]
    _assert_float_and_int8_layers(fetched["model.int8.onnx"], {"/1/Gemm", "/5/Gemm"})


def test_int8_by_default_keeps_the_outlier_layer_float_in_the_published_onnx(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mlp_with_an_outlier_input(env)
    body = _outlier_job({"method": "StaticInt8"}, {})
    assert main(["run", str(write_job(env / "job.yaml", body)), "--progress", "json"]) == ExitCode.OK
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert next(e["metrics"]["accuracy"] for e in events if e["event"] == "StepFinished") > 0.85

    fetched = publish.fetch_published("file://out/", env / "fetched")
    notes = json.loads(fetched["report.json"].read_text())["details"]["models"][1]["notes"]
    assert notes["floatLayers"].startswith("1 (")  # its measured int8 error in brackets
    assert notes["outputErrorWithFloatLayers"] < notes["outputErrorAllInt8"]
    _assert_float_and_int8_layers(fetched["model.int8.onnx"], {"/1/Gemm"})


@pytest.mark.slow
def test_distillation_killed_after_an_epoch_resumes_at_the_next_from_its_checkpoint_in_s3(
    env: Path, s3: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    epochs = 6
    bucket = s3.create_bucket()
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    save_tiny(env / "model.pt2")
    steps = [
        {"name": "shrink", "prune": {"method": "L1Structured", "sparsity": 0.5}},
        {"name": "kd", "distill": {"student": {"fromStep": "shrink"}, "epochs": epochs, "batchSize": 32}},
    ]
    body = job(
        "file://model.pt2", f"s3://{bucket}/out/", steps, data={"training": {"builtin": "Digits", "samples": 512}}
    )
    path = write_job(env / "job.yaml", body)

    # A real worker process, killed with SIGKILL as soon as a distillation checkpoint is in the bucket.
    proc = subprocess.Popen(
        [sys.executable, "-m", "kompression", "run", str(path), "--progress", "json"],
        cwd=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    checkpoint = None
    deadline = time.monotonic() + 180
    while checkpoint is None and proc.poll() is None and time.monotonic() < deadline:
        listed = s3.client.list_objects_v2(Bucket=bucket, Prefix="out/checkpoints/").get("Contents", [])
        checkpoint = next((o["Key"] for o in listed if o["Key"].endswith("/kd/distill.pt")), None)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert checkpoint is not None and proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    saved = torch.load(
        io.BytesIO(s3.client.get_object(Bucket=bucket, Key=checkpoint)["Body"].read()), weights_only=True
    )
    killed_after = int(saved["epoch"])
    assert 0 <= killed_after < epochs - 1  # killed mid-training, with epochs still to go
    assert publish.read_manifest(f"s3://{bucket}/out/") is None

    capsys.readouterr()
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.OK
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [e["message"] for e in events if e["event"] == "StepProgress" and e["step"] == "kd"]
    assert progress[0].startswith(f"epoch {killed_after + 2}/{epochs}:")  # 1-based: epoch k+1 runs first
    assert progress[-1].startswith(f"epoch {epochs}/{epochs}:") and len(progress) == epochs - killed_after - 1
    report = json.loads(publish.fetch_published(f"s3://{bucket}/out/", env / "fetched")["report.json"].read_text())
    notes = next(m["notes"] for m in report["details"]["models"] if m["name"] == "kd")
    assert notes["resumedAtEpoch"] == killed_after + 1 and notes["epochs"] == epochs
    assert "Contents" not in s3.client.list_objects_v2(Bucket=bucket, Prefix="out/checkpoints/")  # cleared


def test_low_rank_fine_tune_static_int8_onnx_from_a_pt2(env: Path) -> None:
    save_tiny(env / "model.pt2")  # a chain of layers: rebuilt as eager modules named as in the original
    steps = [
        {"name": "factorize", "lowRank": {"method": "SVD", "rankRatio": 0.8, "fineTune": {"epochs": 1}}},
        {"name": "int8", "quantize": {"method": "StaticInt8"}},
        {"name": "export", "onnx": {}},
    ]
    body = job("file://model.pt2", "file://out/", steps=steps, acceptance={"maxAccuracyDrop": 0.05})
    body["spec"]["data"] = {
        "evaluation": {"builtin": "Digits"},
        "calibration": {"builtin": "Digits", "samples": 64},
        "training": {"builtin": "Digits"},
    }
    assert main(["run", str(write_job(env / "job.yaml", body)), "--progress", "json"]) == ExitCode.OK
    fetched = publish.fetch_published("file://out/", env / "fetched")
    report = json.loads(fetched["report.json"].read_text())
    notes = {m["name"]: m.get("notes", {}) for m in report["details"]["models"]}
    assert notes["factorize"]["ranks"] == "classifier.1 8/10"
    assert notes["factorize"]["parameterRatio"] < 1 and report["result"]["gatesPassed"]
    graph = onnx.load(str(next(p for name, p in fetched.items() if name.endswith(".onnx")))).graph
    int8_weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    products = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert len(products) == 2 and all(any(i in int8_weights for i in n.input) for n in products)


def test_auto_strategy_keeps_more_of_a_low_rank_step_until_the_gate_passes(env: Path) -> None:
    save_tiny(env / "model.pt2")
    # Truncating the tiny model's 10-way classifier costs accuracy at every rank (about 17 points at
    # rank 4, 14 at rank 9): trials at rankRatio 0.4, 0.55, 0.7, then 0.85 (rank 9) meet the gate.
    steps = [{"name": "factorize", "lowRank": {"method": "SVD", "rankRatio": 0.4}}]
    acceptance = {"maxAccuracyDrop": 0.16, "strategy": "Auto", "maxTrials": 4}
    body = job("file://model.pt2", "file://out/", steps=steps, acceptance=acceptance)
    assert main(["run", str(write_job(env / "job.yaml", body)), "--progress", "json"]) == ExitCode.OK
    fetched = publish.fetch_published("file://out/", env / "fetched")
    report = json.loads(fetched["report.json"].read_text())
    assert report["details"]["models"][1]["notes"]["ranks"] == "classifier.1 9/10"
    assert report["result"]["gates"][0]["passed"]


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers.get("Authorization", ""), json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    _Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1/progress/ns/t", _Receiver.received
    server.shutdown()


def test_progress_reports_are_posted_with_the_token(
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    receiver: tuple[str, list[tuple[str, dict[str, Any]]]],
) -> None:
    url, received = receiver
    (env / "token").write_text("secret-token\n")
    monkeypatch.setenv("KOMPRESSION_PROGRESS_URL", url)
    monkeypatch.setenv("KOMPRESSION_PROGRESS_TOKEN_FILE", str(env / "token"))
    save_tiny(env / "model.pt2")
    path = write_job(env / "job.yaml", job("file://model.pt2", "file://out/"))
    started = time.monotonic()
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.OK
    elapsed_ms = (time.monotonic() - started) * 1000
    assert received and all(auth == "Bearer secret-token" for auth, _ in received)
    reports = [WorkerReport.model_validate(body) for _, body in received]
    sequences = [r.sequence for r in reports]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    # Milliseconds since the worker started: never beyond the pod's age, which the operator checks.
    assert sequences[-1] <= elapsed_ms + len(sequences)
    assert reports[-1].phase == "Succeeded" and reports[-1].result is not None


# --------------------------------------------------------------------------------------------
# bad input: a clear error, the documented exit code, nothing under the output prefix


def _run_bad(env: Path, body: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["run", str(write_job(env / "job.yaml", body)), "--progress", "json"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert files_under(env / "out") == []
    assert termination(env).phase == "Failed"
    return code, err


def test_missing_model(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run_bad(env, job("file://nowhere.pt2", "file://out/"), capsys)
    assert code == ExitCode.MODEL_ERROR and "file://nowhere.pt2 does not exist" in err


def test_corrupt_model(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    data = (env / "model.pt2").read_bytes()
    (env / "model.pt2").write_bytes(data[: len(data) // 2])
    code, err = _run_bad(env, job("file://model.pt2", "file://out/"), capsys)
    assert code == ExitCode.MODEL_ERROR and "model.pt2" in err


def test_wrong_format(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    body = job("file://model.pt2", "file://out/")
    body["spec"]["model"]["format"] = "ONNX"
    body["spec"]["steps"] = [{"name": "q", "quantize": {"method": "DynamicInt8"}}]
    code, err = _run_bad(env, body, capsys)
    assert code == ExitCode.MODEL_ERROR and "not a readable ONNX model" in err


def test_shape_mismatch(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    body = job("file://model.pt2", "file://out/")
    body["spec"]["model"]["inputs"] = [{"name": "x", "shape": [-1, 3, 8, 8]}]
    code, err = _run_bad(env, body, capsys)
    assert code == ExitCode.MODEL_ERROR and "'x'" in err and "[-1, 3, 8, 8]" in err and "[-1, 1, 8, 8]" in err


def test_nan_in_data(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    inputs = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    inputs[3, 0, 2, 2] = np.nan
    npz(env / "eval.npz", inputs, np.zeros(20, dtype=np.int64))
    body = job("file://model.pt2", "file://out/")
    body["spec"]["data"] = {"evaluation": {"uri": "file://eval.npz"}}
    code, err = _run_bad(env, body, capsys)
    assert code == ExitCode.DATA_ERROR and "spec.data.evaluation" in err and "NaN" in err


def test_unreachable_storage(env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:  # a port that was just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    code, err = _run_bad(env, job("s3://models/model.pt2", "file://out/"), capsys)
    assert code == ExitCode.STORAGE_ERROR and "s3://models/model.pt2" in err and "connect" in err.lower()


def test_bad_credentials(
    env: Path, s3: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.create_bucket()
    s3.client.put_object(Bucket=bucket, Key="model.pt2", Body=save_tiny(env / "model.pt2").read_bytes())
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_REGION", s3.region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    s3.set_auth("0")
    try:
        code, err = _run_bad(env, job(f"s3://{bucket}/model.pt2", "file://out/"), capsys)
    finally:
        s3.set_auth("inf")
    assert code == ExitCode.STORAGE_REFUSED and f"s3://{bucket}/model.pt2" in err and "access denied" in err


def test_student_larger_than_teacher(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    steps = [
        {
            "name": "kd",
            "distill": {
                "student": {
                    "architecture": "torchvision.models:resnet18",
                    "architectureArguments": {"num_classes": 10},
                },
                "epochs": 1,
            },
        }
    ]
    body = job("file://model.pt2", "file://out/", steps=steps)
    body["spec"]["data"] = {"evaluation": {"builtin": "Digits"}, "training": {"builtin": "Digits", "samples": 64}}
    code, err = _run_bad(env, body, capsys)
    assert code == ExitCode.STEP_INVALID and "student" in err.lower()


def test_bar_mode_keeps_library_output_off_the_terminal(env: Path) -> None:
    # onnxruntime's Entropy calibrator prints progress from C++ and Python; on a terminal that output
    # would break the bar mid-line, so `--progress bar` sends it to a log named at the end.
    save_tiny(env / "model.pt2")
    steps = [{"name": "int8", "quantize": {"method": "StaticInt8", "calibrator": "Entropy"}}]
    body = job("file://model.pt2", "file://out/", steps, data={"calibration": {"builtin": "Digits", "samples": 64}})
    path = write_job(env / "job.yaml", body)
    proc = subprocess.run(
        [sys.executable, "-m", "kompression", "run", str(path), "--progress", "bar"],
        capture_output=True,
        text=True,
        cwd=env,
        env={**os.environ, "KOMPRESSION_WORKDIR": str(env / "work")},
        timeout=240,
        check=False,
    )
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "100%" in proc.stdout and "int8" in proc.stdout and "published under file://out/" in proc.stdout
    logs = list((env / "work").glob("kompression-t-*-libraries.log"))
    assert len(logs) == 1  # the Entropy calibrator prints, so there is a log to name
    libraries = [line for line in logs[0].read_text().splitlines() if line.strip()]
    assert libraries and not any(line in proc.stdout or line in proc.stderr for line in libraries)
    assert proc.stderr.strip() == f"(output of the libraries, e.g. onnxruntime's calibrator: {logs[0]})"


def test_every_step_kind_has_one_technique_keyed_by_its_config_class() -> None:
    configs = {
        next(a for a in get_args(Step.model_fields[kind].annotation) if a is not NoneType) for kind in TECHNIQUE_FIELDS
    }
    assert set(TECHNIQUES) == configs


def test_the_registry_names_its_techniques_without_importing_their_libraries() -> None:
    """Each technique is imported when its step runs: importing the pipeline and the registry loads
    neither image's libraries, and every name points at a function of a module that exists."""
    code = """
import importlib.util, sys
from kompression.worker import cli, pipeline
from kompression.worker.techniques import TECHNIQUES
libraries = ('onnx', 'onnxruntime', 'torch_pruning', 'tensorly', 'llmcompressor', 'modelopt')
print(sorted(m for m in libraries if m in sys.modules))
for technique in TECHNIQUES.values():
    print(technique.ref, importlib.util.find_spec(technique.ref.partition(':')[0]).origin)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, *refs = proc.stdout.splitlines()
    assert loaded == "[]"
    assert len(refs) == len(TECHNIQUE_FIELDS)
    for line in refs:
        ref, origin = line.split()
        assert f"\ndef {ref.partition(':')[2]}(" in Path(origin).read_text(), ref


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for a worker that sees no CUDA device")
def test_a_step_that_declares_a_gpu_fails_before_any_work_where_none_is_visible(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # resources.gpus 1 passes validation; the node gave the pod no CUDA device (a missing driver, a
    # CPU node): the step's declared need is checked before the model is even fetched.
    steps = [{"name": "fp8", "quantize": {"method": "FP8"}}]
    body = job("file://missing.pt2", "file://out/", steps, resources={"gpus": 1})
    assert main(["run", str(write_job(env / "job.yaml", body))]) == ExitCode.RUNTIME_MISSING
    err = capsys.readouterr().err
    assert "step fp8: quantize with method FP8 needs a GPU; set resources.gpus to at least 1 on a node with FP8" in err
    assert "this worker sees no CUDA device" in err and "Traceback" not in err
    assert termination(env).reason == "RuntimeMissing"
    assert not (env / "out").exists()
