"""Turn a loaded torch.export program into a graph of real layers (nn.Conv2d, nn.Linear, ...).

``ExportedProgram.module()`` keeps the program's topology (residual branches, concatenations,
attention) but computes with aten calls on loose parameters: there is no nn.Linear left for
pruning, distillation or quantization to find. ``rebuild`` keeps that graph and replaces each
weight-carrying aten call (convolution, linear, batch/layer/group norm, embedding, PReLU) with a
``call_module`` node of the matching nn layer, registered under the parameter's original owner
(``layer1.0.conv1`` stays ``layer1.0.conv1``), so state-dict keys and layer names match the
user's architecture and Torch-Pruning's dependency graph sees every layer. A parameter that is
not called ``weight`` (``in_proj_weight`` of nn.MultiheadAttention) gets a layer named after it
(``in_proj``), since its owner also holds other parameters.

The rebuilt graph must reproduce the program: ``check_parity`` compares both on example inputs.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from kompression.worker.errors import ModelError

PARITY_ATOL = 1e-5

aten = torch.ops.aten


@dataclass(frozen=True)
class _Layer:
    """How one aten op becomes a layer: the argument holding the weight, and the layer's inputs."""

    weight_arg: str
    input_args: tuple[str, ...]
    build: Callable[[dict[str, Any], Any], nn.Module]


def _tuple(value: Any, n: int) -> Any:  # the conv classes type it per dimension count
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(values * n if len(values) == 1 else values)


def _conv(dims: int, transposed: bool = False) -> Callable[[dict[str, Any], Any], nn.Module]:
    def build(bound: dict[str, Any], _input: Any) -> nn.Module:
        weight, groups = bound["weight"], int(bound.get("groups", 1))
        if bound.get("transposed", transposed):
            cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
            return cls(
                weight.shape[0],
                weight.shape[1] * groups,
                tuple(weight.shape[2:]),
                stride=_tuple(bound.get("stride", 1), dims),
                padding=_tuple(bound.get("padding", 0), dims),
                output_padding=_tuple(bound.get("output_padding", 0), dims),
                groups=groups,
                bias=bound.get("bias") is not None,
                dilation=_tuple(bound.get("dilation", 1), dims),
            )
        padding = bound.get("padding", 0)
        conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        return conv_cls(
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=_tuple(bound.get("stride", 1), dims),
            padding=padding if isinstance(padding, str) else _tuple(padding, dims),
            dilation=_tuple(bound.get("dilation", 1), dims),
            groups=groups,
            bias=bound.get("bias") is not None,
        )

    return build


def _convolution(bound: dict[str, Any], input_val: Any) -> nn.Module:
    return _conv(bound["weight"].dim() - 2)(bound, input_val)


def _linear(bound: dict[str, Any], _input: Any) -> nn.Module:
    weight = bound["weight"]
    return nn.Linear(weight.shape[1], weight.shape[0], bias=bound.get("bias") is not None)


def _batch_norm(bound: dict[str, Any], input_val: Any) -> nn.Module:
    dim = input_val.dim() if isinstance(input_val, torch.Tensor) else 4
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 5: nn.BatchNorm3d}.get(dim, nn.BatchNorm2d)
    return cls(
        bound["running_mean"].shape[0],
        eps=float(bound.get("eps", 1e-5)),
        momentum=float(bound.get("momentum", 0.1)),
        affine=bound.get("weight") is not None,
    )


def _layer_norm(bound: dict[str, Any], _input: Any) -> nn.Module:
    return nn.LayerNorm(
        list(bound["normalized_shape"]),
        eps=float(bound.get("eps", 1e-5)),
        elementwise_affine=bound.get("weight") is not None,
        bias=bound.get("bias") is not None,
    )


def _group_norm(bound: dict[str, Any], _input: Any) -> nn.Module:
    weight = bound["weight"]
    return nn.GroupNorm(int(bound["num_groups"]), weight.shape[0], eps=float(bound.get("eps", 1e-5)))


def _embedding(bound: dict[str, Any], _input: Any) -> nn.Module:
    weight = bound["weight"]
    padding = int(bound.get("padding_idx", -1))
    return nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=None if padding < 0 else padding)


def _prelu(bound: dict[str, Any], _input: Any) -> nn.Module:
    return nn.PReLU(bound["weight"].numel())


