"""The graph runner: executes a parsed config layer call by layer call on numpy arrays.

Inference mode throughout (`training=False`). Each computed layer output is yielded as soon as
it exists; a layer that cannot be computed (Lambda, custom, unknown class) ends the pass with one
`Stopped` record, after the outputs computed before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from wpipe.forward.base import REGISTRY, Call, Unsupported
from wpipe.forward.graph import Graph, GraphLayer, Node, Ref
from wpipe.forward.weights import WeightBook

NEVER_RUN = {
    "Lambda": "Lambda: code stored in the file is never run",
    "TFOpLambda": "TFOpLambda: a TensorFlow op recorded in the file is never run",
    "SlicingOpLambda": "SlicingOpLambda: a TensorFlow op recorded in the file is never run",
}


@dataclass
class LayerOutput:
    layer_path: str
    class_name: str
    call_index: int
    output_index: int
    array: np.ndarray
    channels_first: bool = False
    # what the call received and how it was configured (forward.cost counts its work)
    input_shapes: tuple[tuple[int, ...], ...] = ()
    config: dict[str, Any] | None = None


@dataclass
class Stopped:
    layer_path: str
    class_name: str
    reason: str


class _Stop(Exception):
    def __init__(self, record: Stopped) -> None:
        super().__init__(record.reason)
        self.record = record


def run(
    graph: Graph, inputs: list[np.ndarray], book: WeightBook, keras_major: int
) -> Iterator[LayerOutput | Stopped]:
    """Every layer output of `graph` on `inputs` (in graph input order), then maybe a Stopped."""
    try:
        yield from _graph(graph, inputs, book, keras_major, "", 0)
    except _Stop as stop:
        yield stop.record


def _graph(
    graph: Graph, inputs: list[np.ndarray], book: WeightBook, major: int, prefix: str, outer: int
):
    """Yields outputs; returns the graph's output arrays."""
    by_name = {layer.name: layer for layer in graph.layers}
    values: dict[Ref, np.ndarray] = {}
    for ref, array in zip(graph.inputs, inputs, strict=True):
        values[Ref(ref.layer, 0, 0)] = array
    pending = [
        (layer, k)
        for layer in graph.layers
        if layer.class_name != "InputLayer"
        for k in range(len(layer.nodes))
    ]
    # How many calls (and graph outputs) still read each value: freed after its last reader,
    # so memory holds the live tensors of the graph, not every output of the pass.
    readers: dict[Ref, int] = {}
    for layer, k in pending:
        for ref in _refs(layer.nodes[k]):
            key = _ref_key(ref, by_name, graph)
            readers[key] = readers.get(key, 0) + 1
    for ref in graph.outputs:
        key = _output_key(ref, by_name, graph)
        readers[key] = readers.get(key, 0) + 1
    while pending:
        # one sweep runs every call whose inputs exist, those made ready by earlier calls of
        # the sweep included: configs list layers nearly in call order, so a sweep or two
        # suffice (a sweep per ready batch made long chains quadratic)
        waiting = []
        for layer, k in pending:
            if not _resolvable(layer.nodes[k], values, by_name, graph):
                waiting.append((layer, k))
                continue
            node = layer.nodes[k]
            args = _resolve(node.args, values, by_name, graph)
            kwargs = {key: _resolve(v, values, by_name, graph) for key, v in node.kwargs.items()}
            call_index = outer * len(layer.nodes) + k
            outs = yield from _call(layer, args, kwargs, book, major, prefix, call_index)
            for i, out in enumerate(outs):
                if readers.get(Ref(layer.name, k, i)):
                    values[Ref(layer.name, k, i)] = out
            for ref in _refs(node):
                key = _ref_key(ref, by_name, graph)
                readers[key] -= 1
                if readers[key] == 0:
                    values.pop(key, None)
        if len(waiting) == len(pending):
            layer = pending[0][0]
            raise _Stop(Stopped(prefix + layer.name, layer.class_name, "inputs never computed"))
        pending = waiting
    return [values[_output_key(ref, by_name, graph)] for ref in graph.outputs]


