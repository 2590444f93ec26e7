"""Structured pruning of attention heads in rebuilt torch.export graphs: tiny HuggingFace BERT and
torchvision ViT with random weights, loaded as the worker loads a .pt2."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from factories import make_ctx
from kompression.api.v1alpha1 import PruneStep
from kompression.worker.errors import StepInvalid
from kompression.worker.formats import graph_rebuild
from kompression.worker.formats.size import parameter_count
from kompression.worker.model import Dataset, DataSets, TorchModel
from kompression.worker.steps import heads
from kompression.worker.steps.prune import head_scores
from kompression.worker.techniques import TECHNIQUES

torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

prune = TECHNIQUES[PruneStep]
TOKENS = 12
VOCAB = 50


class _Logits(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).logits  # type: ignore[no-any-return]


def _bert() -> nn.Module:
    # 4 heads of 8 with 12 tokens: no head size equals the token count or the head count.
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=TOKENS,
        num_labels=3,
    )
    return _Logits(transformers.BertForSequenceClassification(config))


def _bert_heads_as_tokens() -> nn.Module:
    # 12 heads of 4 at 12 tokens: a size equal to the head count that is not the head count.
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=64,
        max_position_embeddings=TOKENS,
        num_labels=3,
    )
    return _Logits(transformers.BertForSequenceClassification(config))


def _vit() -> nn.Module:
    model = torchvision.models.vit_b_16(image_size=32, num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initializes the head
    return model


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, TOKENS), generator=torch.Generator().manual_seed(seed))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[..., torch.Tensor], tuple[int, ...]]] = {
    "bert": (_bert, _tokens, (-1, TOKENS)),
    "bert-12-heads-12-tokens": (_bert_heads_as_tokens, _tokens, (-1, TOKENS)),
    "vit": (_vit, _images, (-1, 3, 32, 32)),
}


def _rebuilt(name: str) -> fx.GraphModule:
    build, inputs, _ = MODELS[name]
    torch.manual_seed(0)
    program = torch.export.export(
        build().eval(), (inputs(2),), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},)
    )
    return graph_rebuild.rebuild(program)


def _macs(module: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    return int(counter.get_total_flops()) // 2


@pytest.mark.parametrize("name", list(MODELS))
def test_removing_heads_matches_the_original_with_those_heads_zeroed(name: str) -> None:
    gm = _rebuilt(name)
    inputs = MODELS[name][1]
    blocks = heads.attention_blocks(gm, (inputs(2),))
    assert len(blocks) == {"bert": 2, "bert-12-heads-12-tokens": 1, "vit": 12}[name]
    reference = copy.deepcopy(gm)
    for i, block in enumerate(blocks):
        dropped = [(i + j) % block.heads for j in range(block.heads // 2)]  # a different half per block
        with torch.no_grad():
            reference.get_submodule(block.output).weight[:, block.columns(dropped)] = 0
        heads.remove_heads(gm, block, [h for h in range(block.heads) if h not in dropped])
    for batch in (1, 5):  # the batch stays dynamic
        x = inputs(batch, seed=batch)
        with torch.no_grad():
            expected, actual = reference(x), gm(x)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
        assert expected.abs().max() > 1e-3  # the comparison compares something
    assert parameter_count(gm) < parameter_count(reference)
    assert _macs(gm, inputs(1)) < _macs(reference, inputs(1))


def test_a_block_whose_heads_do_not_follow_the_graph_is_left_whole() -> None:
    """A model that reads the projection as [head_dim, heads] (not [heads, head_dim]) has no
    heads this module can find, so it must find no block rather than cut the wrong rows."""

    class Transposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(24, 24) for _ in range(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(x.shape[0], 5, 4, 6).transpose(2, 3).transpose(1, 2)  # [b, 6 heads?, 5, 4]

            out = nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
            return self.o(out.transpose(1, 2).reshape(x.shape[0], 5, 24))  # type: ignore[no-any-return]

    x = torch.randn(2, 5, 24)
    gm = graph_rebuild.rebuild(torch.export.export(Transposed().eval(), (x,)))
    assert heads.attention_blocks(gm, (x,)) == []


@pytest.mark.parametrize(
    ("name", "method"), [("bert", "L1Structured"), ("vit", "L1Structured"), ("bert", "TaylorStructured")]
)
def test_structured_prune_removes_heads_and_widths(name: str, method: str, tmp_path: Path) -> None:
    gm = _rebuilt(name)
    _, inputs, shape = MODELS[name]
    example = inputs(1)
    model = TorchModel(gm, (example,))
    data = DataSets(calibration=Dataset({"x": inputs(8, seed=3).numpy()}))
    ctx = make_ctx({"name": "p", "prune": {"method": method, "sparsity": 0.5}}, tmp_path, data=data, input_shape=shape)
    result = prune(model, ctx)
    pruned = result.model
    assert isinstance(pruned, TorchModel)
    blocks = heads.attention_blocks(gm, (example,))
    assert result.notes["attentionBlocks"] == len(blocks)
    assert result.notes["removedHeads"] == sum(b.heads // 2 for b in blocks)
    left = heads.attention_blocks(pruned.module, (example,))
    assert [b.heads for b in left] == [b.heads - b.heads // 2 for b in blocks]
    for before, after in zip(blocks, left, strict=True):
        assert pruned.module.get_submodule(after.output).in_features == before.value_dim * after.heads
    # Heads, MLP and hidden widths all halve (ViT's patch embedding reshape rewritten for its new width).
    assert parameter_count(pruned.module) < 0.3 * parameter_count(gm)
    assert _macs(pruned.module, example) < 0.3 * _macs(gm, example)
    x = inputs(3, seed=7)
    with torch.no_grad():
        out = pruned.module(x)
    assert out.shape == gm(x).shape and bool(torch.isfinite(out).all())


def test_ignored_attention_layers_keep_their_heads(tmp_path: Path) -> None:
    gm = _rebuilt("bert")
    blocks = heads.attention_blocks(gm, (_tokens(1),))
    step = {"name": "p", "prune": {"method": "L1Structured", "ignoreLayers": [blocks[0].output]}}
    result = prune(TorchModel(gm, (_tokens(1),)), make_ctx(step, tmp_path, input_shape=(-1, TOKENS)))
    assert result.notes["attentionBlocks"] == 1
    pruned = result.model
    assert isinstance(pruned, TorchModel)
    assert pruned.module.get_submodule(blocks[0].output).in_features == 32


def test_head_scores_rank_the_heads_with_the_smallest_weights_lowest() -> None:
    gm = _rebuilt("bert")
    block = heads.attention_blocks(gm, (_tokens(1),))[0]
    with torch.no_grad():
        for source in block.sources:
            layer = gm.get_submodule(source)
            layer.weight[block.rows(layer, source, [2])] *= 0.01
        gm.get_submodule(block.output).weight[:, block.columns([2])] *= 0.01
    assert int(head_scores(gm, block, taylor=False).argmin()) == 2


def test_taylor_heads_without_data_are_refused(tmp_path: Path) -> None:
    ctx = make_ctx(
        {"name": "p", "prune": {"method": "TaylorStructured"}}, tmp_path, data=DataSets(), input_shape=(-1, TOKENS)
    )
    with pytest.raises(StepInvalid, match="needs data"):
        prune(TorchModel(_rebuilt("bert"), (_tokens(1),)), ctx)


class _Patches(nn.Module):
    """A patch embedding reshaped to [batch, channels, patches] with the width as a constant, or
    (mixed) to a shape that splits the channels across dimensions."""

    def __init__(self, mixed: bool) -> None:
        super().__init__()
        self.mixed = mixed
        self.embed = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.head = nn.Linear(2 if mixed else 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(x)  # [b, 8, 2, 2]
        tokens = patches.reshape(x.shape[0], 2, 16) if self.mixed else patches.reshape(x.shape[0], 8, 4)
        return self.head(tokens.transpose(1, 2)).mean(dim=1)  # type: ignore[no-any-return]


@pytest.mark.parametrize("mixed", [False, True])
def test_a_width_the_graph_spells_as_a_size_is_pruned_where_the_size_can_follow(mixed: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    program = torch.export.export(
        _Patches(mixed).eval(), (_images(2)[:, :, :8, :8],), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},)
    )
    gm = graph_rebuild.rebuild(program)
    assert "embed" in graph_rebuild.shape_bound_layers(gm)
    x = _images(1)[:, :, :8, :8]
    ctx = make_ctx({"name": "p", "prune": {"method": "L1Structured"}}, tmp_path, input_shape=(-1, 3, 8, 8))
    result = prune(TorchModel(gm, (x,)), ctx)
    pruned = result.model
    assert isinstance(pruned, TorchModel)
    embed = pruned.module.get_submodule("embed")
    if mixed:  # [b, 8, 2, 2] -> [b, 2, 16] spreads the channels over two dimensions: kept whole
        assert embed.out_channels == 8 and result.notes["fixedWidthLayers"] == 1
    else:
        assert embed.out_channels == 4 and result.notes["resizedWidthLayers"] == 1
    assert pruned.module(_images(3)[:, :, :8, :8]).shape == (3, 5)


def _kept(before: torch.Tensor, after: torch.Tensor, dim: int) -> list[int]:
    """Which slices of `before` along `dim` survive in `after`, matched by value."""
    old, new = (t.detach().movedim(dim, 0) for t in (before, after))
    old, new = old.reshape(old.shape[0], -1), new.reshape(new.shape[0], -1)
    return [int((old - row).abs().sum(dim=1).argmin()) for row in new]


def test_vit_keeps_the_same_hidden_channels_across_its_reshape_and_every_layer(tmp_path: Path) -> None:
    """The channels the patch embedding keeps, through the rewritten reshape, are the ones the
    class token, the position embedding, every LayerNorm and the classifier keep."""
    gm = _rebuilt("vit")
    with torch.no_grad():
        _fetch(gm, "class_token").normal_()  # torchvision starts it at zeros
        for module in gm.modules():
            if isinstance(module, nn.LayerNorm):  # distinct values, so that each channel is recognisable
                module.weight.normal_()
                module.bias.normal_()
    original = copy.deepcopy(gm)
    ctx = make_ctx({"name": "p", "prune": {"method": "L1Structured"}}, tmp_path, input_shape=(-1, 3, 32, 32))
    pruned = prune(TorchModel(gm, (_images(1),)), ctx).model
    assert isinstance(pruned, TorchModel)

    def kept(name: str, dim: int) -> list[int]:
        before, after = (_fetch(m, name) for m in (original, pruned.module))
        return _kept(before, after, dim)

    channels = kept("conv_proj.weight", 0)
    assert len(channels) == 384
    assert kept("class_token", -1) == channels
    assert kept("encoder.pos_embedding", -1) == channels
    assert kept("heads.head.weight", 1) == channels
    for name in ("encoder.ln", "encoder.layers.encoder_layer_0.ln_1", "encoder.layers.encoder_layer_11.ln_2"):
        assert kept(f"{name}.weight", 0) == channels, name
        assert kept(f"{name}.bias", 0) == channels, name


def _fetch(module: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    value = getattr(module.get_submodule(owner) if owner else module, attr)
    assert isinstance(value, torch.Tensor)
    return value