LAYERS: dict[Any, _Layer] = {
    aten.conv1d.default: _Layer("weight", ("input",), _conv(1)),
    aten.conv2d.default: _Layer("weight", ("input",), _conv(2)),
    aten.conv3d.default: _Layer("weight", ("input",), _conv(3)),
    aten.conv1d.padding: _Layer("weight", ("input",), _conv(1)),
    aten.conv2d.padding: _Layer("weight", ("input",), _conv(2)),
    aten.conv3d.padding: _Layer("weight", ("input",), _conv(3)),
    aten.conv_transpose1d.default: _Layer("weight", ("input",), _conv(1, transposed=True)),
    aten.conv_transpose2d.input: _Layer("weight", ("input",), _conv(2, transposed=True)),
    aten.conv_transpose3d.input: _Layer("weight", ("input",), _conv(3, transposed=True)),
    aten.convolution.default: _Layer("weight", ("input",), _convolution),
    aten.linear.default: _Layer("weight", ("input",), _linear),
    aten.batch_norm.default: _Layer("running_mean", ("input",), _batch_norm),
    aten.layer_norm.default: _Layer("weight", ("input",), _layer_norm),
    aten.group_norm.default: _Layer("weight", ("input",), _group_norm),
    aten.embedding.default: _Layer("weight", ("indices",), _embedding),
    aten.prelu.default: _Layer("weight", ("self",), _prelu),
}
# Arguments a layer's own attributes hold: the rebuild must find them constant, not computed.
_TENSOR_ARGS = ("weight", "bias", "running_mean", "running_var")


def _bind(node: fx.Node) -> dict[str, Any] | None:
    """The op's arguments by schema name, defaults filled in; None when the schema does not bind."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    bound: dict[str, Any] = {}
    for index, argument in enumerate(schema.arguments):
        if index < len(node.args):
            bound[argument.name] = node.args[index]
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
    return bound


def _attr_path(node: Any) -> str | None:
    return str(node.target) if isinstance(node, fx.Node) and node.op == "get_attr" else None


def _layer_path(gm: fx.GraphModule, weight_fqn: str, state: set[str]) -> str:
    """Where the rebuilt layer lives: the weight's owner when it holds nothing the layer lacks,
    else a child of the owner named after the parameter (``in_proj_weight`` -> ``in_proj``)."""
    owner_path, _, attr = weight_fqn.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    own = {n for n, _ in owner.named_parameters(recurse=False)} | {n for n, _ in owner.named_buffers(recurse=False)}
    if owner_path and attr in ("weight", "running_mean") and own <= state and not list(owner.children()):
        return owner_path
    stem = attr.removesuffix("_weight").removesuffix("weight").strip("_") or "layer"
    path = f"{owner_path}.{stem}" if owner_path else stem
    while _has_path(gm, path):
        path += "_layer"
    return path


def _has_path(gm: nn.Module, path: str) -> bool:
    try:
        gm.get_submodule(path)
        return True
    except AttributeError:
        return False


def _set_module(gm: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    if leaf in parent._modules:
        parent._modules[leaf] = module
    else:
        parent.add_module(leaf, module)


def _delete_attr(gm: nn.Module, fqn: str) -> None:
    owner_path, _, attr = fqn.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    for table in (owner._parameters, owner._buffers):
        table.pop(attr, None)


def _fetch(gm: nn.Module, fqn: str) -> torch.Tensor:
    owner_path, _, attr = fqn.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    value = getattr(owner, attr)
    assert isinstance(value, torch.Tensor)
    return value


def _candidate(gm: fx.GraphModule, node: fx.Node) -> tuple[_Layer, dict[str, Any], dict[str, str]] | None:
    """The layer recipe, its bound arguments (tensors filled in) and the tensor args' FQNs, or None."""
    recipe = LAYERS.get(node.target)
    if node.op != "call_function" or recipe is None:
        return None
    bound = _bind(node)
    if bound is None or not isinstance(bound.get(recipe.input_args[0]), fx.Node):
        return None
    fqns: dict[str, str] = {}
    for name in _TENSOR_ARGS:
        value = bound.get(name)
        if value is None:
            continue
        path = _attr_path(value)
        if path is None:  # computed at run time (e.g. a weight made by another op): not a layer
            return None
        fqns[name] = path
        bound[name] = _fetch(gm, path)
    computed = any(isinstance(v, fx.Node) for k, v in bound.items() if k not in fqns and k not in recipe.input_args)
    # Exported in training mode, batch norm uses batch statistics: not a fixed layer.
    training = node.target == aten.batch_norm.default and bool(bound.get("training"))
    if computed or training or recipe.weight_arg not in fqns:
        return None
    return recipe, bound, fqns


