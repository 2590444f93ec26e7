"""Find the attention blocks of a rebuilt torch.export graph and remove whole heads from them.

An attention block here is one ``scaled_dot_product_attention`` call whose query, key and value
each come from a Linear layer (one packed layer for all three, as nn.MultiheadAttention's
``in_proj``, or one each, as HuggingFace's BERT) through shape ops only, and whose output reaches
one Linear (the output projection) the same way. Removing a head deletes its rows from the
projections feeding it and its columns from the output projection.

The graph spells head counts as constants (torchvision's ViT views its queries as
``[5, batch * 12, 64]``, HuggingFace uses -1 heads but constant head and token sizes), so the
sizes of every view and reshape between the projections and attention are rewritten. Which size
holds the heads is not guessed from its value (a head count can equal the token count): each
projection's output width is split into its factors ``[chunks, heads, head_dim]`` and those
factors are followed through every reshape, transpose and select to the attention call, which
must see them as ``[..., heads, tokens, head_dim]``; a block whose shapes do not follow is left
whole. How heads are ranked is the caller's: this module only finds blocks and applies a choice.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from kompression.worker.formats.graph_rebuild import op_name
from kompression.worker.steps import graph_sizes

aten = torch.ops.aten


@dataclass
class AttentionBlock:
    """One attention call: the layers feeding it, the heads, and the nodes whose sizes hold them."""

    sources: dict[str, int]  # projection layer path -> its per-head width (head_dim), q/k/v
    output: str  # the output projection's layer path
    heads: int
    value_dim: int
    # Each regrouping node between the projections and the output projection, with the positions
    # among its size arguments of the sizes that hold the heads.
    resized: dict[fx.Node, list[int]] = field(default_factory=dict)

    def rows(self, layer: nn.Linear, source: str, heads: Sequence[int]) -> list[int]:
        """The projection's output rows that belong to the given heads, in every chunk it packs."""
        width = self.sources[source]
        chunks = layer.out_features // (self.heads * width)
        return [c * self.heads * width + h * width + j for c in range(chunks) for h in heads for j in range(width)]

    def columns(self, heads: Sequence[int]) -> list[int]:
        return [h * self.value_dim + j for h in heads for j in range(self.value_dim)]


def _is_linear(gm: fx.GraphModule, node: Any) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and isinstance(gm.get_submodule(str(node.target)), nn.Linear)
    )


def _tensor_input(node: fx.Node) -> fx.Node | None:
    first = node.args[0] if node.args else None
    return first if isinstance(first, fx.Node) else None


def _chain_back(gm: fx.GraphModule, start: fx.Node) -> list[fx.Node] | None:
    """The nodes from a Linear layer to `start` (the layer first), through followed ops only."""
    chain = [start]
    node = start
    while not _is_linear(gm, node):
        if op_name(node) not in graph_sizes.REGROUP | graph_sizes.SAME | set(graph_sizes.MOVES):
            return None
        parent = _tensor_input(node)
        if parent is None:
            return None
        node = parent
        chain.append(node)
    return chain[::-1]


def _chain_forward(gm: fx.GraphModule, start: fx.Node) -> list[fx.Node] | None:
    """The nodes from `start` to the one Linear layer its output reaches (the layer last)."""
    chain = [start]
    node = start
    while True:
        users = list(node.users)
        if len(users) != 1 or users[0].args[:1] != (node,):
            return None
        node = users[0]
        chain.append(node)
        if _is_linear(gm, node):
            return chain
        if op_name(node) not in graph_sizes.REGROUP | graph_sizes.SAME | set(graph_sizes.MOVES):
            return None


def _source_dims(shape: tuple[int, ...], heads: int, width: int) -> graph_sizes.Dims | None:
    """A projection's output: the last dimension as ``[chunks, heads, width]``."""
    if shape[-1] % (heads * width):
        return None
    chunks = shape[-1] // (heads * width)
    return [[(s, False)] for s in shape[:-1]] + [[(chunks, False), (heads, True), (width, False)]]


def _walk(
    chain: list[fx.Node], dims: graph_sizes.Dims, sizes: dict[fx.Node, tuple[int, ...]], block: AttentionBlock
) -> graph_sizes.Dims | None:
    """Follow the factors along `chain` (its first node already described by `dims`), noting in
    `block` every regrouping whose output holds the heads."""
    for node in chain[1:]:
        if node not in sizes:
            return None
        followed = graph_sizes.follow(node, dims, sizes[node])
        if followed is None:
            return None
        dims = followed
        if op_name(node) in graph_sizes.REGROUP:
            held = graph_sizes.held_positions(node, dims, block.heads)
            if held is None or block.resized.setdefault(node, held) != held:
                return None
    return dims


