"""Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot."""

from __future__ import annotations

from functools import reduce

import numpy as np

from wpipe.forward.base import Arrays, Call, Unsupported, layer


def _fold(fn):
    return lambda call, xs: reduce(fn, [x.astype(np.float32, copy=False) for x in xs])


layer("Add")(_fold(np.add))
layer("Multiply")(_fold(np.multiply))
layer("Maximum")(_fold(np.maximum))
layer("Minimum")(_fold(np.minimum))


@layer("Subtract")
def subtract(call: Call, xs: Arrays) -> np.ndarray:
    if len(xs) != 2:
        raise Unsupported("Subtract: needs exactly two inputs")
    return xs[0] - xs[1]


@layer("Average")
def average(call: Call, xs: Arrays) -> np.ndarray:
    return (reduce(np.add, xs) / len(xs)).astype(np.float32)


@layer("Concatenate")
def concatenate(call: Call, xs: Arrays) -> np.ndarray:
    return np.concatenate(xs, axis=int(call.get("axis", -1)))


def _l2_normalize(x: np.ndarray, axis: int) -> np.ndarray:
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=axis, keepdims=True), 1e-12))


@layer("Dot")
def dot(call: Call, xs: Arrays) -> np.ndarray:
    a, b = (x.astype(np.float32, copy=False) for x in xs)
    axes = call.get("axes", -1)
    ax = list(axes) if isinstance(axes, list) else [axes, axes]
    ax = [int(v) % x.ndim for v, x in zip(ax, (a, b), strict=True)]
    if call.get("normalize", False):
        a, b = _l2_normalize(a, ax[0]), _l2_normalize(b, ax[1])
    # batch_dot: contract one axis of each, keep the batch axis shared
    letters = "bcdefghijklmnopq"
    sa = ["a"] + [letters[i] for i in range(a.ndim - 1)]
    sb = ["a"] + [letters[a.ndim - 1 + i] for i in range(b.ndim - 1)]
    sb[ax[1]] = sa[ax[0]]
    out = [s for i, s in enumerate(sa) if i != ax[0]] + [
        s for i, s in enumerate(sb) if i not in (0, ax[1])
    ]
    y = np.einsum(f"{''.join(sa)},{''.join(sb)}->{''.join(out)}", a, b)
    return y[:, None] if y.ndim == 1 else y
