"""A model config (Keras 1, 2 or 3; Sequential or Functional, nested) -> a graph of layer calls.

Config dialects of a call's inputs (`inbound_nodes`):
* Keras 1/2: a node is a list of `[layer, node_index, tensor_index(, kwargs)]`; several
  entries mean the layer received a list; kwargs may hold refs as `[layer, node, tensor]`.
* Keras 3: a node is `{"args": [...], "kwargs": {...}}` where tensors are
  `{"class_name": "__keras_tensor__", "config": {"keras_history": [layer, node, tensor]}}`.
In Keras 2 a nested model that has its own InputLayer keeps a first, internal node, so refs to
it count from 1 (`get_network_config`'s `_should_skip_first_node`); Keras 3 counts from 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wpipe.forward import keras1

MODEL_CLASSES = {"Sequential", "Functional", "Model"}


@dataclass(frozen=True)
class Ref:
    layer: str
    node: int
    tensor: int


@dataclass
class Node:
    args: list[Any]  # Refs, lists of Refs, or constants
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphLayer:
    name: str
    class_name: str
    config: dict[str, Any]
    nodes: list[Node]
    sub: Graph | None = None  # a nested model
    custom: bool = False  # registered by user code (Keras 3 `registered_name`, foreign module)


@dataclass
class Graph:
    name: str
    class_name: str
    layers: list[GraphLayer]
    inputs: list[Ref]
    outputs: list[Ref]
    input_shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    input_dtypes: dict[str, str] = field(default_factory=dict)
    keras3: bool = False
    legacy_refs: bool = False  # Keras 1/2 functional dialect (see the module docstring)
    has_input_layer: bool = True  # a Keras 2 ref to this model as a layer counts from 1


def parse(model_config: dict[str, Any]) -> Graph:
    """The graph of a model config (the top-level `{"class_name", "config"}` object)."""
    return _model(model_config, "model")


def _model(entry: dict[str, Any], fallback: str) -> Graph:
    class_name = str(entry.get("class_name", "Model"))
    config = entry.get("config")
    if isinstance(config, list):  # Keras 1 / early 2 Sequential: a bare list of layers
        config = {"layers": config}
    config = config if isinstance(config, dict) else {}
    name = str(config.get("name") or entry.get("name") or fallback)
    entries = [e for e in config.get("layers", []) if isinstance(e, dict)]
    if class_name == "Sequential" or not any("inbound_nodes" in e for e in entries):
        return _sequential(name, class_name, entries)
    layers = [_layer(e, i) for i, e in enumerate(entries)]
    keras3 = any(isinstance(n, dict) for e in entries for n in e.get("inbound_nodes") or [])
    graph = Graph(
        name, class_name, layers, _refs(config.get("input_layers")),
        _refs(config.get("output_layers")), keras3=keras3, legacy_refs=not keras3,
    )  # fmt: skip
    for layer in layers:
        if layer.class_name == "InputLayer":
            _note_input(graph, layer.name, layer.config)
    return graph


def _sequential(name: str, class_name: str, entries: list[dict[str, Any]]) -> Graph:
    layers: list[GraphLayer] = []
    input_name = None
    first_config: dict[str, Any] = {}
    keras3 = False
    for i, e in enumerate(entries):
        cfg = e.get("config") if isinstance(e.get("config"), dict) else {}
        keras3 = keras3 or "batch_shape" in cfg or isinstance(cfg.get("dtype"), dict)
        if e.get("class_name") == "InputLayer":
            input_name, first_config = str(cfg.get("name") or "input"), cfg
            continue
        if input_name is None and not layers:
            first_config = cfg
        layers.append(_layer(e, i))
    if input_name is None:
        input_name = f"{name}_input"
    previous = Ref(input_name, 0, 0)
    for layer in layers:
        layer.nodes = [Node([previous])]
        previous = Ref(layer.name, 0, 0)
    graph = Graph(name, class_name, layers, [Ref(input_name, 0, 0)], [previous], keras3=keras3)
    _note_input(graph, input_name, first_config)
    graph.has_input_layer = any(e.get("class_name") == "InputLayer" for e in entries)
    return graph


def _note_input(graph: Graph, name: str, config: dict[str, Any]) -> None:
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if shape is None and config.get("input_shape") is not None:
        shape = [None, *config["input_shape"]]
    if shape is None and config.get("input_dim") is not None:
        shape = [None, config["input_dim"]]
    if isinstance(shape, list):
        graph.input_shapes[name] = tuple(None if d is None else int(d) for d in shape)
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    graph.input_dtypes[name] = dtype if isinstance(dtype, str) else "float32"


def _layer(entry: dict[str, Any], index: int) -> GraphLayer:
    class_name = str(entry.get("class_name", ""))
    config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    name = str(entry.get("name") or config.get("name") or f"layer_{index}")
    nodes = [_node(n) for n in entry.get("inbound_nodes") or []]
    class_name, config = keras1.translate(class_name, config)
    sub = None
    if class_name in MODEL_CLASSES or isinstance(config.get("layers"), list):
        sub = _model(entry, name)
        config = {k: v for k, v in config.items() if k != "layers"}
    return GraphLayer(name, class_name, config, nodes, sub, _is_custom(entry))


def _is_custom(entry: dict[str, Any]) -> bool:
    module = entry.get("module")
    registered = entry.get("registered_name")
    if isinstance(module, str):
        return module.split(".")[0] not in ("keras", "tf_keras", "tensorflow")
    # Keras 2.11+ writes `Custom>Adam`-style names for some built-ins; a bare registered name
    # without a module is a user's class.
    return (
        isinstance(registered, str)
        and not registered.startswith("Custom>")
        and bool(registered)
        and registered != entry.get("class_name")
    )


def _node(raw: Any) -> Node:
    if isinstance(raw, dict):  # Keras 3
        args = [_value(a) for a in raw.get("args", [])]
        kwargs = {k: _value(v) for k, v in (raw.get("kwargs") or {}).items()}
        return Node(args, kwargs)
    entries = [e for e in raw if isinstance(e, list) and e and isinstance(e[0], str)]
    refs = [Ref(str(e[0]), int(e[1]), int(e[2]) if len(e) > 2 else 0) for e in entries]
    kwargs: dict[str, Any] = {}
    for e in entries:
        if len(e) > 3 and isinstance(e[3], dict):
            kwargs.update({k: _legacy_value(v) for k, v in e[3].items()})
    return Node([refs[0]] if len(refs) == 1 else [refs], kwargs)


def _value(v: Any) -> Any:
    if isinstance(v, dict) and v.get("class_name") == "__keras_tensor__":
        history = (v.get("config") or {}).get("keras_history") or ["?", 0, 0]
        return Ref(str(history[0]), int(history[1]), int(history[2]))
    if isinstance(v, list):
        return [_value(x) for x in v]
    return v


def _legacy_value(v: Any) -> Any:
    """A Keras 2 kwarg: `[layer, node, tensor]` is a tensor ref."""
    is_ref = isinstance(v, list) and len(v) in (3, 4) and isinstance(v[0], str)
    if is_ref and all(isinstance(x, int) for x in v[1:3]):
        return Ref(v[0], int(v[1]), int(v[2]))
    return v


def _refs(raw: Any) -> list[Ref]:
    if not isinstance(raw, list) or not raw:
        return []
    if isinstance(raw[0], str):  # Keras 3 writes a single tensor unwrapped
        raw = [raw]
    return [Ref(str(r[0]), int(r[1]), int(r[2])) for r in raw if isinstance(r, list) and r]
