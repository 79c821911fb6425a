"""TF checkpoints written by Keras 2 (`save_weights('ckpt')` without `.h5`,
`ModelCheckpoint(save_weights_only=True)`): a tensor bundle (tf_bundle) whose
`_CHECKPOINTABLE_OBJECT_GRAPH` entry names every variable's place in the model.

Keras 2 tracks a model's layers as its children `layer-0`, `layer-1`, … (every layer, in
`model.layers` order) and `layer_with_weights-0`, … (the same objects again); a layer's
variables hang below it, through a cell or a wrapped layer (`cell/kernel`,
`forward_layer/cell/kernel`); a nested model has its own `layer-N` children. Each variable
node carries its full name (`lstm/lstm_cell/kernel`), which gives its layer's name and its
weight name (the rule legacy `.h5` files follow, keras_config.canonical_weight_name).
Everything reachable from the model's `optimizer` child, and every slot variable, is optimizer
state: counted, never a layer.

What a bundle cannot tell: layer classes and configs (it holds no architecture), the names of
layers without weights (they hold no variable) and of nested models (their variables are
named by their own layers): a nested model is named by its place, `layer_with_weights-1`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wpipe.readers import inferred, tf_bundle, tf_protos
from wpipe.readers.base import Layer, Model, ModelReadError, Tensor
from wpipe.readers.keras_config import canonical_weight_name, is_trainable, role_of

FORMAT = "tf-checkpoint"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_VALUE = "VARIABLE_VALUE"
MAX_DEPTH = 100  # nesting of models and sublayers; Keras models nest a few levels
_LAYER = re.compile(r"layer-(\d+)")
_WEIGHTED = re.compile(r"layer_with_weights-(\d+)")
# Children of a model that are not its layers: optimizer state, compiled functions, Keras's
# bookkeeping (a subclassed model's layers are its other attributes).
NOT_LAYERS = {"optimizer", "root", "save_counter", "keras_api", "train_function",
              "train_tf_function", "test_function", "predict_function", "signatures"}  # fmt: skip


@dataclass
class Variable:
    node: int
    full_name: str  # `dense/kernel`, as Keras named the variable
    key: str  # its checkpoint key in the bundle


@dataclass
class GraphLayer:
    """A layer found in the object graph: a leaf with its variables, or a nested model."""

    local: str  # its name under its parent (`layer_with_weights-2`)
    path: str  # dotted from the root, as keras_metadata.pb spells it (`root.layer-3`)
    node: int
    variables: list[Variable] = field(default_factory=list)
    children: list[GraphLayer] | None = None  # set for a nested model

    @property
    def scope(self) -> list[str]:
        """The name scopes all its variables share (`lstm/lstm_cell/kernel`, `…/bias` ->
        `lstm`, `lstm_cell`)."""
        scopes = [v.full_name.split("/")[:-1] for v in self.variables]
        if not scopes:
            return []
        shared = scopes[0]
        for scope in scopes[1:]:
            shared = _common(shared, scope)
        return shared


def _common(a: list[str], b: list[str]) -> list[str]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def layer_names(layers: list[GraphLayer]) -> dict[int, str]:
    """Leaf node -> its layer's name, from its variables' full names: the first scope after
    the scopes every layer shares (a subclassed model names its variables
    `my_model/dense/kernel`, a Functional one `dense/kernel`); else its place in the graph."""
    found = [leaf for _, leaf in leaves(layers) if leaf.variables]
    scopes = {leaf.node: leaf.scope for leaf in found}
    shared: list[str] = []
    if len(found) > 1:
        shared = scopes[found[0].node]
        for leaf in found[1:]:
            shared = _common(shared, scopes[leaf.node])
    return {leaf.node: scopes[leaf.node][len(shared)] if len(scopes[leaf.node]) > len(shared)
            else leaf.local for leaf in found}  # fmt: skip


@dataclass
class Graph:
    nodes: list[tf_protos.TrackableNode]
    layers: list[GraphLayer]
    optimizer_keys: list[str]


def read_graph(bundle: tf_bundle.Bundle) -> Graph:
    """The bundle's object graph: the model's layers (nested models as trees) and the
    checkpoint keys of its optimizer state."""
    where = bundle.where
    if OBJECT_GRAPH_KEY not in bundle.entries:
        raise ModelReadError(
            "unsupported-format",
            f"{where}: TF checkpoint without an object graph (a TF1 name-based checkpoint, "
            "not written by Keras 2)",
        )
    nodes = tf_protos.object_graph(bundle.read_string(OBJECT_GRAPH_KEY), where)
    if not nodes:
        raise ModelReadError("corrupt", f"{where}: the checkpoint's object graph is empty")
    for node in nodes:
        for _, child in node.children:
            if not 0 <= child < len(nodes):
                raise ModelReadError("corrupt", f"{where}: object graph refers to node {child}")
    optimizer = _reachable(nodes, [c for n, c in nodes[0].children if n == "optimizer"])
    for node in nodes:
        optimizer |= _reachable(nodes, node.slot_variables)
    layers = _model_layers(nodes, where, optimizer)
    keys = [k for i in sorted(_optimizer_state(nodes)) for k in _keys(nodes, i)]
    return Graph(nodes, layers, keys)


def _optimizer_state(nodes: list[tf_protos.TrackableNode]) -> set[int]:
    """The variables Keras's `optimizer.variables` lists (what a `.h5` stores as
    optimizer_weights): Keras 2.11+ optimizers track them as `_variables/N`; the legacy ones
    as `iter` plus slot variables. Hyperparameter variables (`_learning_rate`, `beta_1`) are
    not optimizer state."""
    optimizer = [c for n, c in nodes[0].children if n == "optimizer"]
    listed = [c for o in optimizer for n, c in nodes[o].children if n == "_variables"]
    if listed:
        return _reachable(nodes, listed)
    state = {c for o in optimizer for n, c in nodes[o].children if n == "iter"}
    for node in nodes:
        state.update(node.slot_variables)
    return state


def _reachable(nodes: list[tf_protos.TrackableNode], start: list[int]) -> set[int]:
    seen: set[int] = set()
    stack = [s for s in start if 0 <= s < len(nodes)]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(c for _, c in nodes[node].children)
    return seen


def _keys(nodes: list[tf_protos.TrackableNode], node: int) -> list[str]:
    return [key for name, _, key in nodes[node].attributes if name == VARIABLE_VALUE and key]


def _layer_children(node: tf_protos.TrackableNode) -> list[tuple[str, int]] | None:
    """A model's layers in `model.layers` order, each under its most telling name (its
    `layer_with_weights-N` name when it has one); None for a node that is not a model."""
    numbered = [(int(m[1]), n, c) for n, c in node.children if (m := _LAYER.fullmatch(n))]
    if not numbered:
        return None
    weighted = {c: n for n, c in node.children if _WEIGHTED.fullmatch(n)}
    return [(weighted.get(c, n), c) for _, n, c in sorted(numbered)]


def _model_layers(
    nodes: list[tf_protos.TrackableNode], where: str, optimizer: set[int]
) -> list[GraphLayer]:
    """The root model's layers; nested models are walked with an explicit stack (depth
    bounded by MAX_DEPTH, each node visited once), never by recursion."""
    root = GraphLayer("root", "root", 0, children=[])
    top = _layer_children(nodes[0])
    if top is None:  # a subclassed model: its layers are its attributes that hold variables
        top = [(n, c) for n, c in nodes[0].children
               if n not in NOT_LAYERS and not n.startswith("_")]  # fmt: skip
    claimed = set(optimizer) | {0}
    stack: list[tuple[GraphLayer, list[tuple[str, int]], int]] = [(root, top, 0)]
    while stack:
        parent, children, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ModelReadError("corrupt", f"{where}: models nest over {MAX_DEPTH} levels")
        for local, child in children:
            if child in claimed:
                continue  # a layer shared by two models belongs to the first
            claimed.add(child)
            layer = GraphLayer(local, f"{parent.path}.{local}", child)
            parent.children.append(layer)
            inner = _layer_children(nodes[child])
            if inner is None:
                layer.variables = _variables(nodes, child, claimed)
            else:
                layer.children = []
                stack.append((layer, inner, depth + 1))
    return root.children or []


def _variables(
    nodes: list[tf_protos.TrackableNode], start: int, claimed: set[int]
) -> list[Variable]:
    """A leaf layer's variables, depth first in the order Keras tracked them."""
    out: list[Variable] = []
    stack = [start]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node in seen or (node != start and node in claimed):
            continue
        seen.add(node)
        claimed.add(node)
        for name, full, key in nodes[node].attributes:
            if name == VARIABLE_VALUE and key:
                out.append(Variable(node, full, key))
        stack.extend(c for _, c in reversed(nodes[node].children))
    return out


