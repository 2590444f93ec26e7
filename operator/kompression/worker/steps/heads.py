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
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from kompression.worker.formats.graph_rebuild import slice_dim

aten = torch.ops.aten

# One factor of a dimension: its size and whether it is the head count.
Factor = tuple[int, bool]
Dims = list[list[Factor]]

_REGROUP = {"view", "reshape", "_unsafe_view", "unflatten", "flatten"}
_SAME = {"contiguous", "clone", "alias", "dropout", "detach"}


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


def _name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if node.target is slice_dim:
        return "slice"
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        return str(node.target._opname)
    return ""


def _is_linear(gm: fx.GraphModule, node: Any) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and isinstance(gm.get_submodule(str(node.target)), nn.Linear)
    )


def shapes(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> dict[fx.Node, tuple[int, ...]]:
    """Every tensor-valued node's shape on these inputs (the graph's stored shapes may predate an
    earlier pruning)."""
    found: dict[fx.Node, tuple[int, ...]] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                found[n] = tuple(value.shape)
            return value

    with torch.no_grad():
        _Record(gm).run(*inputs)
    return found


def _regroup(dims: Dims, sizes: Sequence[int]) -> Dims | None:
    """The factors of `dims` grouped into dimensions of `sizes` (same element count), splitting a
    factor other than the heads where a dimension ends inside it; None where they do not fit."""
    pending = [f for dim in dims for f in dim if f[0] != 1]
    out: Dims = []
    for size in sizes:
        group: list[Factor] = []
        need = size
        while need > 1:
            if not pending:
                return None
            width, is_head = pending.pop(0)
            if need % width == 0:
                group.append((width, is_head))
                need //= width
            elif width % need == 0 and not is_head:
                group.append((need, False))
                pending.insert(0, (width // need, False))
                need = 1
            else:
                return None
        out.append(group)
    return out if not pending else None


def _dim(index: Any, rank: int) -> int:
    return int(index) % rank


def _transpose(dims: Dims, args: Sequence[Any]) -> Dims | None:
    a, b = _dim(args[1], len(dims)), _dim(args[2], len(dims))
    moved = list(dims)
    moved[a], moved[b] = moved[b], moved[a]
    return moved


def _permute(dims: Dims, args: Sequence[Any]) -> Dims | None:
    return [dims[_dim(d, len(dims))] for d in args[1]]


def _unsqueeze(dims: Dims, args: Sequence[Any]) -> Dims | None:
    at = int(args[1]) % (len(dims) + 1)
    return [*dims[:at], [], *dims[at:]]


def _squeeze(dims: Dims, args: Sequence[Any]) -> Dims | None:
    if len(args) < 2 or not isinstance(args[1], int):
        return None  # squeeze of every size-1 dimension: which ones depends on the batch
    at = _dim(args[1], len(dims))
    return [d for i, d in enumerate(dims) if i != at] if math.prod(w for w, _ in dims[at]) == 1 else dims


def _select(dims: Dims, args: Sequence[Any]) -> Dims | None:
    at = _dim(args[1], len(dims))
    return None if any(h for _, h in dims[at]) else [d for i, d in enumerate(dims) if i != at]


_MOVES: dict[str, Callable[[Dims, Sequence[Any]], Dims | None]] = {
    "transpose": _transpose,
    "permute": _permute,
    "unsqueeze": _unsqueeze,
    "squeeze": _squeeze,
    "select": _select,
}


def _follow(node: fx.Node, dims: Dims, shape: tuple[int, ...]) -> Dims | None:
    """The factors of `node`'s output, given those of its tensor input; None for ops not followed."""
    name = _name(node)
    if name in _SAME:
        return dims
    if name in _REGROUP:
        return _regroup(dims, shape)
    move = _MOVES.get(name)
    return None if move is None else move(dims, node.args)


def _tensor_input(node: fx.Node) -> fx.Node | None:
    first = node.args[0] if node.args else None
    return first if isinstance(first, fx.Node) else None


def _chain_back(gm: fx.GraphModule, start: fx.Node) -> list[fx.Node] | None:
    """The nodes from a Linear layer to `start` (the layer first), through followed ops only."""
    chain = [start]
    node = start
    while not _is_linear(gm, node):
        if _name(node) not in _REGROUP | _SAME | set(_MOVES):
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
        if _name(node) not in _REGROUP | _SAME | set(_MOVES):
            return None


def _source_dims(shape: tuple[int, ...], heads: int, width: int) -> Dims | None:
    """A projection's output: the last dimension as ``[chunks, heads, width]``."""
    if shape[-1] % (heads * width):
        return None
    chunks = shape[-1] // (heads * width)
    return [[(s, False)] for s in shape[:-1]] + [[(chunks, False), (heads, True), (width, False)]]


def _walk(
    chain: list[fx.Node], dims: Dims, sizes: dict[fx.Node, tuple[int, ...]], block: AttentionBlock
) -> Dims | None:
    """Follow the factors along `chain` (its first node already described by `dims`), noting in
    `block` every regrouping whose output holds the heads."""
    for node in chain[1:]:
        if node not in sizes:
            return None
        followed = _follow(node, dims, sizes[node])
        if followed is None:
            return None
        dims = followed
        if _name(node) in _REGROUP:
            held = _held_positions(node, dims, block.heads)
            if held is None or block.resized.setdefault(node, held) != held:
                return None
    return dims


def _head_axis(dims: Dims, heads: int, width: int) -> bool:
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
    sizes = shapes(gm, inputs)
    blocks = []
    used: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == aten.scaled_dot_product_attention.default:
            block = _block(gm, node, sizes)
            layers = set(block.sources) | {block.output} if block else set()
            if block is not None and not layers & used:  # a layer shared by two blocks: leave both
                blocks.append(block)
                used |= layers
    return blocks


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
        _resize(gm.graph, node, positions, block.heads, len(keep))
    gm.graph.lint()
    gm.recompile()


def _size_args(node: fx.Node) -> tuple[int, list[Any], bool] | None:
    """Where a regrouping node's sizes start in its arguments, the sizes, and whether they are one
    list (``view(x, [a, b])``) rather than spread (``x.view(a, b)``); None for flatten, which has none."""
    name = _name(node)
    if name == "flatten":
        return None
    position = 2 if name == "unflatten" else 1
    if len(node.args) <= position:
        return None
    value = node.args[position]
    if isinstance(value, (list, tuple)):
        return position, list(value), True
    return position, list(node.args[position:]), False


def _held_positions(node: fx.Node, dims: Dims, heads: int) -> list[int] | None:
    """The positions among `node`'s size arguments of the dimensions holding the heads, each a
    constant or batch times a constant that the new head count can replace; None where one is not."""
    found = _size_args(node)
    held = [i for i, dim in enumerate(dims) if any(h for _, h in dim)]
    if found is None:
        return [] if _name(node) == "flatten" else None
    _, sizes, _ = found
    # unflatten's sizes replace one input dimension: output dimension i is size i - dim.
    offset = int(node.args[1]) % (len(dims) - len(sizes) + 1) if _name(node) == "unflatten" else 0  # type: ignore[arg-type]
    positions = []
    for index in held:
        at = index - offset
        if not 0 <= at < len(sizes):
            return None
        size = sizes[at]
        constant = size.args[1] if isinstance(size, fx.Node) and size.target == operator.mul else size
        if size == -1:
            continue
        if not isinstance(constant, int) or isinstance(constant, bool) or constant % heads:
            return None
        positions.append(at)
    return positions


def _resize(graph: fx.Graph, node: fx.Node, positions: list[int], heads: int, kept: int) -> None:
    """Rewrite the held sizes of a regrouping node for `kept` heads of `heads`."""
    found = _size_args(node)
    if found is None:
        return
    position, sizes, packed = found
    for at in positions:
        size = sizes[at]
        if isinstance(size, fx.Node):  # batch times a constant: a new product, the old may be shared
            batch, constant = size.args
            assert isinstance(constant, int)  # _held_positions admitted only these
            with graph.inserting_before(node):
                sizes[at] = graph.call_function(operator.mul, (batch, constant // heads * kept))
        else:
            sizes[at] = size // heads * kept
    node.args = (*node.args[:position], sizes) if packed else (*node.args[:position], *sizes)
