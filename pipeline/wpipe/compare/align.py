"""Permutation-aware distance: hidden units of model B reordered to best match model A.

Two independently trained networks of one architecture compute the same function family with
their hidden units in arbitrary order, so a raw weight distance mostly measures that order.
Weight matching (Ainsworth, Hayase & Srinivasa, "Git Re-Basin", 2023, section 3.2) finds, for
every hidden layer, the permutation of B's units that maximises the agreement of their incoming
and outgoing weights with A's (biases and BatchNorm vectors carried along), one layer at a time
by linear assignment (`scipy.optimize.linear_sum_assignment`), until no permutation changes.

Handled: chains of Dense and Conv1D/2D/3D layers, with BatchNormalization/LayerNormalization,
Flatten, pooling, dropout and activation layers between them. A residual or merge join,
attention, recurrent, embedding, depthwise or grouped layers are reported as outside what the
alignment handles, never guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from wpipe.forward import Unsupported, graph_of
from wpipe.forward.cost import model_cost
from wpipe.forward.graph import Ref
from wpipe.readers.base import Layer, Model

PRODUCERS = {"Dense", "Conv1D", "Conv2D", "Conv3D"}
PER_UNIT = {"BatchNormalization", "LayerNormalization"}
PASSTHROUGH = {
    "InputLayer", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "Dropout",
    "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ActivityRegularization",
}  # fmt: skip
MAX_ROUNDS = 100


@dataclass
class _Group:
    """One hidden layer's units: its producer, the per-unit layers after it, its consumer."""

    producer: int  # index into the chain's weighted layers
    size: int
    per_unit: list[int] = field(default_factory=list)
    consumer: int | None = None
    positions: int = 1  # a Flatten between: the consumer's input rows per unit


@dataclass
class Alignment:
    status: str  # "ok", or why the models were not aligned
    rows: list[dict] = field(default_factory=list)  # per tensor: raw and aligned distance
    raw: float | None = None  # whole-model distance before and after alignment
    aligned: float | None = None


def align(model_a: Model, model_b: Model) -> Alignment:
    """Raw and aligned distances of every tensor of two models of one architecture."""
    weighted_a = [la for la in model_a.layers if la.tensors]
    weighted_b = [la for la in model_b.layers if la.tensors]
    shapes = [[tuple(t.shape) for t in la.tensors] for la in weighted_a]
    if shapes != [[tuple(t.shape) for t in la.tensors] for la in weighted_b]:
        return Alignment("the models' weighted layers differ in number or shapes")
    try:
        groups = chain_groups(model_a, weighted_a)
    except Unsupported as exc:
        return Alignment(exc.reason)
    arrays_a = [_arrays(la) for la in weighted_a]
    arrays_b = [_arrays(la) for la in weighted_b]
    perms = _match(groups, arrays_a, arrays_b)
    permuted = _apply(groups, perms, arrays_b)
    return _distances(weighted_a, arrays_a, arrays_b, permuted)


def chain_groups(model: Model, weighted: list[Layer]) -> list[_Group]:
    """The permutable unit groups of a chain model; Unsupported with the reason otherwise."""
    graph = graph_of(model)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise Unsupported("several inputs or outputs: the alignment handles chains only")
    if any(layer.sub is not None for layer in graph.layers):
        raise Unsupported("a nested model: the alignment handles flat chains of layers only")
    index = {la.layer_path: i for i, la in enumerate(weighted)}
    shapes = model_cost(model).layers
    groups: list[_Group] = []
    open_group: _Group | None = None
    for layer in graph.layers:
        cls = layer.class_name
        known = cls in PASSTHROUGH or cls in PER_UNIT or cls in PRODUCERS or cls == "Flatten"
        if not known:
            raise Unsupported(f"{layer.name} ({cls}) is outside what the alignment handles")
        refs = [r for node in layer.nodes for r in _refs(node.args)]
        if len(layer.nodes) > 1 or len(refs) > 1:
            raise Unsupported(f"{layer.name} ({cls}) joins or is shared: outside a chain")
        if cls in PASSTHROUGH:
            continue
        if cls == "Flatten":
            if open_group is not None:
                shape = shapes.get(layer.name)
                open_group.positions = (shape.output_shape[0] // open_group.size) if shape else 1
            continue
        if cls in PER_UNIT:
            if open_group is None or layer.name not in index:
                raise Unsupported(f"{layer.name} ({cls}) normalises the model's inputs")
            open_group.per_unit.append(index[layer.name])
            continue
        if int(layer.config.get("groups") or 1) != 1:
            raise Unsupported(f"{layer.name} ({cls}) is a grouped convolution: not handled")
        if layer.config.get("data_format") == "channels_first":
            raise Unsupported(f"{layer.name} ({cls}) is channels-first: not handled")
        position = index[layer.name]
        if open_group is not None:
            open_group.consumer = position
            groups.append(open_group)
        size = int(layer.config.get("units") or layer.config.get("filters") or 0)
        open_group = _Group(position, size)
    return groups  # the last producer's outputs are the model's: never permuted


def _refs(value: object) -> list[Ref]:
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _refs(v)]
    return []