def _install(
    gm: fx.GraphModule, recipe: _Layer, bound: dict[str, Any], fqns: dict[str, str], moved: dict[str, str]
) -> str:
    """Build the layer holding the call's tensors, put it in the module tree, and return its path;
    `moved` learns where each tensor went."""
    layer = recipe.build(bound, bound[recipe.input_args[0]].meta.get("val"))
    state = {name: _fetch(gm, fqn) for name, fqn in fqns.items()}
    owner_path = fqns[recipe.weight_arg].rpartition(".")[0]
    tracked_fqn = f"{owner_path}.num_batches_tracked" if owner_path else "num_batches_tracked"
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if "num_batches_tracked" in dict(layer.named_buffers()) and "num_batches_tracked" in owner._buffers:
        state["num_batches_tracked"] = _fetch(gm, tracked_fqn)
        fqns = {**fqns, "num_batches_tracked": tracked_fqn}
    layer.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    path = _layer_path(gm, fqns[recipe.weight_arg], set(layer.state_dict()))
    for name, fqn in fqns.items():
        _delete_attr(gm, fqn)
        moved[fqn] = _moved(path, name)
    _set_module(gm, path, layer)
    return path


def _undecompose(graph: fx.Graph) -> None:
    """Core-aten graphs (after ``run_decompositions()``) spell layers as lower ops: a transposed
    weight into addmm/mm, and the native norms returning tuples. Put back the layer-level calls."""
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        transposed = node.target == aten.t.default or (
            node.target == aten.permute.default and list(node.args[1]) == [1, 0]
        )
        if transposed and _attr_path(node.args[0]) and node.users:
            users = list(node.users)
            products = [u for u in users if u.target in (aten.addmm.default, aten.mm.default)]
            if len(products) != len(users) or any(u.args[-1] is not node or u.kwargs for u in products):
                continue
            for user in products:
                bias = user.args[0] if user.target == aten.addmm.default else None
                _replace(graph, user, aten.linear.default, (user.args[-2], node.args[0], bias))
            graph.erase_node(node)
        elif node.target in _NATIVE_NORMS and all(u.target == operator.getitem for u in node.users):
            outputs = [u for u in node.users if u.args[1] == 0]
            if len(outputs) == len(node.users) and outputs:
                target, args = _NATIVE_NORMS[node.target](node.args)
                for output in outputs:
                    _replace(graph, output, target, args)
                graph.erase_node(node)


_NATIVE_NORMS: dict[Any, Callable[[tuple[Any, ...]], tuple[Any, tuple[Any, ...]]]] = {
    # (input, weight, bias, running_mean, running_var, momentum, eps)
    aten._native_batch_norm_legit_no_training.default: lambda a: (
        aten.batch_norm.default,
        (a[0], a[1], a[2], a[3], a[4], False, a[5], a[6], False),
    ),
    # (input, normalized_shape, weight, bias, eps)
    aten.native_layer_norm.default: lambda a: (aten.layer_norm.default, (a[0], a[1], a[2], a[3], a[4], False)),
}


def _replace(graph: fx.Graph, node: fx.Node, target: Any, args: tuple[Any, ...]) -> None:
    with graph.inserting_before(node):
        call = graph.call_function(target, args)
    call.meta.update(node.meta)
    node.replace_all_uses_with(call)
    graph.erase_node(node)


