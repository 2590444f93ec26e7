"""Real architectures exported with torch.export, through the worker's loader and the real steps:
structured prune with fine-tuning -> StaticInt8 -> ONNX, with the outputs checked.

Random weights at small input sizes keep each run to seconds or tens of seconds; the larger
models are marked slow but run in the normal suite too.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from kompression.api.v1alpha1 import CompressionJob
from kompression.worker import pipeline, trial
from kompression.worker.model import Model, OnnxModel, TorchModel
from kompression.worker.report.live import Reporter
from kompression.worker.steps.onnx_io import run_onnx, session
from kompression.worker.storage import publish
from kompression.worker.techniques import StepContext, StepResult, Technique, Techniques

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.timeout(600)

IMAGE = 32  # every torchvision model here runs at 32x32 (ViT-B/16 built for it: 4 patches)
TOKENS = 16
VOCAB = 100


@dataclass(frozen=True)
class Arch:
    build: Callable[[], nn.Module]
    shape: list[int]
    classes: int = 10
    dtype: str = "float32"


def _vit() -> nn.Module:
    model = torchvision.models.vit_b_16(image_size=IMAGE, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initializes the head
    return model


def _bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=TOKENS,
        num_labels=4,
    )
    return transformers.BertForSequenceClassification(config)


def _vision(name: str) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(num_classes=10)


ARCHITECTURES = {
    "resnet18": Arch(_vision("resnet18"), [-1, 3, IMAGE, IMAGE]),
    "resnet50": Arch(_vision("resnet50"), [-1, 3, IMAGE, IMAGE]),
    "mobilenet_v3_large": Arch(_vision("mobilenet_v3_large"), [-1, 3, IMAGE, IMAGE]),
    "efficientnet_b0": Arch(_vision("efficientnet_b0"), [-1, 3, IMAGE, IMAGE]),
    "convnext_tiny": Arch(_vision("convnext_tiny"), [-1, 3, IMAGE, IMAGE]),
    "vit_b_16": Arch(_vit, [-1, 3, IMAGE, IMAGE]),
    "bert": Arch(_bert, [-1, TOKENS], classes=4, dtype="int64"),
}
SLOW = {"resnet50", "convnext_tiny", "vit_b_16", "efficientnet_b0"}


def _inputs(arch: Arch, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if arch.dtype == "int64":
        return rng.integers(0, VOCAB, (n, *arch.shape[1:]))
    return rng.standard_normal((n, *arch.shape[1:])).astype(np.float32)


def export_architecture(name: str, folder: Path) -> Path:
    """The model exported with a dynamic batch and saved as a .pt2 archive, as a user would."""
    arch = ARCHITECTURES[name]
    torch.manual_seed(0)
    module = arch.build().eval()
    example = (torch.from_numpy(_inputs(arch, 2, 0)),)
    program = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
    path = folder / "model.pt2"
    torch.export.save(program, str(path))
    return path


def _job(name: str, folder: Path) -> CompressionJob:
    arch = ARCHITECTURES[name]
    for split, count in (("train", 16), ("calib", 8), ("val", 8)):
        labels = np.random.default_rng(count + 1).integers(0, arch.classes, count)
        np.savez(folder / f"{split}.npz", inputs=_inputs(arch, count, count), labels=labels)
    body: dict[str, Any] = {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": name.replace("_", "-")},
        "spec": {
            "model": {
                "uri": f"file://{folder}/model.pt2",
                "format": "TorchExport",
                "inputs": [{"name": "x", "shape": arch.shape, "dtype": arch.dtype}],
            },
            "data": {
                "calibration": {"uri": f"file://{folder}/calib.npz", "samples": 8},
                "evaluation": {"uri": f"file://{folder}/val.npz", "metric": "Top1Accuracy"},
                "training": {"uri": f"file://{folder}/train.npz"},
            },
            "steps": [
                {
                    "name": "prune",
                    "prune": {"method": "L1Structured", "sparsity": 0.5, "fineTune": {"epochs": 1, "batchSize": 8}},
                },
                {"name": "int8", "quantize": {"method": "StaticInt8", "calibrator": "MinMax"}},
                {"name": "export", "onnx": {}},
            ],
            "output": {"uri": f"file://{folder}/out/"},
            "resources": {"gpus": 0},
            "measurement": {"iterations": 2, "warmupIterations": 1},
        },
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(body))
    return CompressionJob.model_validate(body)


def _recording(outputs: dict[str, Model], keep: Path) -> Techniques:
    """The real techniques, each input and output kept for the checks below (ONNX files copied
    out of the run's scratch folder, which the run removes)."""

    def record(technique: Technique[Any]) -> Technique[Any]:
        def run(model: Model, ctx: StepContext[Any]) -> StepResult:
            outputs[f"{ctx.name}:input"] = model
            result = technique(model, ctx)
            kept = result.model
            if isinstance(kept, OnnxModel):
                keep.mkdir(exist_ok=True)
                kept = OnnxModel(Path(shutil.copy(kept.path, keep / f"{ctx.name}.onnx")), kept.input_names)
            outputs[ctx.name] = kept
            return result

        return run

    return {config: record(technique) for config, technique in trial.default_techniques().items()}


def _layers(module: nn.Module) -> int:
    return sum(isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) for m in module.modules())


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in ARCHITECTURES]
)
def test_exported_architecture_prunes_fine_tunes_quantizes_and_exports(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    export_architecture(name, tmp_path)
    job = _job(name, tmp_path)
    outputs: dict[str, Model] = {}
    pipeline.run(
        job, pipeline.RunOptions(techniques=_recording(outputs, tmp_path / "kept")), Reporter(job, mode="quiet")
    )

    loaded, pruned, int8 = outputs["prune:input"], outputs["prune"], outputs["int8"]
    assert isinstance(loaded, TorchModel)
    original = loaded.module
    assert _layers(original) > 0  # the whole graph rebuilt as layers, whatever its shape
    assert isinstance(pruned, TorchModel) and isinstance(int8, OnnxModel)
    params = sum(p.numel() for p in original.parameters())
    assert sum(p.numel() for p in pruned.module.parameters()) < 0.8 * params
    # The int8 ONNX model computes what the pruned, fine-tuned torch model computes.
    sample = _inputs(ARCHITECTURES[name], 4, 99)
    with torch.no_grad():
        expected = pruned.module.eval()(torch.from_numpy(sample)).numpy()
    actual = run_onnx(session(int8.path), [sample])
    assert actual.shape == expected.shape == (4, ARCHITECTURES[name].classes)
    relative = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-12)
    assert relative < 0.25, f"int8 output differs from the pruned model by {relative:.3f} (relative L2)"
    published = publish.fetch_published(f"file://{tmp_path}/out/", tmp_path / "fetched")["model.int8.onnx"]
    assert np.isfinite(run_onnx(session(published), [sample])).all()
