"""End to end through `kompression run`: publication, reports, progress channel, gates, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from runtime_helpers import files_under, half, job, magnitude_prune, npz, save_tiny, write_job

from kompression.api.constants import ExitCode
from kompression.api.report import WorkerReport
from kompression.cli import main
from kompression.worker import pipeline, publish
from kompression.worker.reporting import load_report

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def fake_techniques(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "default_techniques", lambda: {"quantize": half, "prune": magnitude_prune})


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KOMPRESSION_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("KOMPRESSION_STORAGE_RETRIES", "2")
    monkeypatch.setenv("KOMPRESSION_STORAGE_BACKOFF_SECONDS", "0")
    return tmp_path


def termination(env: Path) -> WorkerReport:
    text = (env / "termination-log").read_text()
    assert len(text.encode()) < 4096
    return WorkerReport.model_validate_json(text)


def test_run_publishes_model_reports_and_manifest(
    env: Path, fake_techniques: None, capsys: pytest.CaptureFixture[str]
) -> None:
    save_tiny(env / "model.pt2")
    path = write_job(env / "job.yaml", job("file://model.pt2", "file://out/", acceptance={"minCompressionRatio": 1.1}))
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.OK
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
    assert report.result.compressionRatio > 1.1 and report.result.gatesPassed
    assert report.environment is not None and report.environment.torch
    assert "![size](size.png)" in fetched["report.md"].read_text()
    final = termination(env)
    assert final.phase == "Succeeded" and final.result is not None
    assert any(a.kind == "Manifest" for a in final.artifacts)
    assert not (env / "out" / "checkpoints").exists()


def test_rerun_is_idempotent_and_keeps_at_most_two_runs(env: Path, fake_techniques: None) -> None:
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


def test_crash_before_manifest_leaves_the_previous_result(
    env: Path, fake_techniques: None, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def test_crash_before_first_manifest_publishes_nothing(
    env: Path, fake_techniques: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_tiny(env / "model.pt2")
    path = write_job(env / "job.yaml", job("file://model.pt2", "file://out/"))
    monkeypatch.setattr(
        publish.Publisher, "commit", lambda self, metadata: (_ for _ in ()).throw(RuntimeError("killed"))
    )
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.UNEXPECTED
    assert publish.read_manifest("file://out/") is None


def test_gate_failure_keeps_best_model_under_rejected(
    env: Path, fake_techniques: None, capsys: pytest.CaptureFixture[str]
) -> None:
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


def test_auto_strategy_keeps_most_compressed_passing_trial(env: Path, fake_techniques: None) -> None:
    save_tiny(env / "model.pt2")
    steps = [{"name": "prune", "prune": {"method": "L1Unstructured", "sparsity": 0.97}}]
    body = job(
        "file://model.pt2",
        "file://out/",
        steps=steps,
        acceptance={"maxAccuracyDrop": 0.03, "strategy": "Auto", "maxTrials": 4},
    )
    assert main(["run", str(write_job(env / "job.yaml", body)), "--progress", "json"]) == ExitCode.OK
    fetched = publish.fetch_published("file://out/", env / "fetched")
    report = json.loads(fetched["report.json"].read_text())
    chosen = report["details"]["models"][1]["notes"]["sparsity"]
    assert chosen < 0.97  # the spec's own sparsity failed the gate; a lower one was kept
    assert report["result"]["gates"][0]["passed"]


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
    fake_techniques: None,
    monkeypatch: pytest.MonkeyPatch,
    receiver: tuple[str, list[tuple[str, dict[str, Any]]]],
) -> None:
    url, received = receiver
    (env / "token").write_text("secret-token\n")
    monkeypatch.setenv("KOMPRESSION_PROGRESS_URL", url)
    monkeypatch.setenv("KOMPRESSION_PROGRESS_TOKEN_FILE", str(env / "token"))
    save_tiny(env / "model.pt2")
    path = write_job(env / "job.yaml", job("file://model.pt2", "file://out/"))
    assert main(["run", str(path), "--progress", "json"]) == ExitCode.OK
    assert received and all(auth == "Bearer secret-token" for auth, _ in received)
    reports = [WorkerReport.model_validate(body) for _, body in received]
    sequences = [r.sequence for r in reports]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
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


def test_missing_model(env: Path, fake_techniques: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run_bad(env, job("file://nowhere.pt2", "file://out/"), capsys)
    assert code == ExitCode.MODEL_ERROR and "file://nowhere.pt2 does not exist" in err


def test_corrupt_model(env: Path, fake_techniques: None, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    data = (env / "model.pt2").read_bytes()
    (env / "model.pt2").write_bytes(data[: len(data) // 2])
    code, err = _run_bad(env, job("file://model.pt2", "file://out/"), capsys)
    assert code == ExitCode.MODEL_ERROR and "model.pt2" in err


def test_wrong_format(env: Path, fake_techniques: None, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    body = job("file://model.pt2", "file://out/")
    body["spec"]["model"]["format"] = "ONNX"
    body["spec"]["steps"] = [{"name": "q", "quantize": {"method": "DynamicInt8"}}]
    code, err = _run_bad(env, body, capsys)
    assert code == ExitCode.MODEL_ERROR and "not a readable ONNX model" in err


def test_shape_mismatch(env: Path, fake_techniques: None, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    body = job("file://model.pt2", "file://out/")
    body["spec"]["model"]["inputs"] = [{"name": "x", "shape": [-1, 3, 8, 8]}]
    code, err = _run_bad(env, body, capsys)
    assert code == ExitCode.MODEL_ERROR and "'x'" in err and "[-1, 3, 8, 8]" in err and "[-1, 1, 8, 8]" in err


def test_nan_in_data(env: Path, fake_techniques: None, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny(env / "model.pt2")
    inputs = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    inputs[3, 0, 2, 2] = np.nan
    npz(env / "eval.npz", inputs, np.zeros(20, dtype=np.int64))
    body = job("file://model.pt2", "file://out/")
    body["spec"]["data"] = {"evaluation": {"uri": "file://eval.npz"}}
    code, err = _run_bad(env, body, capsys)
    assert code == ExitCode.DATA_ERROR and "spec.data.evaluation" in err and "NaN" in err


def test_unreachable_storage(
    env: Path, fake_techniques: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
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
    env: Path, fake_techniques: None, s3: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = s3.create_bucket()
    s3.client.put_object(Bucket=bucket, Key="model.pt2", Body=save_tiny(env / "model.pt2").read_bytes())
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_REGION", s3.region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    _set_moto_auth(s3, "0")
    try:
        code, err = _run_bad(env, job(f"s3://{bucket}/model.pt2", "file://out/"), capsys)
    finally:
        _set_moto_auth(s3, "inf")
    assert code == ExitCode.STORAGE_ERROR and f"s3://{bucket}/model.pt2" in err and "access denied" in err


def _set_moto_auth(s3: Any, free_actions: str) -> None:
    """moto accepts any key until its authentication counter runs out: 0 enforces it, inf disables it."""
    import urllib.request

    req = urllib.request.Request(
        f"{s3.endpoint_url}/moto-api/reset-auth",
        method="POST",
        data=free_actions.encode(),
        headers={"Content-Type": "text/plain"},
    )  # a form type would hide the body
    urllib.request.urlopen(req, timeout=5).close()


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