def rebuild(program: Any) -> fx.GraphModule:
    """The program's graph with its weight-carrying aten calls turned into nn layers."""
    gm: fx.GraphModule = program.module()
    graph = gm.graph
    _undecompose(graph)
    moved: dict[str, str] = {}  # old parameter FQN -> new FQN
    built: dict[str, tuple[str, Any, dict[str, Any]]] = {}  # weight FQN -> (layer path, op, fixed args)
    for node in list(graph.nodes):
        found = _candidate(gm, node)
        if found is None:
            continue
        recipe, bound, fqns = found
        weight_fqn = fqns[recipe.weight_arg]
        settings = {k: v for k, v in bound.items() if k not in recipe.input_args and k not in fqns}
        previous = built.get(weight_fqn)
        if previous is not None:
            # The same weights called again (a shared layer): reuse the layer if the call is the same.
            path, target, earlier = previous
            if (
                target != node.target
                or earlier != settings
                or any(moved.get(f) != _moved(path, k) for k, f in fqns.items())
            ):
                continue
        else:
            path = _install(gm, recipe, bound, fqns, moved)
            built[weight_fqn] = (path, node.target, settings)
        with graph.inserting_before(node):
            replacement = graph.call_module(path, tuple(bound[a] for a in recipe.input_args))
        replacement.meta.update(node.meta)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        if not node.users:
            graph.erase_node(node)
        elif str(node.target) in moved:
            node.target = moved[str(node.target)]  # still read directly, e.g. a tied output layer
    _drop_all_true_masks(graph)
    _python_calls(graph)
    _plain_signature(graph)
    graph.lint()
    # A plain GraphModule: the exported one refuses train()/eval(), which fine-tuning needs.
    return fx.GraphModule(gm, graph, class_name="RebuiltProgram").eval()


_SDPA = aten.scaled_dot_product_attention.default
# A mask for 8192 tokens a side: larger constants are left to run rather than computed at load.
_CONSTANT_MAX_ELEMENTS = 8192 * 8192


def _drop_all_true_masks(graph: fx.Graph) -> None:
    """Remove each attention mask that lets every query see every key whatever the input.

    transformers builds an encoder's mask even when none is passed once it is traced, so an exported
    BERT computes, in every call, an arange, a comparison and an expand to the batch that come out
    all True, and the attention then applies it (a Where per layer in ONNX, an IsNaN and a Where
    more in int8) where the eager model applies none. Such a mask is dropped only where its value
    cannot depend on the input: it reads no input, parameter or buffer, every tensor before its
    final expands has a fixed shape, and the batch size reaches it only as those expands' sizes;
    it is then one fixed tensor broadcast, so all True at the example size is all True at any."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != _SDPA:
            continue
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        if not isinstance(mask, fx.Node):
            continue
        source = mask
        while source.op == "call_function" and source.target == aten.expand.default:
            source = source.args[0]  # type: ignore[assignment]
        value = _constant(source)
        if value is None or value.dtype != torch.bool or not bool(value.all()):
            continue
        if len(node.args) > 3:
            node.args = (*node.args[:3], None, *node.args[4:])
        else:
            node.kwargs = {**node.kwargs, "attn_mask": None}
        _erase_unused(graph, mask)


def _constant(node: fx.Node) -> torch.Tensor | None:
    """The value of `node`, if it is computed by aten calls on literals alone, else None."""
    values: dict[fx.Node, Any] = {}

    def value_of(current: fx.Node) -> Any:
        if current in values:
            return values[current]
        if current.op != "call_function" or not isinstance(current.target, torch._ops.OpOverload):
            raise LookupError(current.name)
        known = current.meta.get("val")
        if not isinstance(known, torch.Tensor) or any(not isinstance(d, int) for d in known.shape):
            raise LookupError(current.name)  # a symbolic shape: the value may depend on the input
        if known.numel() > _CONSTANT_MAX_ELEMENTS:
            raise LookupError(current.name)
        args, kwargs = fx.node.map_arg((current.args, current.kwargs), value_of)
        values[current] = current.target(*args, **kwargs)
        return values[current]

    try:
        result = value_of(node)
    except LookupError:
        return None
    return result if isinstance(result, torch.Tensor) else None


def _erase_unused(graph: fx.Graph, node: fx.Node) -> None:
    """Erase `node` and then whatever fed only it, now that nothing reads it."""
    pending = [node]
    while pending:
        current = pending.pop()
        if current.users or current.op != "call_function":
            continue
        inputs = list(current.all_input_nodes)
        graph.erase_node(current)
        pending.extend(inputs)


def _plain_signature(graph: fx.Graph) -> None:
    """Positional tensors in, one tensor out (or a tuple of them), with no pytree wrapping and
    without the no-op guard module export inserts."""
    graph._codegen = fx.graph.CodeGen()
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards_fn") and not node.users:
            graph.erase_node(node)
        elif node.op == "output":
            flat = node.args[0]
            if isinstance(flat, (tuple, list)) and len(flat) == 1:
                node.args = (flat[0],)


def _moved(path: str, name: str) -> str:
    return f"{path}.{name}"


# prune's head search finds attention by this target.
_KEPT_AS_ATEN = {aten.scaled_dot_product_attention.default}


def _python_calls(graph: fx.Graph) -> None:
    """Call each aten op as its Tensor method or torch function, and read sizes with ``x.size(d)``.

    Two reasons. A tracing exporter (ONNX) follows a traced size through Python-level calls
    (``x.view(n, -1)``, ``torch.arange(n)``), but an aten overload called with one bakes in the
    example's value, so the batch would not stay dynamic. And an aten overload is slower to call
    from Python than the same op as a method: 10.1 against 7.5 microseconds for a small mul, 3.0
    against 1.2 for a permute, about a quarter of a millisecond per call of ConvNeXt-Tiny (102 such
    ops between its layers) that the same model in eager PyTorch does not pay."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target in _KEPT_AS_ATEN:
            continue
        if node.target == aten.sym_size.int:
            with graph.inserting_before(node):
                size = graph.call_method("size", tuple(node.args))
            size.meta.update(node.meta)
            node.replace_all_uses_with(size)
            graph.erase_node(node)
        elif isinstance(node.target, torch._ops.OpOverload):
            _python_level(graph, node)