def _output_key(ref: Ref, by_name: dict[str, GraphLayer], graph: Graph) -> Ref:
    """Keras 3 numbers a nested Functional's calls from 1 in `output_layers` (its first node
    is internal) but from 0 in `inbound_nodes`."""
    key = _ref_key(ref, by_name, graph)
    target = by_name.get(ref.layer)
    nested_functional = target is not None and target.sub is not None
    if graph.keras3 and nested_functional and target.class_name != "Sequential" and key.node > 0:
        return Ref(key.layer, key.node - 1, key.tensor)
    return key


def _call(layer: GraphLayer, args, kwargs, book: WeightBook, major: int, prefix: str, call_index):
    path = prefix + layer.name
    flat = _flatten(args)
    if layer.sub is not None:
        outs = yield from _graph(layer.sub, flat, book, major, path + "/", call_index)
        for i, out in enumerate(outs):
            yield LayerOutput(path, layer.class_name, call_index, i, out)
        return outs
    reason = _refusal(layer)
    if reason:
        raise _Stop(Stopped(path, layer.class_name, reason))
    call = Call(layer.class_name, layer.config, {}, major, kwargs)
    try:
        call.weights = book.arrays(path)
        # an exploded model's outputs overflow to inf or NaN: its statistics count them
        # (nan_or_inf), numpy's warning is no line for the user
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = REGISTRY[layer.class_name](call, flat)
    except Unsupported as exc:
        raise _Stop(Stopped(path, layer.class_name, exc.reason)) from None
    except (ValueError, IndexError, TypeError, KeyError) as exc:
        reason = f"{layer.class_name}: cannot compute ({type(exc).__name__}: {exc})"
        raise _Stop(Stopped(path, layer.class_name, reason)) from None
    outs = result if isinstance(result, list) else [result]
    first = (layer.config.get("data_format") or layer.config.get("dim_ordering")) in (
        "channels_first", "th",
    )  # fmt: skip
    received = [
        *flat,
        *(kwargs[k] for k in ("value", "key") if isinstance(kwargs.get(k), np.ndarray)),
    ]
    shapes = tuple(a.shape for a in received)
    for i, out in enumerate(outs):
        yield LayerOutput(path, layer.class_name, call_index, i, out, first, shapes, layer.config)
    return outs


def _refusal(layer: GraphLayer) -> str | None:
    if layer.class_name in NEVER_RUN:
        return NEVER_RUN[layer.class_name]
    if layer.custom:
        return f"{layer.class_name}: custom layer (code stored in or beside the file is never run)"
    if layer.class_name not in REGISTRY:
        return f"{layer.class_name}: not a built-in Keras layer wpipe computes (custom or unknown)"
    return None


def _ref_key(ref: Ref, by_name: dict[str, GraphLayer], graph: Graph) -> Ref:
    target = by_name.get(ref.layer)
    node = ref.node
    nested = target is not None and target.sub is not None and target.sub.has_input_layer
    if graph.legacy_refs and nested and node > 0:
        node -= 1  # the nested model's own first node is not in the config
    if target is not None and target.class_name == "InputLayer":
        node = 0
    return Ref(ref.layer, node, ref.tensor)


def _lookup(ref: Ref, values, by_name, graph) -> np.ndarray:
    return values[_ref_key(ref, by_name, graph)]


def _refs(node: Node) -> list[Ref]:
    return [r for r in _flatten([node.args, list(node.kwargs.values())]) if isinstance(r, Ref)]


def _resolvable(node: Node, values, by_name, graph) -> bool:
    return all(_ref_key(r, by_name, graph) in values for r in _refs(node))


def _resolve(value: Any, values, by_name, graph) -> Any:
    if isinstance(value, Ref):
        return _lookup(value, values, by_name, graph)
    if isinstance(value, list):
        return [_resolve(v, values, by_name, graph) for v in value]
    return value


def _flatten(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value] if isinstance(value, (np.ndarray, Ref)) else []
