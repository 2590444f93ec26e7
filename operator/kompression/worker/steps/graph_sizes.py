"""Sizes in a rebuilt torch.export graph that hold a width a pruning step changes, found and rewritten.

The graph spells many sizes as constants (``view(x, [5, batch * 12, 64])``, ``reshape(x, [batch, 768,
4])``). To change a width (the number of heads, a layer's output channels) every size that holds it
must change too, and which ones do is not guessed from their values (a head count can equal the
token count): the width is one factor of one dimension, followed through every reshape, transpose
and select as shapes regroup, so each size is known to hold it or not.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from kompression.worker.formats.graph_rebuild import CHANNEL_LAYERS, op_name

# One factor of a dimension: its size and whether it is the width being changed.
Factor = tuple[int, bool]
Dims = list[list[Factor]]

REGROUP = {"view", "reshape", "_unsafe_view", "unflatten", "flatten"}
SAME = {"contiguous", "clone", "alias", "dropout", "detach"}


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


def regroup(dims: Dims, sizes: Sequence[int]) -> Dims | None:
    """The factors of `dims` grouped into dimensions of `sizes` (same element count), splitting a
    factor other than the width where a dimension ends inside it; None where they do not fit."""
    pending = [f for dim in dims for f in dim if f[0] != 1]
    out: Dims = []
    for size in sizes:
        group: list[Factor] = []
        need = size
        while need > 1:
            if not pending:
                return None
            width, held = pending.pop(0)
            if need % width == 0:
                group.append((width, held))
                need //= width
            elif width % need == 0 and not held:
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


MOVES: dict[str, Callable[[Dims, Sequence[Any]], Dims | None]] = {
    "transpose": _transpose,
    "permute": _permute,
    "unsqueeze": _unsqueeze,
    "squeeze": _squeeze,
    "select": _select,
}


def follow(node: fx.Node, dims: Dims, shape: tuple[int, ...]) -> Dims | None:
    """The factors of `node`'s output, given those of its tensor input; None for ops not followed."""
    name = op_name(node)
    if name in SAME:
        return dims
    if name in REGROUP:
        return regroup(dims, shape)
    move = MOVES.get(name)
    return None if move is None else move(dims, node.args)


def size_args(node: fx.Node) -> tuple[int, list[Any], bool] | None:
    """Where a regrouping node's sizes start in its arguments, the sizes, and whether they are one
    list (``view(x, [a, b])``) rather than spread (``x.view(a, b)``); None for flatten, which has none."""
    name = op_name(node)
    if name == "flatten":
        return None
    position = 2 if name == "unflatten" else 1
    if len(node.args) <= position:
        return None
    value = node.args[position]
    if isinstance(value, (list, tuple)):
        return position, list(value), True
    return position, list(node.args[position:]), False


def held_positions(node: fx.Node, dims: Dims, width: int) -> list[int] | None:
    """The positions among `node`'s size arguments of the dimensions holding the width, each a
    constant or batch times a constant that a new width can replace; None where one is not."""
    found = size_args(node)
    held = [i for i, dim in enumerate(dims) if any(h for _, h in dim)]
    if found is None:
        return [] if op_name(node) == "flatten" else None
    _, sizes, _ = found
    # unflatten's sizes replace one input dimension: output dimension i is size i - dim.
    offset = int(node.args[1]) % (len(dims) - len(sizes) + 1) if op_name(node) == "unflatten" else 0  # type: ignore[arg-type]
    positions = []
    for index in held:
        at = index - offset
        if not 0 <= at < len(sizes):
            return None
        size = sizes[at]
        constant = size.args[1] if isinstance(size, fx.Node) and size.target == operator.mul else size
        if size == -1:
            continue
        if not isinstance(constant, int) or isinstance(constant, bool) or constant % width:
            return None
        positions.append(at)
    return positions


def resize(graph: fx.Graph, node: fx.Node, positions: list[int], width: int, new: int) -> None:
    """Rewrite the held sizes of a regrouping node for the width `new` instead of `width`."""
    found = size_args(node)
    if found is None:
        return
    position, sizes, packed = found
    for at in positions:
        size = sizes[at]
        if isinstance(size, fx.Node):  # batch times a constant: a new product, the old may be shared
            batch, constant = size.args
            assert isinstance(constant, int)  # held_positions admitted only these
            with graph.inserting_before(node):
                sizes[at] = graph.call_function(operator.mul, (batch, constant // width * new))
        else:
            sizes[at] = size // width * new
    node.args = (*node.args[:position], sizes) if packed else (*node.args[:position], *sizes)


Plan = dict[fx.Node, list[int]]


def width_plan(gm: fx.GraphModule, layer: str, sizes: dict[fx.Node, tuple[int, ...]]) -> Plan | None:
    """The regrouping nodes between `layer` and the next layers that hold its output width, each
    with the positions of those sizes (for ``resize``); None where some op on the way cannot be
    followed, or a size there cannot be rewritten."""
    start = next((n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) == layer), None)
    if start is None or start not in sizes:
        return None
    module = gm.get_submodule(layer)
    shape = sizes[start]
    channel = 1 if isinstance(module, nn.modules.conv._ConvNd) else len(shape) - 1
    width = shape[channel]
    dims: dict[fx.Node, Dims] = {start: [[(s, i == channel)] for i, s in enumerate(shape)]}
    plan: Plan = {}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in dims or user.op == "output":
                continue
            if user.op == "call_module" and isinstance(gm.get_submodule(str(user.target)), CHANNEL_LAYERS):
                continue  # a new layer starts new channels
            followed = _next_dims(user, dims[node], node, sizes)
            if followed is None:
                return None
            if op_name(user) in REGROUP or op_name(user) == "expand":
                held = (
                    held_positions(user, followed, width) if op_name(user) in REGROUP else _expand_free(user, followed)
                )
                if held is None:
                    return None
                plan[user] = held
            dims[user] = followed
            frontier.append(user)
    return plan


def _next_dims(user: fx.Node, dims: Dims, source: fx.Node, sizes: dict[fx.Node, tuple[int, ...]]) -> Dims | None:
    """The factors of `user`'s output, reached from its input `source`: shape ops are followed;
    any other op must keep the dimensions holding the width where they were, at their size."""
    if user not in sizes:
        return None  # a tuple (split, chunk) or no tensor at all
    if op_name(user) in REGROUP | SAME | set(MOVES) and user.args[:1] == (source,):
        return follow(user, dims, sizes[user])
    out = sizes[user]
    held = [i for i, dim in enumerate(dims) if any(h for _, h in dim)]
    if len(out) != len(dims) or any(out[i] != math.prod(w for w, _ in dims[i]) for i in held):
        return None
    return [dims[i] if i in held else [(s, False)] for i, s in enumerate(out)]


def _expand_free(node: fx.Node, dims: Dims) -> list[int] | None:
    """An expand keeps the held dimensions only where it spells them -1 (keep the size)."""
    found = size_args(node)
    if found is None:
        return None
    _, sizes, _ = found
    held = [i for i, dim in enumerate(dims) if any(h for _, h in dim)]
    offset = len(sizes) - len(dims)
    return [] if all(sizes[i + offset] == -1 for i in held) else None
