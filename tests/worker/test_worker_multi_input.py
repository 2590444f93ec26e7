"""Multi-input models and text data: every declared input is fed from the data (never zeros), mixed
dtypes side by side, .jsonl/.txt tokenized with the model folder's own tokenizer, the attention
mask honoured by CosineSimilarity, and a sequence length that stays dynamic end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from encoder_helpers import SENTENCES, encoder_inputs
from factories import job, write_job
from kompression.api.constants import ExitCode
from kompression.api.v1alpha1 import DataSpec, ModelInput, ModelSource, OnnxStep, ShapeProfile
from kompression.cli import main
from kompression.worker.data.arrays import load_datasets
from kompression.worker.errors import DataError, StepInvalid
from kompression.worker.formats import loader, torch_export
from kompression.worker.measure import graphs
from kompression.worker.model import DataSets, TorchModel
from kompression.worker.steps.tensorrt import profile_shapes
from kompression.worker.storage import publish
from kompression.worker.techniques import TECHNIQUES, standalone_context

pytestmark = pytest.mark.usefixtures("one_thread")


def _texts(folder: Path) -> tuple[Path, Path]:
    jsonl = folder / "sentences.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES))
    txt = folder / "calibration.txt"
    txt.write_text("\n".join(reversed(SENTENCES)) + "\n\n")  # a blank line is no sample
    return jsonl, txt


def test_a_two_input_encoder_with_text_data_runs_through_kompression_run(tiny_bert: Path, tmp_path: Path) -> None:
    jsonl, txt = _texts(tmp_path)
    body = job(
        f"file://{tiny_bert}",
        f"file://{tmp_path}/out/",
        steps=[
            {"name": "export", "onnx": {}},
            {"name": "int8", "quantize": {"method": "StaticInt8"}},
        ],
        data={
            "evaluation": {"uri": f"file://{jsonl}", "metric": "CosineSimilarity", "maxLength": 16},
            "calibration": {"uri": f"file://{txt}", "maxLength": 16, "padding": "MaxLength"},
        },
    )
    body["spec"]["model"] = {"uri": f"file://{tiny_bert}", "format": "HuggingFace", "inputs": encoder_inputs(16)}
    assert main(["run", str(write_job(tmp_path / "job.yaml", body)), "--progress", "json"]) == ExitCode.OK

    fetched = publish.fetch_published(f"file://{tmp_path}/out/", tmp_path / "fetched")
    report = json.loads(fetched["report.json"].read_text())
    notes = {m["name"]: m.get("notes", {}) for m in report["details"]["models"]}
    # The parity check ran on real tokenized sentences (ids and mask), a few at once.
    assert int(notes["export"]["checkedSamples"]) == 4 and float(notes["export"]["maxAbsDiff"]) <= 1e-3
    steps = {s["name"]: s["metrics"] for s in report["steps"]}
    assert steps["export"]["accuracy"] > 0.999  # the float ONNX model: mean-pooled cosine of ~1
    assert 0.5 < steps["int8"]["accuracy"] <= 1.0
    graph = onnx.load(str(fetched["model.int8.onnx"])).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)


def test_text_is_tokenized_into_the_declared_inputs(tiny_bert: Path, tmp_path: Path) -> None:
    jsonl, txt = _texts(tmp_path)
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": s, "label": i % 2}) + "\n" for i, s in enumerate(SENTENCES)))
    declared = [ModelInput.model_validate(i) for i in encoder_inputs(None)]
    spec = DataSpec.model_validate(
        {
            "evaluation": {"uri": f"file://{jsonl}", "metric": "CosineSimilarity", "padding": "Longest"},
            "calibration": {"uri": f"file://{txt}", "maxLength": 8, "samples": 3},
            "training": {"uri": f"file://{labelled}", "maxLength": 24},
        }
    )
    sets = load_datasets(spec, declared, lambda uri: Path(uri.removeprefix("file://")), tiny_bert)
    assert sets.evaluation is not None and sets.calibration is not None and sets.training is not None
    ids, mask = sets.evaluation.inputs["input_ids"], sets.evaluation.inputs["attention_mask"]
    assert list(sets.evaluation.inputs) == ["input_ids", "attention_mask"] and ids.dtype == mask.dtype == np.int64
    longest = max(len(s.split()) for s in SENTENCES) + 2  # [CLS] ... [SEP], one token per known word
    assert ids.shape == (len(SENTENCES), longest) and mask.sum(axis=1).tolist() == [
        len(s.split()) + 2 for s in SENTENCES
    ]
    assert sets.evaluation.labels is None
    assert sets.calibration.inputs["input_ids"].shape == (3, 8)  # samples, then padded/cut to maxLength
    assert sets.calibration.inputs["attention_mask"][0].tolist() == [1] * 8  # the longest sentence, cut
    assert sets.training.labels is not None and sets.training.labels.tolist() == [i % 2 for i in range(8)]

    strict = DataSpec.model_validate({"calibration": {"uri": f"file://{txt}", "maxLength": 8, "truncation": False}})
    with pytest.raises(DataError, match=r"spec\.data\.calibration: \d+ sample\(s\).*longer than maxLength 8"):
        load_datasets(strict, declared, lambda uri: Path(uri.removeprefix("file://")), tiny_bert)
    with pytest.raises(DataError, match=r"spec\.data\.calibration: .*only a HuggingFace model folder has one"):
        load_datasets(spec, declared, lambda uri: Path(uri.removeprefix("file://")), None)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):  # the model without its tokenizer files
        (bare / name).write_bytes((tiny_bert / name).read_bytes())
    with pytest.raises(
        DataError, match=r"spec\.data\.calibration: the model folder has no tokenizer \(tokenizer\.json, vocab\.txt"
    ):
        load_datasets(spec, declared, lambda uri: Path(uri.removeprefix("file://")), bare)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a cat"}\n{"sentence": "a dog"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2 needs exactly one of a `text` string"):
        load_datasets(
            DataSpec.model_validate({"calibration": {"uri": f"file://{bad}"}}),
            declared,
            lambda uri: bad,
            tiny_bert,
        )


def test_a_missing_input_is_a_data_error_naming_it(tmp_path: Path) -> None:
    declared = [ModelInput.model_validate(i) for i in encoder_inputs(16)]
    np.savez(tmp_path / "ids.npz", input_ids=np.ones((4, 16), np.int64))
    with pytest.raises(DataError, match=r"spec\.data\.evaluation: ids\.npz has no array for .*'attention_mask'"):
        load_datasets(
            DataSpec.model_validate({"evaluation": {"uri": "file://ids.npz", "metric": "OutputAgreement"}}),
            declared,
            lambda uri: tmp_path / "ids.npz",
        )
    # `inputs` is the shorthand of a single-input model only.
    np.savez(tmp_path / "short.npz", inputs=np.ones((4, 16), np.int64))
    with pytest.raises(DataError, match="'input_ids'"):
        load_datasets(
            DataSpec.model_validate({"calibration": {"uri": "file://s.npz"}}),
            declared,
            lambda uri: tmp_path / "short.npz",
        )
    np.savez(tmp_path / "n.npz", input_ids=np.ones((4, 16), np.int64), attention_mask=np.ones((3, 16), np.int64))
    with pytest.raises(DataError, match="'attention_mask' has 3 samples but the data set has 4"):
        load_datasets(
            DataSpec.model_validate({"calibration": {"uri": "file://n.npz"}}), declared, lambda uri: tmp_path / "n.npz"
        )
    np.savez(tmp_path / "f.npz", input_ids=np.ones((4, 16), np.float32), attention_mask=np.ones((4, 16), np.int64))
    with pytest.raises(DataError, match=r"'input_ids' has dtype float32; .* is int64, so integers"):
        load_datasets(
            DataSpec.model_validate({"calibration": {"uri": "file://f.npz"}}), declared, lambda uri: tmp_path / "f.npz"
        )


class IdsMaskFeatures(nn.Module):
    """Three inputs of three dtypes: token ids, a mask, and float features."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.features = nn.Linear(4, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).float()
        pooled = (self.embed(ids) * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.head(torch.relu(pooled + self.features(features)))  # type: ignore[no-any-return]


MIXED = [
    {"name": "ids", "shape": [-1, 6], "dtype": "int64"},
    {"name": "mask", "shape": [-1, 6], "dtype": "int64"},
    {"name": "features", "shape": [-1, 4], "dtype": "float32"},
]


def _mixed_npz(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    mask = np.arange(6)[None, :] < rng.integers(1, 7, size=(n, 1))  # bool: read as int64
    np.savez(
        path,
        ids=rng.integers(0, 50, size=(n, 6)).astype(np.int32),  # int32: read as int64
        mask=mask,
        features=rng.standard_normal((n, 4)),  # float64: read as float32
        labels=rng.integers(0, 3, size=n),
    )
    return path


def test_mixed_dtypes_in_one_npz_feed_every_path(tmp_path: Path) -> None:
    torch.manual_seed(0)
    declared = [ModelInput.model_validate(i) for i in MIXED]
    example = tuple(torch.ones(1, 6, dtype=torch.int64) if d.dtype == "int64" else torch.zeros(1, 4) for d in declared)
    torch_export.save_torch_export(TorchModel(IdsMaskFeatures().eval(), example), tmp_path / "model.pt2", declared)
    _mixed_npz(tmp_path / "train.npz", 96, 1)
    _mixed_npz(tmp_path / "eval.npz", 32, 2)
    sets = load_datasets(
        DataSpec.model_validate({"evaluation": {"uri": "file://eval.npz"}}), declared, lambda uri: tmp_path / "eval.npz"
    )
    assert sets.evaluation is not None
    assert [a.dtype for a in sets.evaluation.inputs.values()] == [np.int64, np.int64, np.float32]

    body = job(
        f"file://{tmp_path}/model.pt2",
        f"file://{tmp_path}/out/",
        steps=[
            {"name": "prune", "prune": {"method": "L1Structured", "sparsity": 0.25, "fineTune": {"epochs": 1}}},
            {"name": "kd", "distill": {"student": {"fromStep": "prune"}, "epochs": 1}},
            {"name": "export", "onnx": {}},
            {"name": "int8", "quantize": {"method": "StaticInt8"}},
        ],
        data={
            "evaluation": {"uri": f"file://{tmp_path}/eval.npz"},
            "calibration": {"uri": f"file://{tmp_path}/train.npz", "samples": 32},
            "training": {"uri": f"file://{tmp_path}/train.npz"},
        },
    )
    body["spec"]["model"]["inputs"] = MIXED
    assert main(["run", str(write_job(tmp_path / "job.yaml", body)), "--progress", "json"]) == ExitCode.OK
    fetched = publish.fetch_published(f"file://{tmp_path}/out/", tmp_path / "fetched")
    report = json.loads(fetched["report.json"].read_text())
    notes = {m["name"]: m.get("notes", {}) for m in report["details"]["models"]}
    assert int(notes["export"]["checkedSamples"]) == 4 and float(notes["export"]["maxAbsDiff"]) <= 1e-3
    assert int(notes["kd"]["epochs"]) == 1 and "finalLoss" in notes["kd"]  # trained on all three inputs
    graph = onnx.load(str(fetched["model.int8.onnx"])).graph
    assert [i.name for i in graph.input] == ["ids", "mask", "features"]


def test_cosine_similarity_mean_pools_over_the_attention_mask() -> None:
    rng = np.random.default_rng(0)
    outputs, reference = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    # By hand: sample 0 averages tokens 0 and 1, sample 1 is token 0 alone; padded tokens never count.
    a0, b0 = (outputs[0, 0] + outputs[0, 1]) / 2, (reference[0, 0] + reference[0, 1]) / 2
    a1, b1 = outputs[1, 0], reference[1, 0]
    expected = np.mean([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in ((a0, b0), (a1, b1))])
    assert graphs.score("CosineSimilarity", outputs, None, reference, mask) == pytest.approx(expected, rel=1e-9)
    changed = outputs.copy()
    changed[0, 2] += 100.0  # a padded position: no effect
    assert graphs.score("CosineSimilarity", changed, None, reference, mask) == pytest.approx(expected, rel=1e-9)
    unmasked = graphs.score("CosineSimilarity", outputs, None, reference)
    assert unmasked != pytest.approx(expected)  # without a mask: the flattened outputs, as before


def test_a_dynamic_sequence_length_stays_dynamic_in_onnx_and_torch_export(tiny_bert: Path, tmp_path: Path) -> None:
    declared = [ModelInput.model_validate(i) for i in encoder_inputs(None)]
    source = ModelSource.model_validate(
        {"uri": f"file://{tiny_bert}", "format": "HuggingFace", "inputs": encoder_inputs(None)}
    )
    loaded = loader.load_model(source, tiny_bert)
    assert isinstance(loaded, TorchModel)
    jsonl, _ = _texts(tmp_path)
    sets = load_datasets(
        DataSpec.model_validate(
            {"evaluation": {"uri": "file://s.jsonl", "metric": "CosineSimilarity", "padding": "Longest"}}
        ),
        declared,
        lambda uri: jsonl,
        tiny_bert,
    )
    assert sets.evaluation is not None
    real = tuple(torch.from_numpy(a) for a in sets.evaluation.rows(slice(0, 1)))
    model = TorchModel(loaded.module, real)
    ctx = standalone_context(
        {"name": "export", "onnx": {}}, tmp_path, DataSets(evaluation=sets.evaluation), [], inputs=encoder_inputs(None)
    )
    exported = TECHNIQUES[OnnxStep](model, ctx).model
    sess = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])  # type: ignore[union-attr]
    for length in (5, 11):  # neither the traced length nor each other
        feed: dict[str, Any] = {
            "input_ids": np.full((3, length), 7, np.int64),
            "attention_mask": np.ones((3, length), np.int64),
        }
        with torch.no_grad():
            expected = loaded.module(*(torch.from_numpy(v) for v in feed.values())).numpy()
        actual = sess.run(None, feed)[0]
        assert actual.shape == (3, length, 32) and np.abs(actual - expected).max() < 1e-4
    saved = torch_export.save_torch_export(model, tmp_path / "encoder.pt2", declared)
    program = torch.export.load(str(saved))
    out = program.module()(torch.full((2, 9), 7), torch.ones(2, 9, dtype=torch.int64))
    assert tuple(out.shape) == (2, 9, 32)


def test_tensorrt_profiles_shape_every_input() -> None:
    declared = [ModelInput.model_validate(i) for i in [*encoder_inputs(None), {"name": "scale", "shape": [-1, 4]}]]
    profile = ShapeProfile.model_validate({"min": [1, 8], "opt": [8, 128], "max": [32, 256]})
    shapes = profile_shapes(declared, profile, "engine")
    assert shapes == {
        "input_ids": ((1, 8), (8, 128), (32, 256)),
        "attention_mask": ((1, 8), (8, 128), (32, 256)),  # the mask follows the ids
        "scale": ((1, 4), (8, 4), (32, 4)),  # the profile's batch, its declared dimensions
    }
    odd = [*declared[:1], ModelInput.model_validate({"name": "boxes", "shape": [-1, -1, 4]})]
    with pytest.raises(StepInvalid, match="input 'boxes' has a dynamic dimension other than the batch"):
        profile_shapes(odd, profile, "engine")
