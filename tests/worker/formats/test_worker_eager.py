"""torch.export programs of any shape rebuilt as their own graph with real nn layers, and every
layer-based technique run on them."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kompression.api.v1alpha1 import LowRankStep, ModelSource, QuantizeStep
from kompression.worker.errors import ModelError, StepInvalid
from kompression.worker.formats import graph_rebuild, loader, torch_export
from kompression.worker.model import Dataset, DataSets, TorchModel
from kompression.worker.steps.fp8 import FP8Linear, convert_to_fp8
from kompression.worker.steps.modules import final_layer
from kompression.worker.steps.onnx_io import nodes_of_modules
from kompression.worker.techniques import TECHNIQUES, standalone_context

SHAPE = [-1, 3, 16, 16]


class Zoo(nn.Module):
    """Residual branches, a concatenation, depthwise and grouped convolutions, attention with
    LayerNorm: the graph shapes a chain-only rebuild could not handle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.branch = nn.Conv2d(16, 8, 1)
        self.merge = nn.Conv2d(24, 32, 1)
        self.norm = nn.LayerNorm(32)
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.grouped(torch.relu(self.depthwise(x)))  # residual
        x = self.merge(torch.cat([x, self.branch(x)], dim=1))  # concatenation
        tokens = nn.functional.adaptive_avg_pool2d(x, 4).flatten(2).transpose(1, 2)  # (batch, 16, 32)
        normed = self.norm(tokens)
        tokens = tokens + self.attention(normed, normed, normed, need_weights=False)[0]
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens.mean(dim=1))  # type: ignore[no-any-return]


def _export(module: nn.Module, path: Path, decompose: bool = False) -> Path:
    program = torch.export.export(
        module.eval(), (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},)
    )
    if decompose:
        program = program.run_decompositions()
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def zoo_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return _export(Zoo(), tmp_path_factory.mktemp("zoo") / "zoo.pt2")


def _load(path: Path) -> TorchModel:
    source = ModelSource.model_validate(
        {"uri": f"file://{path}", "format": "TorchExport", "inputs": [{"name": "x", "shape": SHAPE}]}
    )
    model = loader.load_model(source, path)
    assert isinstance(model, TorchModel)
    return model


def _data(n: int = 16) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset({"x": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)}, rng.integers(0, 5, n))


def _run(step: dict[str, object], model: TorchModel, tmp_path: Path, **extra: object) -> TorchModel:
    data = DataSets(calibration=_data(), training=_data(), evaluation=_data())
    ctx = standalone_context({"name": "s", **step}, tmp_path, data, SHAPE, **extra)  # type: ignore[arg-type]
    result = TECHNIQUES[type(ctx.config)](model, ctx)
    assert isinstance(result.model, TorchModel)
    return result.model


def test_any_graph_shape_is_rebuilt_with_its_layers_under_their_names(zoo_pt2: Path) -> None:
    torch.manual_seed(0)
    reference = Zoo().eval()
    model = _load(zoo_pt2)
    layers = {n: type(m) for n, m in model.module.named_modules()}
    for name in ("stem.0", "depthwise", "grouped", "branch", "merge", "mlp.0", "mlp.2", "head"):
        assert issubclass(layers[name], (nn.Conv2d, nn.Linear)), name
    assert layers["stem.1"] is nn.BatchNorm2d and layers["norm"] is nn.LayerNorm
    assert layers["attention.in_proj"] is nn.Linear and layers["attention.out_proj"] is nn.Linear
    # State-dict keys match the eager architecture, except the attention's packed projection,
    # whose owner holds more than one parameter.
    expected = {k.replace("in_proj_", "in_proj.") for k in reference.state_dict()}
    assert set(model.module.state_dict()) == expected
    model.module.load_state_dict({k.replace("in_proj_", "in_proj."): v for k, v in reference.state_dict().items()})
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model.module(x), reference(x), atol=1e-5)
    assert final_layer(model.module, model.example_inputs) == "head"


def test_rebuilt_graph_trains_and_switches_modes(zoo_pt2: Path) -> None:
    module = _load(zoo_pt2).module
    module.train()
    assert module.get_submodule("stem.1").training
    module(torch.randn(4, 3, 16, 16)).sum().backward()
    assert module.get_submodule("merge").weight.grad is not None
    module.eval()
    assert not module.get_submodule("stem.1").training