def _arrays(layer: Layer) -> dict[str, np.ndarray]:
    return {t.role: np.asarray(t.load(), dtype=np.float64) for t in layer.tensors}


def _out_rows(array: np.ndarray) -> np.ndarray:
    """A producer's tensor as (units, rest): its last axis is the units'."""
    return np.moveaxis(array, -1, 0).reshape(array.shape[-1], -1)


def _in_rows(kernel: np.ndarray, units: int, positions: int) -> np.ndarray:
    """A consumer's kernel as (units, rest): its input axis is (positions × units) after a
    Flatten (channels last), else the axis before the last."""
    if kernel.ndim == 2:
        rows = kernel.reshape(positions, units, -1)
        return np.moveaxis(rows, 1, 0).reshape(units, -1)
    return np.moveaxis(kernel, -2, 0).reshape(units, -1)


def _match(
    groups: list[_Group], arrays_a: list[dict], arrays_b: list[dict]
) -> list[np.ndarray]:  # fmt: skip
    from scipy.optimize import linear_sum_assignment

    perms = [np.arange(g.size) for g in groups]
    for _ in range(MAX_ROUNDS):
        changed = False
        for k, group in enumerate(groups):
            score = np.zeros((group.size, group.size))
            for layer in (group.producer, *group.per_unit):
                for role, a in arrays_a[layer].items():
                    b = arrays_b[layer][role]  # this group's own permutation left out
                    if layer == group.producer and role == "kernel" and k > 0:
                        b = _permute_in(b, groups[k - 1], perms[k - 1])
                    score += _out_rows(a) @ _out_rows(b).T
            if group.consumer is not None:
                a = arrays_a[group.consumer]["kernel"]
                b = arrays_b[group.consumer]["kernel"]  # this group's own permutation left out
                if k + 1 < len(groups):  # the consumer produces the next group's units
                    b = np.take(b, perms[k + 1], axis=-1)
                score += (
                    _in_rows(a, group.size, group.positions)
                    @ _in_rows(b, group.size, group.positions).T
                )
            _, best = linear_sum_assignment(score, maximize=True)
            if not np.array_equal(best, perms[k]):
                perms[k], changed = best, True
        if not changed:
            break
    return perms


def _permute_in(kernel: np.ndarray, group: _Group, perm: np.ndarray) -> np.ndarray:
    if kernel.ndim == 2:
        rows = kernel.reshape(group.positions, group.size, -1)[:, perm]
        return rows.reshape(kernel.shape)
    return np.take(kernel, perm, axis=-2)


def _apply(groups: list[_Group], perms: list[np.ndarray], arrays: list[dict]) -> list[dict]:
    """B's arrays with every group's units put in A's order."""
    out = [dict(layer) for layer in arrays]
    for group, perm in zip(groups, perms, strict=True):
        for layer in (group.producer, *group.per_unit):
            out[layer] = {role: np.take(a, perm, axis=-1) for role, a in out[layer].items()}
        if group.consumer is not None:
            consumer = out[group.consumer]
            consumer["kernel"] = _permute_in(consumer["kernel"], group, perm)
    return out


def _distances(
    layers: list[Layer], arrays_a: list[dict], arrays_b: list[dict], permuted: list[dict]
) -> Alignment:  # fmt: skip
    rows = []
    sums = {"raw": 0.0, "aligned": 0.0, "a": 0.0, "b": 0.0}
    for layer, a, b, p in zip(layers, arrays_a, arrays_b, permuted, strict=True):
        for tensor in layer.tensors:
            role = tensor.role
            na, nb = np.linalg.norm(a[role]), np.linalg.norm(b[role])
            raw, aligned = np.linalg.norm(a[role] - b[role]), np.linalg.norm(a[role] - p[role])
            scale = (na + nb) / 2
            rows.append({
                "layer_path": layer.layer_path, "weight_name": tensor.weight_name,
                "raw_rel_l2": float(raw / scale) if scale else 0.0,
                "aligned_rel_l2": float(aligned / scale) if scale else 0.0,
                "l2_a": float(na), "l2_b": float(nb), "l2_diff": float(raw),
                "l2_diff_aligned": float(aligned),
            })  # fmt: skip
            sums["raw"] += raw**2
            sums["aligned"] += aligned**2
            sums["a"] += na**2
            sums["b"] += nb**2
    scale = (math.sqrt(sums["a"]) + math.sqrt(sums["b"])) / 2 or 1.0
    return Alignment("ok", rows, math.sqrt(sums["raw"]) / scale, math.sqrt(sums["aligned"]) / scale)
