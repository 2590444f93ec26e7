"""The memory layout a structured prune leaves: chosen by timing, applied to every convolution,
with the model's outputs unchanged and the layout kept through a .pt2 round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from factories import make_ctx, trained_cnn
from kompression.api.v1alpha1 import PruneStep
from kompression.worker.formats import torch_export
from kompression.worker.model import TorchModel
from kompression.worker.steps.layout import (
    CHANNELS_LAST,
    CONTIGUOUS,
    FORMATS,
    ROUNDS,
    apply_faster_layout,
    choose_layout,
    current_layout,
    rounds_for,
    time_layouts,
)
from kompression.worker.techniques import TECHNIQUES

pytestmark = pytest.mark.usefixtures("one_thread")


STRUCTURED = {"name": "p", "prune": {"method": "L1Structured", "sparsity": 0.5}}


def conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Conv2d)]


def kernel_strides(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: p.stride() for name, p in module.named_parameters() if p.dim() == 4}


def test_the_pt2_archive_keeps_a_channels_last_layout(tmp_path: Path) -> None:
    # Timing picks the layout, so the test above may see either; this one pins channels_last.
    model = trained_cnn()
    model.module.to(memory_format=torch.channels_last)
    assert current_layout(model.module) == CHANNELS_LAST
    loaded = torch.export.load(str(torch_export.save_torch_export(model, tmp_path / "model.pt2"))).module()
    strides = kernel_strides(loaded)
    assert strides == kernel_strides(model.module) and len(strides) >= 2
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in loaded.parameters() if p.dim() == 4)


def in_layout(module: nn.Module, layout: str) -> bool:
    fmt = torch.channels_last if layout == CHANNELS_LAST else torch.contiguous_format
    return all(w.is_contiguous(memory_format=fmt) for w in conv_weights(module))


@pytest.mark.parametrize(
    ("timings", "current", "expected"),
    [
        ({CONTIGUOUS: 10.0, CHANNELS_LAST: 7.0}, CONTIGUOUS, CHANNELS_LAST),
        ({CONTIGUOUS: 10.0, CHANNELS_LAST: 9.8}, CONTIGUOUS, CONTIGUOUS),  # within the margin: keep
        ({CONTIGUOUS: 9.8, CHANNELS_LAST: 10.0}, CHANNELS_LAST, CHANNELS_LAST),
        ({CONTIGUOUS: 6.0, CHANNELS_LAST: 10.0}, CHANNELS_LAST, CONTIGUOUS),
    ],
)
def test_a_layout_change_must_win_by_the_margin(timings: dict[str, float], current: str, expected: str) -> None:
    assert choose_layout(timings, current) == expected


def test_slow_models_get_fewer_timing_rounds_but_never_none() -> None:
    assert rounds_for(0.01) == ROUNDS  # a ResNet-18 call on a CPU: the full count
    assert 1 < rounds_for(0.3) < ROUNDS
    assert rounds_for(30.0) == 1


def test_timing_both_layouts_leaves_the_model_as_it_came() -> None:
    module = torchvision.models.resnet18(num_classes=10).eval().to(memory_format=torch.channels_last)
    assert current_layout(module) == CHANNELS_LAST
    timings = time_layouts(module, (torch.randn(1, 3, 32, 32),), "cpu", threads=1)
    assert set(timings) == {CONTIGUOUS, CHANNELS_LAST} and all(t > 0 for t in timings.values())
    assert current_layout(module) == CHANNELS_LAST and in_layout(module, CHANNELS_LAST)


@pytest.mark.parametrize("layout", [CONTIGUOUS, CHANNELS_LAST])
def test_a_model_still_trains_after_its_layouts_were_timed(layout: str) -> None:
    # A fine-tune follows the timing; parameters re-created under inference_mode could not be trained.
    module = torchvision.models.resnet18(num_classes=10).eval()
    module.to(memory_format=FORMATS[layout])
    time_layouts(module, (torch.randn(1, 3, 32, 32),), "cpu", threads=1)
    assert not any(p.is_inference() for p in module.parameters())
    module.train()
    module(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_the_chosen_layout_is_applied_everywhere_and_changes_no_output(tmp_path: Path) -> None:
    module = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        before = module(x)
    notes = apply_faster_layout(module, (x[:1],), make_ctx(STRUCTURED, tmp_path, input_shape=(-1, 3, 32, 32)))
    assert notes["memoryFormat"] in (CONTIGUOUS, CHANNELS_LAST)
    assert float(notes["layoutMsContiguous"]) > 0 and float(notes["layoutMsChannelsLast"]) > 0
    assert in_layout(module, str(notes["memoryFormat"]))
    with torch.inference_mode():
        torch.testing.assert_close(module(x), before, rtol=1e-4, atol=1e-4)


def test_a_model_without_2d_convolutions_is_left_alone(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    assert apply_faster_layout(module, (torch.randn(1, 8),), make_ctx(STRUCTURED, tmp_path)) == {}


def test_structured_prune_reports_its_layout_and_the_pt2_archive_keeps_it(tmp_path: Path) -> None:
    result = TECHNIQUES[PruneStep](trained_cnn(), make_ctx(STRUCTURED, tmp_path))
    pruned = result.model
    assert isinstance(pruned, TorchModel)
    layout = str(result.notes["memoryFormat"])
    assert in_layout(pruned.module, layout)
    path = torch_export.save_torch_export(pruned, tmp_path / "model.pt2")
    loaded = torch.export.load(str(path)).module()
    # The exported module has no nn.Conv2d left to ask, so its kernels' strides are compared by name.
    assert kernel_strides(loaded) == kernel_strides(pruned.module)
    x = torch.rand(3, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), pruned.module(x), rtol=1e-4, atol=1e-4)