@pytest.mark.parametrize("method", ["L1Structured", "TaylorStructured", "L1Unstructured", "GlobalMagnitude"])
def test_every_prune_method_with_fine_tune_on_a_branching_graph(zoo_pt2: Path, tmp_path: Path, method: str) -> None:
    model = _load(zoo_pt2)
    before = sum(p.numel() for p in model.module.parameters())
    step = {"prune": {"method": method, "sparsity": 0.5, "fineTune": {"epochs": 1, "batchSize": 8}}}
    pruned = _run(step, model, tmp_path)
    out = pruned.module(torch.randn(3, 3, 16, 16))
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    if method.endswith("Structured"):
        assert sum(p.numel() for p in pruned.module.parameters()) < before
        # The attention loses whole heads (2 of its 4, each 8 wide), in all three packed projections.
        assert pruned.module.get_submodule("attention.in_proj").out_features == 3 * 2 * 8
        assert pruned.module.get_submodule("attention.out_proj").in_features == 2 * 8
        assert pruned.module.get_submodule("mlp.0").out_features < 64
        # The pruned graph still saves and loads as a .pt2 archive (as every step's output does).
        again = _load(torch_export.save_torch_export(pruned, tmp_path / "again.pt2"))
        with torch.no_grad():
            x = torch.randn(2, 3, 16, 16)
            assert torch.allclose(again.module(x), pruned.module.eval()(x), atol=1e-5)
    else:
        weights = pruned.module.get_submodule("merge").weight
        assert float((weights == 0).float().mean()) > 0.3


def test_structured_pruning_calls_the_graph_only_with_its_inputs(zoo_pt2: Path, tmp_path: Path) -> None:
    # Torch-Pruning traces the model with model(*example_inputs): a lone tensor would be unpacked
    # into unbatched samples first, fail inside the graph, and print that failure to the job's log.
    model = _load(zoo_pt2)
    calls: list[tuple[int, ...]] = []
    # On the first layer: the graph module itself is rebuilt by deepcopy, without its hooks.
    model.module.get_submodule("stem.0").register_forward_pre_hook(lambda _m, args: calls.append(tuple(args[0].shape)))

    _run({"prune": {"method": "L1Structured", "sparsity": 0.5}}, model, tmp_path)

    assert calls and all(len(shape) == 4 for shape in calls)


@pytest.mark.parametrize(("method", "layer"), [("SVD", "mlp.0"), ("Tucker2", "stem.0")])
def test_low_rank_with_fine_tune_on_a_branching_graph(zoo_pt2: Path, tmp_path: Path, method: str, layer: str) -> None:
    model = _load(zoo_pt2)
    data = DataSets(training=_data())
    step = {"name": "s", "lowRank": {"method": method, "rankRatio": 0.25, "fineTune": {"epochs": 1, "batchSize": 8}}}
    result = TECHNIQUES[LowRankStep](model, standalone_context(step, tmp_path, data, SHAPE))
    assert isinstance(result.model, TorchModel)
    factorized = result.model.module
    assert int(result.notes["factorizedLayers"]) > 0 and float(result.notes["parameterRatio"]) < 1
    assert layer in str(result.notes["ranks"])
    assert not isinstance(factorized.get_submodule(layer), (nn.Linear, nn.Conv2d))  # now a chain of thin factors
    out = factorized(torch.randn(3, 3, 16, 16))
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    again = _load(torch_export.save_torch_export(result.model, tmp_path / "again.pt2"))
    with torch.no_grad():
        x = torch.randn(2, 3, 16, 16)
        assert torch.allclose(again.module(x), factorized.eval()(x), atol=1e-5)


def test_distill_from_a_pruned_rebuilt_graph(zoo_pt2: Path, tmp_path: Path) -> None:
    model = _load(zoo_pt2)
    pruned = _run({"prune": {"method": "L1Structured", "sparsity": 0.5}}, model, tmp_path / "p")
    step = {"distill": {"student": {"fromStep": "prune"}, "epochs": 1, "batchSize": 8}}
    student = _run(step, pruned, tmp_path / "d", teacher=model, outputs={"prune": pruned})
    assert sum(p.numel() for p in student.module.parameters()) == sum(p.numel() for p in pruned.module.parameters())
    assert not torch.equal(student.module.get_submodule("head").weight, pruned.module.get_submodule("head").weight)


