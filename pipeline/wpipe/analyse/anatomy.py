"""analyse stage: a weight tensor cut along its meaningful axis (units, filters, channels,
gates, heads), per keras_formats.md §6, with statistics for each slice.

Pure functions of (layer class, layer config, weight name, role, layout, array); they know
nothing of files or storage. Rules are in docs form in docs: anatomy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from wpipe.readers.base import from_cudnn

GATES = {
    **dict.fromkeys(("LSTM", "CuDNNLSTM", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"), "ifco"),
    **dict.fromkeys(("GRU", "CuDNNGRU"), "zrh"),
    "SimpleRNN": "",
}
CONV = {"Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D"}
CONV_TRANSPOSE = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Deconvolution2D"}
DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
NORMALIZATION = {"BatchNormalization", "LayerNormalization", "GroupNormalization"}
DENSE = {"Dense", "EinsumDense"}
MAX_EMBEDDING_ROWS = 4096  # larger vocabularies: this many evenly spaced rows
# Per-slice rows of any other tensor: at most this many evenly spaced slices (docs: anatomy)
MAX_SLICES = 4096
# Normalisation vectors whose channels get rows: the scale (a dead channel has gamma ≈ 0).
# A shift, a running statistic or a conv/dense bias is one value per channel: its "slice"
# would repeat the value, which `weights`/`weight_values` already hold.
NORMALIZATION_ROLES = {"gamma"}
ROW_CHUNK = 1 << 16  # elements per accumulation step of per-slice statistics
# Layouts whose kernels hold the output axis first: Keras 1 'th' (filters, in, *k), PyTorch's
# (out, in, *k) in a safetensors export.
OUTPUT_FIRST = {"theano", "out_in"}


@dataclass
class SliceGroup:
    """Slices of one tensor: column j of `matrix` holds every element of slice j."""

    axis: str  # unit | filter | channel | gate | head
    matrix: np.ndarray  # (elements per slice, slices)
    index: np.ndarray  # each slice's index along its axis
    gate: np.ndarray | None = None  # gate letter per slice (recurrent layers)
    part: str | None = None  # "input" / "recurrent" halves of a GRU/CuDNN bias


def _wrapped(class_name: str | None, config: dict) -> tuple[str | None, dict]:
    if class_name in ("Bidirectional", "TimeDistributed"):
        inner = config.get("layer") if isinstance(config.get("layer"), dict) else {}
        return inner.get("class_name"), inner.get("config") or {}
    return class_name, config


def _along(array: np.ndarray, axis: int, name: str) -> SliceGroup:
    moved = np.moveaxis(array, axis, -1)
    n = moved.shape[-1]
    index = evenly_spaced(n, MAX_SLICES)
    matrix = moved.reshape(-1, n)
    return SliceGroup(name, matrix if index.size == n else matrix[:, index], index)


def evenly_spaced(n: int, limit: int) -> np.ndarray:
    """range(n), or `limit` evenly spaced indices of it (first and last included)."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).astype(np.int64))


def slice_groups(
    class_name: str | None,
    config: dict | None,
    weight_name: str,
    role: str,
    layout: str,
    array: np.ndarray,
) -> list[SliceGroup]:
    """How a tensor divides into meaningful slices; empty when the layer type has no rule."""
    cls, _ = _wrapped(class_name, config or {})
    if array.ndim == 0 or array.size == 0 or cls is None:
        return []
    if cls in GATES:
        return _recurrent(GATES[cls], role, layout, array)
    if cls == "MultiHeadAttention":
        scope = weight_name.split("/")[-2] if "/" in weight_name else ""
        if scope == "attention_output" and role == "bias":
            return [_along(array, -1, "unit")]
        head_axis = 0 if scope == "attention_output" or role == "bias" else 1
        return [_along(array, head_axis, "head")] if array.ndim > head_axis else []
    if cls in NORMALIZATION:
        return [_along(array.reshape(-1), 0, "channel")] if role in NORMALIZATION_ROLES else []
    if role == "bias" and sum(d > 1 for d in array.shape) <= 1:  # (u,) or GPT-2's (1, u)
        return []  # one value per unit/filter/channel (recurrent and attention biases above)
    if cls == "Embedding" and role == "embeddings" and array.ndim == 2:
        rows = evenly_spaced(array.shape[0], MAX_EMBEDDING_ROWS)
        return [SliceGroup("unit", array[rows].T, rows)]
    if cls in DEPTHWISE or (cls in SEPARABLE and role == "depthwise_kernel"):
        axis = -2 if role != "bias" else -1
        return [_along(array, axis, "channel")]
    if cls in CONV_TRANSPOSE and role == "kernel":
        return [_along(array, -2, "filter")]
    if cls in CONV | CONV_TRANSPOSE | SEPARABLE:
        axis = 0 if layout in OUTPUT_FIRST and role == "kernel" else -1
        return [_along(array, axis, "filter")]
    if cls in DENSE:
        return [_along(array, 0 if layout == "out_in" else -1, "unit")]
    return []