def slice_dim(x: torch.Tensor, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> torch.Tensor:
    """aten.slice as Python indexing, which tracers follow."""
    index = [slice(None)] * (dim % x.dim()) + [slice(start, end, step)]
    return x[tuple(index)]


def _python_level(graph: fx.Graph, node: fx.Node) -> None:
    """The op as a method where its schema starts with `self` (the method's receiver; `where`
    starts with its condition, and a method would take that as the receiver), else as the torch
    function of the same schema, else left as it is."""
    target: Any = node.target
    name = target._opname
    receiver = bool(target._schema.arguments) and target._schema.arguments[0].name == "self"
    if name == "slice":
        node.target = slice_dim
    elif receiver and hasattr(torch.Tensor, name) and node.args:
        with graph.inserting_before(node):
            method = graph.call_method(name, node.args, dict(node.kwargs))
        method.meta.update(node.meta)
        node.replace_all_uses_with(method)
        graph.erase_node(node)
    elif hasattr(torch, name):
        node.target = getattr(torch, name)


def loose_weights(module: nn.Module) -> list[str]:
    """Parameters a graph module computes with directly, each with the op that uses it
    (e.g. ``fc.weight (aten.addmm)``): weights the rebuild could not turn into layers."""
    if not isinstance(module, fx.GraphModule):
        return []
    params = {n for n, _ in module.named_parameters()}
    found = []
    for node in module.graph.nodes:
        if node.op == "get_attr" and str(node.target) in params:
            ops = sorted({f"aten.{op_name(u)}" for u in node.users if op_name(u)})
            found.append(f"{node.target} ({', '.join(ops) or 'read directly'})")
    return found


def check_parity(
    program: Any, rebuilt: nn.Module, inputs: Sequence[torch.Tensor], uri: str, atol: float = PARITY_ATOL
) -> float:
    """Max abs difference between the program and the rebuilt graph; a ModelError above atol."""
    with torch.no_grad():
        expected = _flat(program.module()(*inputs))
        actual = _flat(rebuilt(*inputs))
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual, strict=False)):
        raise ModelError(f"{uri}: rebuilding the exported program as layers changed its output structure")
    diff = max(
        (float((e.double() - a.double()).abs().max()) for e, a in zip(expected, actual, strict=True)), default=0.0
    )
    if not diff <= atol:  # also catches NaN
        raise ModelError(
            f"{uri}: the exported program rebuilt as layers differs from the program by up to {diff:.3g} "
            f"(more than {atol:g}) on the example inputs; was it exported in eval mode (model.eval())? "
            "Otherwise save its state dict with safetensors (format SafeTensors plus `architecture`)"
        )
    return diff


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