def test_fp8_finds_the_linear_layers_of_a_rebuilt_graph(zoo_pt2: Path) -> None:
    # The FP8 GEMM itself needs an FP8 GPU; the conversion is what depends on the graph.
    module = copy.deepcopy(_load(zoo_pt2).module)
    converted, skipped = convert_to_fp8(module, exclude={"head"})
    assert converted == 4 and skipped == []  # in_proj, out_proj, mlp.0, mlp.2
    assert isinstance(module.get_submodule("mlp.0"), FP8Linear)


def test_a_decomposed_program_gets_its_layers_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _load(_export(Zoo(), tmp_path / "core.pt2", decompose=True))
    kinds = {n: type(m) for n, m in model.module.named_modules()}
    assert kinds["stem.0"] is nn.Conv2d and kinds["stem.1"] is nn.BatchNorm2d and kinds["head"] is nn.Linear


def test_a_rebuild_that_changes_the_outputs_is_a_model_error(zoo_pt2: Path) -> None:
    program = torch.export.load(str(zoo_pt2))
    rebuilt = graph_rebuild.rebuild(program)
    with torch.no_grad():
        rebuilt.get_submodule("merge").weight.mul_(1.01)
    with pytest.raises(ModelError, match=r"differs from the program by up to .*eval mode"):
        graph_rebuild.check_parity(program, rebuilt, (torch.randn(2, 3, 16, 16),), "file://zoo.pt2")


class Stretch(nn.Module):
    """A width fixed by a plain Python constant that no reshape reveals to the graph analysis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) * self.scale
        return self.head(y.new_ones(y.shape[0], 8) * y.mean(dim=(2, 3)))  # type: ignore[no-any-return]


def test_a_graph_pruning_breaks_names_the_op_and_the_way_out(tmp_path: Path) -> None:
    model = _load(_export(Stretch(), tmp_path / "stretch.pt2"))
    with pytest.raises(StepInvalid, match=r"no longer runs, at .*(mul|new_ones).*ignoreLayers.*L1Unstructured"):
        _run({"prune": {"method": "L1Structured", "sparsity": 0.5}}, model, tmp_path)


def test_weights_the_rebuild_cannot_turn_into_layers_are_named() -> None:
    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w  # type: ignore[no-any-return]

    program = torch.export.export(Bilinear(), (torch.randn(2, 4),))
    rebuilt = graph_rebuild.rebuild(program)
    with pytest.raises(StepInvalid, match=r"weights that are not layers: w \(aten.matmul"):
        final_layer(rebuilt, (torch.randn(1, 4),))


def test_int8_keeps_named_layers_of_a_rebuilt_graph_in_float(zoo_pt2: Path, tmp_path: Path) -> None:
    # excludeLayers (and the Auto search's float fallbacks) find a rebuilt layer's ONNX nodes by
    # its dotted name, as they do in an eager model.
    model = _load(zoo_pt2)
    data = DataSets(calibration=_data())
    step = {"name": "q", "quantize": {"method": "StaticInt8", "excludeLayers": ["mlp.0", "stem.0"]}}
    result = TECHNIQUES[QuantizeStep](model, standalone_context(step, tmp_path, data, SHAPE))
    found = nodes_of_modules(tmp_path / "model.float.onnx", ["mlp.0", "stem.0", "attention.in_proj"])
    assert all(found.values()), found
    assert result.notes["floatLayers"] == "mlp.0, stem.0"


def test_auto_trials_keep_named_layers_of_a_rebuilt_graph_in_float(zoo_pt2: Path, tmp_path: Path) -> None:
    # An Auto trial's extra float layers, measured by the quantize step, are the rebuilt model's layers.
    model = _load(zoo_pt2)
    step = {"name": "q", "quantize": {"method": "StaticInt8", "excludeLayers": ["stem.0"]}}
    ctx = replace(standalone_context(step, tmp_path, DataSets(calibration=_data()), SHAPE), extra_float_layers=2)
    result = TECHNIQUES[QuantizeStep](model, ctx)
    added = re.findall(r"([^ ,]+) \(\d+\.\d+\)", str(result.notes["floatLayersAddedByAuto"]))
    assert len(added) == 2 and "stem.0" not in added
    names = dict(model.module.named_modules())
    assert all(isinstance(names[n], nn.Linear) for n in added)  # int8 sensitivity ranks the matrix products
    assert all(nodes_of_modules(tmp_path / "model.float.onnx", added).values())
    assert result.notes["floatLayers"] == f"stem.0, {result.notes['floatLayersAddedByAuto']}"