def _recurrent(gates: str, role: str, layout: str, array: np.ndarray) -> list[SliceGroup]:
    """Recurrent weights: every unit of every gate, plus each gate block as a whole."""
    g = max(len(gates), 1)
    halves: list[tuple[str | None, np.ndarray]]
    if role == "bias" and (array.ndim == 2 or layout == "cudnn"):
        rows = array.reshape(2, -1)  # GRU reset_after / cuDNN: input biases, recurrent biases
        halves = [("input", rows[0]), ("recurrent", rows[1])]
    else:
        halves = [(None, array)]
    groups = []
    for part, values in halves:
        if layout == "cudnn" and role in ("kernel", "recurrent_kernel"):
            values = from_cudnn(values, role, g)
        width = values.shape[-1]
        u = width // g
        if u * g != width:
            return []
        columns = values.reshape(-1, width)
        labels = np.array(list(gates)) if gates else None
        groups.append(
            SliceGroup(
                "unit",
                columns,
                np.arange(width) % u,
                None if labels is None else np.repeat(labels, u),
                part,
            )
        )
        if gates:
            blocks = columns.reshape(columns.shape[0], g, u).transpose(0, 2, 1).reshape(-1, g)
            groups.append(SliceGroup("gate", blocks, np.arange(g), labels, part))
    return groups


def _to_weights_precision(dtype: np.dtype) -> Callable[[np.ndarray], np.ndarray]:
    """Per-slice statistics of float32 (or narrower) weights rounded to float32: no
    figure needs more digits than the weights have, and the unneeded low bytes cost the
    units table ~40 % of its Parquet bytes (docs: values)."""
    if np.dtype(dtype).itemsize > 4 or not np.issubdtype(dtype, np.floating):
        return lambda x: x
    return lambda x: x.astype(np.float32).astype(np.float64)


def slice_columns(group: SliceGroup, near_zero: float) -> dict[str, Any]:
    """Per-slice size, mean, population std, l2, max_abs, zero and near-zero fractions, as
    columns (one entry per slice), accumulated in float64 a block of rows at a time (no
    float64 copy of a large tensor)."""
    matrix = group.matrix
    rows, n = matrix.shape
    s1 = np.zeros(n)
    s2 = np.zeros(n)
    peak = np.zeros(n)
    zeros = np.zeros(n, dtype=np.int64)
    near = np.zeros(n, dtype=np.int64)
    step = max(1, ROW_CHUNK // max(n, 1))
    for start in range(0, rows, step):
        block = matrix[start : start + step].astype(np.float64)
        block[~np.isfinite(block)] = 0.0
        s1 += block.sum(axis=0)
        s2 += np.einsum("ij,ij->j", block, block)
        magnitude = np.abs(block)
        peak = np.maximum(peak, magnitude.max(axis=0))
        zeros += (block == 0).sum(axis=0)
        near += (magnitude < near_zero).sum(axis=0)
    mean = s1 / rows
    variance = np.maximum(s2 / rows - mean**2, 0.0)
    stored = _to_weights_precision(matrix.dtype)
    return {
        "axis": [group.axis] * n,
        "index": np.asarray(group.index, dtype=np.int64),
        "gate": [None] * n if group.gate is None else [str(g) for g in group.gate],
        "part": [group.part] * n,
        "size": np.full(n, rows, dtype=np.int64),
        "mean": stored(mean),
        "std": stored(np.sqrt(variance)),
        "l2": stored(np.sqrt(s2)),
        "max_abs": peak,
        "zero_frac": zeros / rows,
        "near_zero_frac": near / rows,
    }


def slice_stats(group: SliceGroup, near_zero: float) -> Iterator[dict]:
    """slice_columns, one dict per slice."""
    columns = slice_columns(group, near_zero)
    names = list(columns)
    values = [c.tolist() if isinstance(c, np.ndarray) else c for c in columns.values()]
    for row in zip(*values, strict=True):
        yield dict(zip(names, row, strict=True))
