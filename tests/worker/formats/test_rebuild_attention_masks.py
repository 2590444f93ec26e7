"""The rebuilt graph drops an attention mask that is all True whatever the input (the one a traced
transformers encoder builds when no mask is passed) and keeps every mask that could mask anything."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import fx, nn
from torch.nn import functional

from kompression.worker.formats.graph_rebuild import op_name, rebuild

TOKENS = 16
HEADS, WIDTH = 4, 32


def _masks(gm: fx.GraphModule) -> list[Any]:
    calls = [n for n in gm.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default]
    assert calls
    return [n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask") for n in calls]


def _export(module: nn.Module, example: torch.Tensor, dynamic: dict[int, Any]) -> Any:
    return torch.export.export(module.eval(), (example,), dynamic_shapes=(dynamic,))


def _same_outputs(gm: fx.GraphModule, program: Any, inputs: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for x in inputs:
            torch.testing.assert_close(gm(x), program.module()(x), rtol=0, atol=1e-6)


class _Attention(nn.Module):
    """Self-attention over (batch, tokens, WIDTH) with the mask `masking` builds from the input."""

    def __init__(self, masking: str) -> None:
        super().__init__()
        self.qkv, self.masking = nn.Linear(WIDTH, 3 * WIDTH), masking

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (y.view(b, t, HEADS, -1).transpose(1, 2) for y in self.qkv(x).chunk(3, dim=-1))
        positions = torch.arange(t, device=x.device)
        if self.masking == "causal":  # a fixed tensor, but not all True
            mask = (positions[:, None] >= positions[None, :]).expand(b, 1, t, t)
        elif self.masking == "from the input":  # all True for most inputs, but read from them
            mask = (x.abs().sum(-1) >= 0)[:, None, None, :].expand(b, 1, t, t)
        else:  # "every token": all True at any size
            mask = (positions >= 0)[None, None, None, :].expand(b, 1, t, t)
        return functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, WIDTH)


def test_a_traced_bert_encoder_loses_the_all_true_mask_it_built_and_computes_the_same() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(config, add_pooling_layer=False)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids).last_hidden_state  # type: ignore[no-any-return]

    ids = torch.randint(0, 100, (2, TOKENS))
    program = _export(Encoder(), ids, {0: torch.export.Dim("batch", max=64)})
    assert all(isinstance(m, fx.Node) for m in _masks(program.module()))  # transformers built one

    gm = rebuild(program)

    assert _masks(gm) == [None, None]
    assert not [n for n in gm.graph.nodes if op_name(n) in ("ge", "le")]
    _same_outputs(gm, program, [torch.randint(0, 100, (b, TOKENS)) for b in (1, 3, 7)])


def test_an_all_true_mask_expanded_to_the_batch_is_dropped() -> None:
    program = _export(_Attention("every token"), torch.randn(2, TOKENS, WIDTH), {0: torch.export.Dim("batch")})

    gm = rebuild(program)

    assert _masks(gm) == [None]
    _same_outputs(gm, program, [torch.randn(b, TOKENS, WIDTH) for b in (1, 5)])


@pytest.mark.parametrize(
    ("masking", "dynamic"),
    [
        ("causal", {0: torch.export.Dim("batch")}),
        ("from the input", {0: torch.export.Dim("batch")}),
        # All True at every length, but its shape follows the input's: not proved fixed, so kept.
        ("every token", {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens", min=2, max=64)}),
    ],
)
def test_a_mask_that_could_mask_something_is_kept(masking: str, dynamic: dict[int, Any]) -> None:
    program = _export(_Attention(masking), torch.randn(2, TOKENS, WIDTH), dynamic)

    gm = rebuild(program)

    assert all(isinstance(m, fx.Node) for m in _masks(gm))
    _same_outputs(gm, program, [torch.randn(3, TOKENS, WIDTH)])
