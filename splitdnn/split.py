"""Cut a model at a dotted module path into ``head`` and ``tail`` with
``tail(head(x)) == model(x)``.

The cut is made on the model's traced graph (torch.fx), not on its list of children, so work
a ``forward`` does outside its children (Inception's input transform, DenseNet's final ReLU and
pooling, a flatten) lands on the right side. A cut is valid only where a single tensor crosses
it; anything else raises :class:`SplitError` naming the values that would cross.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from splitdnn.errors import SplitDNNError, UnknownNameError


class SplitError(SplitDNNError, ValueError):
    """The module path cannot be a cut: more than one tensor crosses it, or it runs twice."""


_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


class _LeafTracer(fx.Tracer):
    """Trace through every module except the standard leaves and the ones we cut after."""

    def __init__(self, leaf: str, *more: str) -> None:
        super().__init__()
        self.leaves = {leaf, *more}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaves:
            return True
        # Subclasses of layers (EfficientNet's same-padding convs) stay modules in the graph,
        # so hooks on them (MAC counting, quantisation) still fire in a cut half.
        if isinstance(m, _LAYERS):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass
class SplitModel:
    """The two halves of a model cut at ``module_path``."""

    module_path: str
    head: fx.GraphModule
    tail: fx.GraphModule

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(x))


def module_names(model: nn.Module) -> list[str]:
    """Every dotted module path of ``model`` (what :func:`split_model` accepts)."""
    return [name for name, _ in model.named_modules() if name]


def valid_cuts(model: nn.Module, candidates: Sequence[str], distinct: bool = False) -> list[str]:
    """The ``candidates`` :func:`split_model` can cut after, in forward order.

    One trace of the whole model (torch.fx records which module each node runs in), not one
    per candidate: a module qualifies when it runs exactly once, its nodes are contiguous, and
    nothing computed before its output is used after it. ``distinct`` keeps one name per cut
    (a container and its last child end at the same tensor; the shorter name stays).
    """
    graph = _LeafTracer("").trace(model)
    order = list(graph.nodes)
    position = {node: i for i, node in enumerate(order)}
    scopes: dict[str, set[int]] = defaultdict(set)
    repeated: set[str] = set()
    for i, node in enumerate(order):
        for key in node.meta.get("nn_module_stack") or {}:
            name, again, _ = str(key).partition("@")
            scopes[name].add(i)
            if again:
                repeated.add(name)
    # reach[p]: the latest position that uses a value computed at or before p.
    reach, latest = [], -1
    for i, node in enumerate(order):
        latest = max(latest, i, *(position[user] for user in node.users))
        reach.append(latest)
    ends: dict[int, str] = {}
    found: list[tuple[int, str]] = []
    for name in candidates:
        nodes = sorted(scopes.get(name, ()))
        if not nodes or name in repeated or nodes != list(range(nodes[0], nodes[-1] + 1)):
            continue
        end = nodes[-1]
        before = reach[end - 1] if end > 0 else -1
        if before > end:  # a value from before the output crosses the cut
            continue
        if distinct and end in ends:
            if len(name) < len(ends[end]):
                found.remove((end, ends[end]))
            else:
                continue
        ends[end] = name
        found.append((end, name))
    return [name for _, name in sorted(found, key=lambda item: item[0])]


def runs_in_sequence(model: nn.Module, names: Sequence[str]) -> bool:
    """Whether the modules ``names`` run one after another, each on the previous one's output
    alone and nothing else in between: then ``nn.Sequential`` of them is that stretch of the
    model (a student may end with copies of them)."""
    if len(names) < 2:
        return True
    graph = _LeafTracer(*names).trace(model)
    order = list(graph.nodes)
    nodes = []
    for name in names:
        found = [n for n in order if n.op == "call_module" and n.target == name]
        if len(found) != 1:
            return False
        nodes.append(found[0])
    for before, after in itertools.pairwise(nodes):
        if order.index(after) != order.index(before) + 1 or after.args != (before,):
            return False
        if after.kwargs or set(before.users) != {after}:
            return False
    return True


def output_shapes(
    model: nn.Module, names: Sequence[str], input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """Output shape (without the batch) of each named module whose output is one 4-D map.

    One forward pass of a zero image; build ``model`` on the meta device
    (``with torch.device("meta")``) and it costs neither memory nor arithmetic.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:

        def hook(_m: nn.Module, _inputs: tuple, output: object, _name: str = name) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                shapes.setdefault(_name, tuple(output.shape[1:]))

        handles.append(modules[name].register_forward_hook(hook))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def split_model(model: nn.Module, module_path: str) -> SplitModel:
    """Cut ``model`` right after the module at ``module_path``.

    The head returns that module's output; the tail takes it and returns the model's output.
    Both share parameters with ``model`` (no copies).
    """
    names = dict(model.named_modules())
    if module_path not in names or not module_path:
        hint = ", ".join(module_names(model)[:12])
        raise UnknownNameError(
            f"{type(model).__name__} has no module {module_path!r}; "
            f"list valid paths with splitdnn.split.module_names(model) (first few: {hint}, …)"
        )
    graph = _LeafTracer(module_path).trace(model)
    cut_nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == module_path]
    if len(cut_nodes) != 1:
        raise SplitError(
            f"{module_path!r} runs {len(cut_nodes)} times in the forward pass; "
            "a cut needs a module that runs exactly once"
        )
    cut = cut_nodes[0]
    order = list(graph.nodes)
    position = order.index(cut)
    head_nodes = set(order[: position + 1])

    crossing = {
        arg.name
        for node in order[position + 1 :]
        for arg in node.all_input_nodes
        if arg in head_nodes and arg is not cut
    }
    if crossing:
        raise SplitError(
            f"cannot cut after {module_path!r}: besides its output, {sorted(crossing)} "
            "would cross the cut (a skip connection or a reused input)"
        )

    head_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in order[: position + 1]:
        env[node] = head_graph.node_copy(node, lambda n: env[n])
    head_graph.output(env[cut])

    tail_graph = fx.Graph()
    env = {cut: tail_graph.placeholder("features")}
    for node in order[position + 1 :]:
        env[node] = tail_graph.node_copy(node, lambda n: env[n])

    head = fx.GraphModule(model, head_graph, class_name="Head")
    tail = fx.GraphModule(model, tail_graph, class_name="Tail")
    head.eval()
    tail.eval()
    return SplitModel(module_path, head, tail)
