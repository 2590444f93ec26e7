"""The examples that run on a laptop CPU run as written, through `kompression run`."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from kompression.api.constants import ExitCode
from kompression.cli import main
from kompression.worker.storage import publish

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_lowrank_example_factorizes_fine_tunes_quantizes_and_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KOMPRESSION_TERMINATION_LOG", str(tmp_path / "termination-log"))
    # The model the example names, made as its header says (a TorchExport .pt2 of the digits CNN).
    assert main(["example-model", "--output", "file://.kompression/quickstart/digits-cnn.pt2"]) == ExitCode.OK
    assert main(["run", str(REPO / "examples" / "lowrank.yaml"), "--progress", "json"]) == ExitCode.OK

    fetched = publish.fetch_published("file://.kompression/lowrank/out/", tmp_path / "fetched")
    report = json.loads(fetched["report.json"].read_text())
    notes = {m["name"]: m.get("notes", {}) for m in report["details"]["models"]}
    assert notes["factorize-dense"]["ranks"] == "classifier.1 48/768"
    assert notes["factorize-dense"]["parameterRatio"] < 0.15
    assert notes["factorize-conv"]["method"] == "Tucker2" and notes["factorize-conv"]["factorizedLayers"] == 2
    result = report["result"]
    assert result["gatesPassed"] and result["compressionRatio"] >= 15
    # The factors of classifier.1 run as int8: each MatMul takes a dequantized int8 weight.
    graph = onnx.load(str(next(p for name, p in fetched.items() if name.endswith(".onnx")))).graph
    int8_weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert len(matmuls) == 3 and all(any(i in int8_weights for i in n.input) for n in matmuls)