# Ops whose size arguments are fixed in the graph: a channel count that reaches one of them
# cannot change without rewriting the graph (e.g. a reshape into [batch, 768, tokens], or the
# split of an attention projection into heads). By name (op_name), whatever _python_calls made of them.
SIZED_OPS = {"view", "reshape", "_unsafe_view", "unflatten", "expand"}
SPLITTING_OPS = {"split", "split_with_sizes", "slice", "narrow", "chunk"}
CHANNEL_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)


def op_name(node: fx.Node) -> str:
    """An op's name, whether an aten call, the method or torch function _python_calls made of one, or
    slice_dim."""
    if node.op == "call_method":
        return str(node.target)
    if node.target is slice_dim:
        return "slice"
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        return str(node.target._opname)
    name = getattr(node.target, "__name__", "")
    if node.op == "call_function" and name and getattr(torch, name, None) is node.target:
        return str(name)  # a torch function _python_calls made of an aten call
    return ""


def _fixed_sizes(node: fx.Node) -> bool:
    name = op_name(node)
    if name in SPLITTING_OPS:
        return True
    if name not in SIZED_OPS:
        return False
    position, keyword = (2, "sizes") if name == "unflatten" else (1, "size")
    sizes = node.args[position] if len(node.args) > position else node.kwargs.get(keyword)
    values = list(sizes) if isinstance(sizes, (list, tuple)) else list(node.args[position:])
    return any(isinstance(v, int) and v not in (-1, 1) for v in values)


def shape_bound_layers(gm: nn.Module) -> dict[str, str]:
    """Layers of a rebuilt graph whose output width the graph fixes elsewhere, each with the node
    that fixes it: structured pruning must keep their output channels."""
    if not isinstance(gm, fx.GraphModule):
        return {}
    bound: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)), CHANNEL_LAYERS):
            continue
        seen, frontier = {node}, list(node.users)
        while frontier:
            user = frontier.pop()
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module" and isinstance(gm.get_submodule(str(user.target)), CHANNEL_LAYERS):
                continue  # a new layer starts new channels
            if _fixed_sizes(user):
                bound[str(node.target)] = f"{user.target} ({user.name})"
                break
            frontier.extend(user.users)
    return bound


def failing_node(gm: nn.Module, inputs: Sequence[torch.Tensor]) -> str | None:
    """The graph node that raises when the module runs on inputs, described for an error
    message (op, node name and the layer it belongs to), or None when it runs."""
    if not isinstance(gm, fx.GraphModule):
        return None
    culprit: list[fx.Node] = []

    class _Find(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            try:
                return super().run_node(n)
            except Exception:
                if not culprit:
                    culprit.append(n)
                raise

    try:
        with torch.no_grad():
            _Find(gm).run(*inputs)
    except Exception as exc:
        if not culprit:
            return f"the graph ({type(exc).__name__})"
        node = culprit[0]
        stack = node.meta.get("nn_module_stack") or {}
        owner = next(reversed(list(stack.values())), ("", None))[0] if stack else ""
        where = f" in {owner}" if owner else ""
        return f"{node.target} (node {node.name}{where}): {' '.join(str(exc).split())[:200]}"
    return None


def scoped_for_tracing(module: nn.Module) -> nn.Module:
    """A copy of a rebuilt graph whose layers the ONNX exporter names by their full path.

    The tracing exporter names nodes after the chain of module calls (``/layer1/layer1.0/conv1/Conv``
    in an eager model), but a graph module calls every layer from the top, so only the last name
    would remain (``/conv1/Conv``, the same in every block). Registering each layer at the top
    under its path with ``/`` separators gives ``/layer1/0/conv1/Conv``, which reads back as
    ``layer1.0.conv1`` (onnx_io.module_path_of_node): excludeLayers and Auto's float fallbacks
    then find their nodes. Other modules are returned as they are."""
    if not isinstance(module, fx.GraphModule):
        return module
    graph = copy.deepcopy(module.graph)
    layers: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            flat = str(node.target).replace(".", "/")
            layers[flat] = module.get_submodule(str(node.target))
            node.target = flat
        elif node.op == "get_attr":
            layers[str(node.target)] = _fetch_attr(module, str(node.target))
    return fx.GraphModule(layers, graph, class_name="ScopedProgram")


def _fetch_attr(module: nn.Module, fqn: str) -> Any:
    owner_path, _, attr = fqn.rpartition(".")
    return getattr(module.get_submodule(owner_path) if owner_path else module, attr)
