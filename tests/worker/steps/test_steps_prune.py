"""The prune technique on a digits CNN and on ResNet-18: real sparsity, real channel removal."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torchvision

from factories import layer, make_ctx, trained_cnn
from kompression.api.v1alpha1 import PruneStep
from kompression.worker.data.arrays import digits
from kompression.worker.errors import StepInvalid
from kompression.worker.formats.size import parameter_count
from kompression.worker.model import DataSets, TorchModel
from kompression.worker.steps.training import accuracy
from kompression.worker.techniques import TECHNIQUES

pytestmark = pytest.mark.usefixtures("one_thread")


prune = TECHNIQUES[PruneStep]


def saved_size(module: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


@pytest.mark.parametrize("method", ["L1Unstructured", "GlobalMagnitude"])
def test_unstructured_reaches_the_requested_sparsity_and_keeps_the_classifier(method: str, tmp_path: Path) -> None:
    model = trained_cnn()
    result = prune(model, make_ctx({"name": "p", "prune": {"method": method, "sparsity": 0.6}}, tmp_path))
    pruned = result.model
    assert isinstance(pruned, TorchModel)
    pruned_weights = [layer(pruned.module, n).weight for n in ("features.0", "features.3", "head.1")]
    zeros = sum(int((w == 0).sum()) for w in pruned_weights)
    assert zeros / sum(w.numel() for w in pruned_weights) == pytest.approx(0.6, abs=0.01)
    assert float(result.notes["weightSparsity"]) == pytest.approx(0.6, abs=0.01)
    assert int((layer(pruned.module, "head.3").weight == 0).sum()) == 0  # the classifier is never pruned
    assert not any("mask" in k or "orig" in k for k in pruned.module.state_dict())  # masks made permanent
    assert (layer(model.module, "features.0").weight != 0).all()  # the input model is untouched


def test_ignore_layers_are_left_whole_and_unknown_names_are_refused(tmp_path: Path) -> None:
    step = {"name": "p", "prune": {"method": "L1Unstructured", "sparsity": 0.5, "ignoreLayers": ["features.0"]}}
    pruned = prune(trained_cnn(), make_ctx(step, tmp_path)).model
    assert isinstance(pruned, TorchModel)
    assert int((layer(pruned.module, "features.0").weight == 0).sum()) == 0
    step["prune"]["ignoreLayers"] = ["nope"]  # type: ignore[index]
    with pytest.raises(StepInvalid, match="no layer named nope"):
        prune(trained_cnn(), make_ctx(step, tmp_path))


def test_semi_structured_2_4_pattern_holds_exactly_and_fine_tune_keeps_it(tmp_path: Path) -> None:
    step = {"name": "p", "prune": {"method": "SemiStructured24", "fineTune": {"epochs": 1}}}
    result = prune(trained_cnn(), make_ctx(step, tmp_path))
    pruned = result.model
    assert isinstance(pruned, TorchModel)
    for name in ("features.3", "head.1"):
        groups = layer(pruned.module, name).weight.detach().reshape(-1, 4)
        assert ((groups != 0).sum(dim=1) <= 2).all(), name
    # The 1-channel 3x3 stem has 9 weights per filter: no 2:4 layout, so it is left dense.
    assert int((layer(pruned.module, "features.0").weight == 0).sum()) == 0
    assert "GPU" in str(result.notes["sparseKernels"])
    assert accuracy(pruned.module, digits("eval")) > 0.9


@pytest.mark.parametrize("method", ["L1Structured", "TaylorStructured"])
def test_structured_removes_channels_and_shrinks_the_saved_model(method: str, tmp_path: Path) -> None:
    model = trained_cnn()
    step = {"name": "p", "prune": {"method": method, "sparsity": 0.5, "fineTune": {"epochs": 2}}}
    result = prune(model, make_ctx(step, tmp_path))
    pruned = result.model
    assert isinstance(pruned, TorchModel)
    assert parameter_count(pruned.module) < 0.4 * parameter_count(model.module)
    assert saved_size(pruned.module) < 0.45 * saved_size(model.module)
    assert layer(pruned.module, "features.0").out_channels == 8
    assert layer(pruned.module, "head.3").out_features == 10
    assert pruned.module(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert int(result.notes["removedChannels"]) > 0
    assert accuracy(pruned.module, digits("eval")) > 0.9


def test_taylor_without_any_data_is_refused(tmp_path: Path) -> None:
    ctx = make_ctx({"name": "p", "prune": {"method": "TaylorStructured"}}, tmp_path, data=DataSets())
    with pytest.raises(StepInvalid, match="needs data"):
        prune(trained_cnn(), ctx)


def test_structured_resnet18_halves_channels_and_runs(tmp_path: Path) -> None:
    model = TorchModel(torchvision.models.resnet18().eval(), (torch.randn(1, 3, 64, 64),))
    ctx = make_ctx(
        {"name": "p", "prune": {"method": "L1Structured", "sparsity": 0.5}}, tmp_path, input_shape=(-1, 3, 64, 64)
    )
    pruned = prune(model, ctx).model
    assert isinstance(pruned, TorchModel)
    assert parameter_count(pruned.module) < 0.3 * parameter_count(model.module)
    assert layer(pruned.module, "fc").out_features == 1000
    assert pruned.module(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
