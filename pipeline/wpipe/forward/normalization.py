"""BatchNormalization (moving statistics: inference), Layer-, Group- and UnitNormalization."""

from __future__ import annotations

import numpy as np

from wpipe.forward.base import Arrays, Call, layer


def _axes(call: Call, ndim: int, default) -> list[int]:
    axis = call.config.get("axis", default)
    axes = [axis] if isinstance(axis, int) else list(axis)
    return sorted(a % ndim for a in axes)


def _shape(ndim: int, axes: list[int], x_shape) -> list[int]:
    return [x_shape[i] if i in axes else 1 for i in range(ndim)]


@layer("BatchNormalization")
def batch_norm(call: Call, xs: Arrays) -> np.ndarray:
    x = xs[0].astype(np.float32, copy=False)
    axes = _axes(call, x.ndim, -1)
    shape = _shape(x.ndim, axes, x.shape)
    mean = call.weight("moving_mean").reshape(shape)
    var = call.weight("moving_variance").reshape(shape)
    return _scale_shift(call, (x - mean) / np.sqrt(var + float(call.get("epsilon", 1e-3))), shape)


def _scale_shift(call: Call, y: np.ndarray, shape) -> np.ndarray:
    """gamma and beta unless the config drops them (`scale` / `center` false)."""
    if call.get("scale", True) is not False:
        y = y * call.weight("gamma").reshape(shape)
    if call.get("center", True) is not False:
        y = y + call.weight("beta").reshape(shape)
    return y.astype(np.float32)


@layer("LayerNormalization")
def layer_norm(call: Call, xs: Arrays) -> np.ndarray:
    x = xs[0].astype(np.float32, copy=False)
    axes = _axes(call, x.ndim, -1)
    eps = float(call.get("epsilon", 1e-3))
    shape = _shape(x.ndim, axes, x.shape)
    if call.get("rms_scaling", False):
        y = x / np.sqrt(np.mean(x * x, axis=tuple(axes), keepdims=True) + eps)
        return (y * call.weight("gamma").reshape(shape)).astype(np.float32)
    mean = x.mean(axis=tuple(axes), keepdims=True)
    var = x.var(axis=tuple(axes), keepdims=True)
    return _scale_shift(call, (x - mean) / np.sqrt(var + eps), shape)


@layer("GroupNormalization")
def group_norm(call: Call, xs: Arrays) -> np.ndarray:
    x = xs[0].astype(np.float32, copy=False)
    axis = int(call.get("axis", -1)) % x.ndim
    groups = int(call.get("groups", 32))
    c = x.shape[axis]
    moved = np.moveaxis(x, axis, -1)
    g = moved.reshape(*moved.shape[:-1], groups, c // groups)
    reduce = (*range(1, g.ndim - 2), g.ndim - 1)
    mean = g.mean(axis=reduce, keepdims=True)
    var = g.var(axis=reduce, keepdims=True)
    eps = float(call.get("epsilon", 1e-3))
    y = ((g - mean) / np.sqrt(var + eps)).reshape(moved.shape)
    return np.moveaxis(_scale_shift(call, y, (c,)), -1, axis)


@layer("UnitNormalization")
def unit_norm(call: Call, xs: Arrays) -> np.ndarray:
    x = xs[0].astype(np.float32, copy=False)
    axes = tuple(_axes(call, x.ndim, -1))
    square = np.sum(x * x, axis=axes, keepdims=True)
    return (x / np.sqrt(np.maximum(square, 1e-12))).astype(np.float32)