def _head_axis(dims: graph_sizes.Dims, heads: int, width: int) -> bool:
    """Attention's view of an input: ``[..., heads, tokens, width]``, the heads alone in their dimension."""
    return (
        len(dims) >= 3
        and dims[-3] == [(heads, True)]
        and not any(h for d in dims[:-3] + dims[-2:] for _, h in d)
        and math.prod(w for w, _ in dims[-1]) == width
    )


def _block(gm: fx.GraphModule, attention: fx.Node, sizes: dict[fx.Node, tuple[int, ...]]) -> AttentionBlock | None:
    args = attention.args[:3]
    if len(args) < 3 or not all(isinstance(a, fx.Node) and a in sizes for a in args):
        return None
    q, k, v = (sizes[a] for a in args)  # type: ignore[index]
    heads, head_dim, value_dim = q[-3], q[-1], v[-1]
    if heads < 2 or k[-3] != heads or v[-3] != heads:  # grouped-query attention keeps its heads
        return None
    block = AttentionBlock({}, "", heads, value_dim)
    for arg, width in zip(args, (head_dim, head_dim, value_dim), strict=True):
        if not _source(gm, arg, width, sizes, block):  # type: ignore[arg-type]
            return None
    return block if _output(gm, attention, sizes, block) else None


def _source(
    gm: fx.GraphModule, arg: fx.Node, width: int, sizes: dict[fx.Node, tuple[int, ...]], block: AttentionBlock
) -> bool:
    """Whether one attention input comes from a projection whose rows are ``[chunks, heads, width]``
    (noted in `block`)."""
    chain = _chain_back(gm, arg)
    if chain is None or chain[0] not in sizes:
        return False
    if block.sources.setdefault(str(chain[0].target), width) != width:
        return False
    start = _source_dims(sizes[chain[0]], block.heads, width)
    dims = None if start is None else _walk(chain, start, sizes, block)
    return dims is not None and _head_axis(dims, block.heads, width)


def _output(
    gm: fx.GraphModule, attention: fx.Node, sizes: dict[fx.Node, tuple[int, ...]], block: AttentionBlock
) -> bool:
    """Whether attention's output reaches one Linear that reads the heads as the outer factor of
    its input width (noted in `block` as its output projection)."""
    after = _chain_forward(gm, attention)
    if after is None:
        return False
    shape = sizes[attention]
    start = [[(s, False)] for s in shape[:-3]] + [
        [(block.heads, True)],
        [(shape[-2], False)],
        [(block.value_dim, False)],
    ]
    final = _walk(after[:-1], start, sizes, block)
    if final is None or [f for f in final[-1] if f[0] != 1] != [(block.heads, True), (block.value_dim, False)]:
        return False
    block.output = str(after[-1].target)
    return block.output not in block.sources and not any(h for d in final[:-1] for _, h in d)


def attention_blocks(gm: nn.Module, inputs: Sequence[torch.Tensor]) -> list[AttentionBlock]:
    """The graph's attention blocks whose heads can be removed, in graph order."""
    if not isinstance(gm, fx.GraphModule):
        return []
    sizes = graph_sizes.shapes(gm, inputs)
    calls = [
        n for n in gm.graph.nodes if n.op == "call_function" and n.target == aten.scaled_dot_product_attention.default
    ]
    found = [b for b in (_block(gm, n, sizes) for n in calls) if b is not None]
    # A layer that feeds two blocks would have to lose the heads of both: leave both whole.
    uses = Counter(layer for b in found for layer in {*b.sources, b.output})
    return [b for b in found if all(uses[layer] == 1 for layer in {*b.sources, b.output})]


def remove_heads(gm: fx.GraphModule, block: AttentionBlock, keep: Sequence[int]) -> None:
    """Keep only the heads `keep` (sorted indices) of `block`: the layers shrink and the graph's
    sizes follow."""
    for source in block.sources:
        layer = gm.get_submodule(source)
        assert isinstance(layer, nn.Linear)
        rows = torch.tensor(block.rows(layer, source, keep), device=layer.weight.device)
        layer.weight = nn.Parameter(layer.weight.detach()[rows].clone())
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.detach()[rows].clone())
        layer.out_features = len(rows)
    output = gm.get_submodule(block.output)
    assert isinstance(output, nn.Linear)
    columns = torch.tensor(block.columns(keep), device=output.weight.device)
    output.weight = nn.Parameter(output.weight.detach()[:, columns].clone())
    output.in_features = len(columns)
    for node, positions in block.resized.items():
        graph_sizes.resize(gm.graph, node, positions, block.heads, len(keep))
    gm.graph.lint()
    gm.recompile()