def leaves(layers: list[GraphLayer]) -> Iterator[tuple[list[GraphLayer], GraphLayer]]:
    """(enclosing models, leaf layer) for every leaf, in order, without recursion."""
    stack: list[tuple[list[GraphLayer], list[GraphLayer]]] = [([], list(reversed(layers)))]
    while stack:
        outer, pending = stack[-1]
        if not pending:
            stack.pop()
            continue
        layer = pending.pop()
        if layer.children is None:
            yield outer, layer
        else:
            stack.append(([*outer, layer], list(reversed(layer.children))))


def tensor(
    bundle: tf_bundle.Bundle,
    variable: Variable,
    layer_name: str,
    class_name: str | None,
    layer_trainable: bool,
) -> Tensor:
    """One variable as a lazily read Tensor."""
    entry = bundle.entries.get(variable.key)
    if entry is None:
        raise ModelReadError(
            "corrupt", f"{bundle.where}: the object graph names {variable.key}, not in the bundle"
        )
    parts = (variable.full_name or variable.key.split("/.ATTRIBUTES/")[0]).split("/")
    weight_name = canonical_weight_name(parts, layer_name, class_name)
    role = role_of(weight_name)
    return Tensor(
        weight_name=weight_name,
        role=role,
        trainable=is_trainable(role, class_name, layer_trainable),
        source_name=variable.key,
        shape=entry.shape or (),
        dtype=bundle.dtype_name(entry),
        load=_loader(bundle, variable.key),
        status=bundle.status(variable.key) if entry.shape is not None else "corrupt: unknown rank",
    )


