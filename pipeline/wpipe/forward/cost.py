"""Compute per layer: output shapes, multiply-adds and output memory, from the architecture.

Shapes come from the forward pass itself run on a batch of no samples (every array has a
leading 0): the layer implementations that compute real outputs give the exact output shapes,
at almost no cost, and weights are never read (a zero array of each stored shape stands in).
Multiply-adds (MACs) are counted per sample as the published architecture tables count them:
the products with a layer's weights (dense, einsum, convolutions, recurrent cells) and, in
attention, the query-key and weight-value products. Elementwise work (normalisation,
activations, pooling, merges, reshapes) and lookups (Embedding) count 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wpipe.forward import graph_of, keras_major
from wpipe.forward.base import Unsupported, as_tuple
from wpipe.forward.runner import LayerOutput, run
from wpipe.forward.weights import WeightBook
from wpipe.readers.base import Layer, Model, Tensor

Shape = tuple[int, ...]  # one sample's shape (the batch axis dropped)


@dataclass
class LayerCost:
    output_shape: list[int]  # the first output of the first call, one sample
    macs: int | None  # per sample, over every call of the layer
    output_bytes: int  # float32 bytes of one sample's outputs, every call and output


@dataclass
class ModelCost:
    layers: dict[str, LayerCost] = field(default_factory=dict)
    macs: int | None = None
    status: str = "ok"  # or why `macs` is NULL


@dataclass
class _Call:
    class_name: str
    config: dict[str, Any] | None  # None: a nested model's own output
    inputs: list[Shape]
    outputs: list[Shape]
    channels_first: bool


class _ShapeBook:
    """Zero arrays of each tensor's shape (as the forward pass's WeightBook lays them out),
    allocated lazily by the OS: nothing is read from the file."""

    def __init__(self, layers: list[Layer]) -> None:
        self._layers = {layer.layer_path: layer for layer in layers}

    def arrays(self, layer_path: str) -> dict[str, np.ndarray]:
        layer = self._layers.get(layer_path)
        return {t.weight_name: _stand_in(t) for t in (layer.tensors if layer else [])}


def _stand_in(tensor: Tensor) -> np.ndarray:
    if tensor.quantization:  # stored packed and scaled: its real (small) values, decoded
        book = WeightBook([Layer("", "", None, None, True, [tensor])])
        return book.arrays("")[tensor.weight_name]
    shape = tuple(tensor.shape)
    if tensor.layout == "theano" and tensor.role == "kernel" and len(shape) >= 3:
        shape = (*shape[2:], shape[1], shape[0])  # as WeightBook transposes it
    return np.zeros(shape, np.float32)


def model_cost(model: Model) -> ModelCost:
    """Per-layer output shapes and MACs of `model` at the input shape its config declares."""
    try:
        graph = graph_of(model)
    except Unsupported as exc:
        return ModelCost(status=exc.reason)
    inputs = []
    for ref in graph.inputs:
        shape = graph.input_shapes.get(ref.layer)
        if shape is None or any(d is None or d < 0 for d in shape[1:]):
            declared = "none declared" if shape is None else list(shape)
            return ModelCost(status=f"input shape unknown ({ref.layer}: {declared})")
        dtype = np.int64 if "int" in graph.input_dtypes.get(ref.layer, "") else np.float32
        inputs.append(np.zeros((0, *shape[1:]), dtype))
    cost = ModelCost()
    calls: dict[tuple[str, int], _Call] = {}
    try:
        for item in run(graph, inputs, _ShapeBook(model.layers), keras_major(model, graph)):
            if not isinstance(item, LayerOutput):
                cost.status = f"stopped at {item.layer_path}: {item.reason}"
                break
            _note(calls, item)
    except (MemoryError, RecursionError, ArithmeticError) as exc:
        cost.status = f"cannot compute shapes ({type(exc).__name__})"
    _total(cost, calls)
    return cost


def _note(calls: dict[tuple[str, int], _Call], out: LayerOutput) -> None:
    key = (out.layer_path, out.call_index)
    call = calls.get(key)
    if call is None:
        inputs = [tuple(s[1:]) for s in out.input_shapes]
        call = _Call(out.class_name, out.config, inputs, [], out.channels_first)
        calls[key] = call
    call.outputs.append(tuple(out.array.shape[1:]))


def _total(cost: ModelCost, calls: dict[tuple[str, int], _Call]) -> None:
    total: int | None = 0
    for (path, _), call in calls.items():
        if call.config is None:  # a nested model's own output: its layers are counted
            continue
        macs = layer_macs(call)
        nbytes = sum(4 * math.prod(s) for s in call.outputs)
        layer = cost.layers.get(path)
        if layer is None:
            cost.layers[path] = LayerCost(list(call.outputs[0]), macs, nbytes)
        else:
            layer.macs = None if layer.macs is None or macs is None else layer.macs + macs
            layer.output_bytes += nbytes
        total = None if total is None or macs is None else total + macs
    if cost.status != "ok":
        total = None
    cost.macs = total


def layer_macs(call: _Call) -> int | None:
    """Multiply-adds of one call of a layer, per sample (0 for elementwise work)."""
    rule = RULES.get(call.class_name)
    if rule is None:
        return 0
    try:
        return rule(call)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
        return None  # a config the rule cannot read: unknown, not a guess


def _channels(call: _Call, shape: Shape) -> int:
    return shape[0] if call.channels_first else shape[-1]


def _dense(call: _Call) -> int:
    return math.prod(call.outputs[0]) * call.inputs[0][-1]


def _conv(call: _Call) -> int:
    k = as_tuple(call.config.get("kernel_size"), len(call.outputs[0]) - 1)
    groups = int(call.config.get("groups") or 1)
    return math.prod(call.outputs[0]) * math.prod(k) * _channels(call, call.inputs[0]) // groups


def _depthwise(call: _Call) -> int:
    k = as_tuple(call.config.get("kernel_size"), len(call.outputs[0]) - 1)
    return math.prod(call.outputs[0]) * math.prod(k)


def _separable(call: _Call) -> int:
    out = call.outputs[0]
    k = as_tuple(call.config.get("kernel_size"), len(out) - 1)
    positions = math.prod(out) // _channels(call, out)
    depth = _channels(call, call.inputs[0]) * int(call.config.get("depth_multiplier") or 1)
    return positions * depth * (math.prod(k) + _channels(call, out))


def _transpose(call: _Call) -> int:
    k = as_tuple(call.config.get("kernel_size"), len(call.inputs[0]) - 1)
    return math.prod(call.inputs[0]) * math.prod(k) * int(call.config["filters"])


GATES = {"SimpleRNN": 1, "LSTM": 4, "CuDNNLSTM": 4, "GRU": 3, "CuDNNGRU": 3}


def _recurrent(call: _Call) -> int:
    steps, features = call.inputs[0][0], call.inputs[0][-1]
    units = int(call.config["units"])
    return steps * GATES[call.class_name] * units * (features + units)


def _conv_lstm(call: _Call) -> int:
    x, out = call.inputs[0], call.outputs[0]  # (steps, *spatial, channels) channels last
    n = len(x) - 2
    filters = int(call.config["filters"])
    positions = math.prod(out[-(n + 1) :]) // filters
    k = as_tuple(call.config.get("kernel_size"), n)
    features = x[1] if call.channels_first else x[-1]
    return x[0] * positions * math.prod(k) * (features + filters) * 4 * filters


def _wrapped(call: _Call, key: str = "layer") -> tuple[str, dict[str, Any]]:
    inner = call.config.get(key) or {}
    return str(inner.get("class_name")), inner.get("config") or {}


def _bidirectional(call: _Call) -> int | None:
    total = 0
    backward = "backward_layer" if call.config.get("backward_layer") else "layer"
    for key in ("layer", backward):
        cls, cfg = _wrapped(call, key)
        macs = layer_macs(_Call(cls, cfg, call.inputs, call.outputs, call.channels_first))
        if macs is None:
            return None
        total += macs
    return total


def _time_distributed(call: _Call) -> int | None:
    cls, cfg = _wrapped(call)
    steps = call.inputs[0][0]
    inner = _Call(cls, cfg, [call.inputs[0][1:]], [call.outputs[0][1:]], call.channels_first)
    macs = layer_macs(inner)
    return None if macs is None else steps * macs


def _einsum(call: _Call) -> int | None:
    """MACs of `input,kernel->output`: the output's size times the contracted axes' sizes."""
    equation = str(call.config.get("equation", "")).replace(" ", "")
    try:
        left, out_spec = equation.split("->")
        in_spec, kernel_spec = left.split(",")
    except ValueError:
        return None
    in_shape = call.inputs[0]
    in_spec = in_spec.replace("...", "")
    letters = dict(zip(reversed(in_spec), reversed(in_shape), strict=False))  # batch dropped
    contracted = (set(in_spec) & set(kernel_spec)) - set(out_spec)
    if not contracted <= set(letters):
        return None
    return math.prod(call.outputs[0]) * math.prod(letters[c] for c in contracted)


def _attention(call: _Call) -> int:
    heads, key_dim = int(call.config["num_heads"]), int(call.config["key_dim"])
    value_dim = int(call.config.get("value_dim") or key_dim)
    query = call.inputs[0]
    value = call.inputs[1] if len(call.inputs) > 1 else query
    key = call.inputs[2] if len(call.inputs) > 2 else value
    t_q, t_k, out = query[0], key[0], call.outputs[0][-1]
    projections = (
        t_q * query[-1] * heads * key_dim
        + t_k * key[-1] * heads * key_dim
        + value[0] * value[-1] * heads * value_dim
        + t_q * heads * value_dim * out
    )
    return projections + heads * t_q * t_k * (key_dim + value_dim)


RULES: dict[str, Callable[[_Call], int | None]] = {
    "Dense": _dense,
    "EinsumDense": _einsum,
    **dict.fromkeys(("Conv1D", "Conv2D", "Conv3D"), _conv),
    **dict.fromkeys(("DepthwiseConv1D", "DepthwiseConv2D"), _depthwise),
    **dict.fromkeys(("SeparableConv1D", "SeparableConv2D"), _separable),
    **dict.fromkeys(("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"), _transpose),
    **dict.fromkeys(GATES, _recurrent),
    **dict.fromkeys(("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"), _conv_lstm),
    "Bidirectional": _bidirectional,
    "TimeDistributed": _time_distributed,
    "MultiHeadAttention": _attention,
}
