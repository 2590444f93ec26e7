"""How the int8 methods store what they do not turn into int8 kernels: embedding tables as int8
rows with a scale each, and the weights of layers kept float as float16 that the session widens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from kompression.api.v1alpha1 import QuantizeStep
from kompression.worker.model import Dataset, DataSets, OnnxModel, TorchModel
from kompression.worker.steps.onnx_io import export_onnx, run_onnx, session
from kompression.worker.techniques import TECHNIQUES, standalone_context

pytestmark = pytest.mark.usefixtures("one_thread")

quantize = TECHNIQUES[QuantizeStep]
VOCAB, WIDTH, TOKENS = 2000, 64, 12


class Encoder(nn.Module):
    """A token embedding (128 000 entries, a lookup table worth storing as int8) and a wide projection."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.proj = nn.Linear(WIDTH, 1024)
        self.head = nn.Linear(1024, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(self.embed(ids)))).mean(dim=1)


def encoder() -> TorchModel:
    torch.manual_seed(0)
    model = Encoder().eval()
    with torch.no_grad():  # rows of very different ranges, as a trained vocabulary has: rare tokens small
        model.embed.weight.mul_(torch.logspace(-2, 0, VOCAB)[:, None])
    return TorchModel(model, (torch.zeros(1, TOKENS, dtype=torch.int64),))


def ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, TOKENS), dtype=np.int64)


def run(method: str, work: Path, **options: object) -> tuple[OnnxModel, dict[str, float | int | str]]:
    step = {"name": "q", "quantize": {"method": method, **options}}
    inputs = [{"name": "ids", "shape": [-1, TOKENS], "dtype": "int64"}]
    ctx = standalone_context(step, work, DataSets(calibration=Dataset({"ids": ids(32, 0)})), [], inputs=inputs)
    result = quantize(encoder(), ctx)  # type: ignore[arg-type]
    assert isinstance(result.model, OnnxModel)
    return result.model, result.notes


def initializers(path: Path) -> dict[tuple[int, ...], int]:
    """Element type of each initializer, by shape."""
    return {tuple(t.dims): t.data_type for t in onnx.load(str(path)).graph.initializer}


def relative_error(path: Path, reference: Path, feed: np.ndarray) -> float:
    exact = run_onnx(session(reference), [feed])
    return float(np.linalg.norm(run_onnx(session(path), [feed]) - exact) / np.linalg.norm(exact))


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(encoder(), tmp_path_factory.mktemp("f") / "float.onnx", ["ids"]).path


# DynamicInt8 leaves Gather to the step, which stores int8 rows with a scale each; StaticInt8's
# quantize_static already quantizes the Gather (uint8, one scale, the table's output then being int8).
@pytest.mark.parametrize(
    ("method", "rows", "table"), [("DynamicInt8", 1, TensorProto.INT8), ("StaticInt8", 0, TensorProto.UINT8)]
)
def test_the_embedding_table_is_stored_as_int8_and_keeps_the_output(
    tmp_path: Path, method: str, rows: int, table: int, float_onnx: Path
) -> None:
    model, notes = run(method, tmp_path)
    assert notes["int8Embeddings"] == rows
    assert initializers(model.path)[(VOCAB, WIDTH)] == table
    assert ((VOCAB, 1) in initializers(model.path)) == bool(rows)  # one scale per row
    assert model.path.stat().st_size < 0.3 * float_onnx.stat().st_size
    # Per-row scales keep the small rows: the same model with the table in float errs about as much.
    kept, _ = run(method, tmp_path / "kept", excludeLayers=["embed"])
    assert initializers(kept.path)[(VOCAB, WIDTH)] == TensorProto.FLOAT16  # float, stored as a float layer's is
    held_out = ids(16, 1)
    assert relative_error(model.path, float_onnx, held_out) < 1.25 * relative_error(kept.path, float_onnx, held_out)


def test_a_layer_kept_float_stores_its_weight_as_float16_and_computes_in_float32(
    tmp_path: Path, float_onnx: Path
) -> None:
    model, notes = run("DynamicInt8", tmp_path, excludeLayers=["proj", "head", "embed"])
    assert notes["float16StoredWeights"] == 2  # the table and proj's weight; head's 8 192 entries are too few to matter
    stored = initializers(model.path)
    assert stored[(VOCAB, WIDTH)] == stored[(WIDTH, 1024)] == TensorProto.FLOAT16
    assert stored[(1024, 8)] == TensorProto.FLOAT
    # Nothing left int8: the output differs from float32 only by float16's rounding of the weights.
    assert relative_error(model.path, float_onnx, ids(16, 1)) < 2e-3
    # The session folds the Cast: its optimized graph holds the weight as float32 again.
    optimized = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    assert TensorProto.FLOAT16 not in initializers(optimized).values()


def test_per_channel_dynamic_weights_get_one_zero_point_and_compute_the_same(tmp_path: Path) -> None:
    ctx = standalone_context({"name": "q", "quantize": {"method": "DynamicInt8"}}, tmp_path, DataSets(), [-1, TOKENS])
    model = TorchModel(
        nn.Sequential(nn.Linear(TOKENS, 64), nn.ReLU(), nn.Linear(64, 8)).eval(), (torch.zeros(1, TOKENS),)
    )
    result = quantize(model, ctx)  # type: ignore[arg-type]
    assert isinstance(result.model, OnnxModel)
    assert result.notes["scalarWeightZeroPoints"] == 2
    graph = onnx.load(str(result.model.path)).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    products = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert [shapes[n.input[3]] for n in products] == [[], []]  # one zero point per weight
    assert sorted(d for name, d in shapes.items() if name.endswith("_scale") and d) == [[8], [64]]  # per channel
    # onnxruntime's own per-channel output, with a zero point per column, is the same to the bit.
    reference = tmp_path / "per-column.onnx"
    quantize_dynamic(str(tmp_path / "model.float.onnx"), str(reference), per_channel=True, weight_type=QuantType.QInt8)
    feed = np.random.default_rng(0).normal(size=(16, TOKENS)).astype(np.float32)
    assert np.array_equal(run_onnx(session(result.model.path), [feed]), run_onnx(session(reference), [feed]))