def _loader(bundle: tf_bundle.Bundle, key: str) -> Callable:
    def load():
        try:
            return bundle.read(key)
        except OSError as exc:
            raise ModelReadError("io-error", f"{bundle.where}: cannot read {key} ({exc})") from None
        except MemoryError:
            raise ModelReadError("out-of-memory", f"{bundle.where}: not enough memory") from None

    return load


def unique_names(tensors: list[Tensor]) -> list[Tensor]:
    """Two variables of one layer with one weight name (`kernel`, `kernel_1`), as legacy_h5."""
    seen: set[str] = set()
    for t in tensors:
        name, n = t.weight_name, 1
        while name in seen:
            name, n = f"{t.weight_name}_{n}", n + 1
        seen.add(name)
        t.weight_name = name
    return tensors


def verify_unused(bundle: tf_bundle.Bundle, used: set[str]) -> None:
    """Check the checksums of the entries no Tensor reads (optimizer state, other objects):
    a damaged byte anywhere in the bundle is reported, not only in the weights."""
    for key in bundle.entries:
        if key not in used:
            bundle.verify(key)


def optimizer_counts(bundle: tf_bundle.Bundle, keys: list[str]) -> tuple[int, int]:
    present = [bundle.entries[k] for k in dict.fromkeys(keys) if k in bundle.entries]
    sizes = [_elements(e.shape) for e in present]
    return len(sizes), sum(sizes)


def _elements(shape: tuple[int, ...] | None) -> int:
    total = 1
    for d in shape or ():
        total *= max(d, 0)
    return total


def bundle_layers(bundle: tf_bundle.Bundle, graph: Graph) -> list[Layer]:
    """A bare bundle's layers: leaf layers that hold variables, named by their variables."""
    layers = []
    names = layer_names(graph.layers)
    for outer, leaf in leaves(graph.layers):
        name = names.get(leaf.node, leaf.local)
        path = "/".join([*(o.local for o in outer), name])
        tensors = [tensor(bundle, v, name, None, True) for v in leaf.variables]
        if not tensors:
            continue
        # no class is stored: Keras's default name and the variables tell it, as they do for
        # a weights-only .h5 (inferred.py), so a bundle and its .h5 twin share an arch_id
        named = [(t.weight_name, t.role, tuple(t.shape)) for t in tensors]
        class_name = inferred.layer_class(name, named)
        if class_name is not None:
            tensors = [tensor(bundle, v, name, class_name, True) for v in leaf.variables]
        config = inferred.wrapped_config(class_name, named)
        layers.append(Layer(path, name, class_name, config, True, unique_names(tensors)))
    return layers


def read(index: Path, where: str) -> Model:
    bundle = tf_bundle.open_bundle(index, where)
    graph = read_graph(bundle)
    layers = bundle_layers(bundle, graph)
    verify_unused(bundle, {t.source_name for layer in layers for t in layer.tensors})
    n_tensors, n_params = optimizer_counts(bundle, graph.optimizer_keys)
    return Model(
        path=where,
        format=FORMAT,
        keras_version=None,
        backend=None,
        model_class=None,
        optimizer=None,
        loss=None,
        layers=layers,
        n_optimizer_tensors=n_tensors,
        n_optimizer_params=n_params,
    )


@contextmanager
def open_checkpoint(index: Path, where: str) -> Iterator[Model]:
    yield read(index, where)
