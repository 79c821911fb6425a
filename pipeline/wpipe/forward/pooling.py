"""Max and average pooling (1D/2D/3D) and their global forms.

Average pooling with `same` padding divides by the number of real (unpadded) cells in each
window, as TensorFlow and JAX Keras do; max pooling pads with -inf.
"""

from __future__ import annotations

import numpy as np

from wpipe.forward.base import Call, as_tuple, layer
from wpipe.forward.conv import from_last, pad_input, to_last, windows


def _params(call: Call, n: int):
    pool = as_tuple(call.get("pool_size", call.get("pool_length", 2)), n)
    strides = call.config.get("strides") or call.config.get("stride")
    strides = pool if strides is None else as_tuple(strides, n)
    padding = call.get("padding", call.get("border_mode", "valid"))
    return pool, strides, padding


def _pool(call: Call, x: np.ndarray, n: int, reduce: str) -> np.ndarray:
    pool, strides, padding = _params(call, n)
    x = to_last(call, x).astype(np.float32, copy=False)
    ones = (1,) * n
    axes = tuple(range(-n, 0))
    if reduce == "max":
        xp = pad_input(x, pool, strides, ones, padding, value=-np.inf)
        y = windows(xp, pool, strides, ones).max(axis=axes)
    else:
        xp = pad_input(x, pool, strides, ones, padding)
        y = windows(xp, pool, strides, ones).sum(axis=axes)
        mask = pad_input(np.ones((1, *x.shape[1:-1], 1), np.float32), pool, strides, ones, padding)
        counts = windows(mask, pool, strides, ones).sum(axis=axes)
        y = y / counts
    return from_last(call, y.astype(np.float32))


def _register(n: int) -> None:
    layer(f"MaxPooling{n}D", f"MaxPool{n}D")(lambda call, xs: _pool(call, xs[0], n, "max"))
    layer(f"AveragePooling{n}D", f"AvgPool{n}D")(lambda call, xs: _pool(call, xs[0], n, "avg"))
    layer(f"GlobalMaxPooling{n}D", f"GlobalMaxPool{n}D")(
        lambda call, xs: _global(call, xs[0], np.max)
    )
    layer(f"GlobalAveragePooling{n}D", f"GlobalAvgPool{n}D")(
        lambda call, xs: _global(call, xs[0], np.mean)
    )


def _global(call: Call, x: np.ndarray, reduce) -> np.ndarray:
    x = to_last(call, x)
    keep = bool(call.get("keepdims", False))
    y = reduce(x.astype(np.float32, copy=False), axis=tuple(range(1, x.ndim - 1)), keepdims=keep)
    return from_last(call, y) if keep else y


for _n in (1, 2, 3):
    _register(_n)
