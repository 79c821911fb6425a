"""Shape layers: Flatten, Reshape, Permute, RepeatVector, Cropping, ZeroPadding, UpSampling,
CenterCrop and Resizing (TensorFlow's half-pixel-centre nearest and bilinear rules)."""

from __future__ import annotations

import math

import numpy as np

from wpipe.forward.base import Arrays, Call, Unsupported, channels_first, layer
from wpipe.forward.conv import from_last, to_last


@layer("Flatten")
def flatten(call: Call, xs: Arrays) -> np.ndarray:
    x = xs[0]
    if channels_first(call) and x.ndim > 2:
        x = np.moveaxis(x, 1, -1)  # Keras moves channels last before flattening
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # explicit: a batch may be empty


@layer("Reshape")
def reshape(call: Call, xs: Arrays) -> np.ndarray:
    target = [int(d) for d in call.config.get("target_shape") or call.config.get("dims")]
    if -1 in target:  # resolved here: numpy cannot infer it when the batch is empty
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(xs[0].shape[1:]) // max(known, 1)
    return xs[0].reshape(xs[0].shape[0], *target)


@layer("Permute")
def permute(call: Call, xs: Arrays) -> np.ndarray:
    dims = [int(d) for d in call.config["dims"]]
    return np.transpose(xs[0], (0, *dims))


@layer("RepeatVector")
def repeat_vector(call: Call, xs: Arrays) -> np.ndarray:
    n = int(call.config["n"])
    return np.repeat(xs[0][:, None, :], n, axis=1)


def _pairs(value, n: int) -> list[tuple[int, int]]:
    if isinstance(value, int):
        return [(value, value)] * n
    value = list(value)
    if n == 1 and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [(value[0], value[1])]
    return [(v, v) if isinstance(v, int) else (int(v[0]), int(v[1])) for v in value]


def _dims(class_name: str) -> int:
    return int(class_name[-2])


@layer("Cropping1D", "Cropping2D", "Cropping3D")
def cropping(call: Call, xs: Arrays) -> np.ndarray:
    n = _dims(call.class_name)
    x = to_last(call, xs[0])
    crops = _pairs(call.config.get("cropping", 1), n)
    index = (
        slice(None),
        *(slice(a, size - b) for (a, b), size in zip(crops, x.shape[1:-1], strict=True)),
    )
    return from_last(call, x[index])


@layer("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")
def zero_padding(call: Call, xs: Arrays) -> np.ndarray:
    n = _dims(call.class_name)
    x = to_last(call, xs[0])
    pads = [(0, 0), *_pairs(call.config.get("padding", 1), n), (0, 0)]
    return from_last(call, np.pad(x, pads))


@layer("UpSampling1D", "UpSampling2D", "UpSampling3D")
def upsampling(call: Call, xs: Arrays) -> np.ndarray:
    n = _dims(call.class_name)
    x = to_last(call, xs[0])
    size = call.config.get("size", call.config.get("length", 2))
    sizes = (int(size),) * n if isinstance(size, int) else tuple(int(s) for s in size)
    if call.get("interpolation", "nearest") == "bilinear":
        out = [s * f for s, f in zip(x.shape[1:-1], sizes, strict=True)]
        return from_last(call, resize(x, out, "bilinear"))
    for axis, factor in enumerate(sizes, start=1):
        x = np.repeat(x, factor, axis=axis)
    return from_last(call, x)


def _bilinear_axis(x: np.ndarray, axis: int, out: int) -> np.ndarray:
    size = x.shape[axis]
    pos = (np.arange(out, dtype=np.float64) + 0.5) * (size / out) - 0.5
    floor = np.floor(pos)
    lo = np.clip(floor.astype(np.int64), 0, size - 1)
    hi = np.clip(np.ceil(pos).astype(np.int64), 0, size - 1)
    frac = (pos - floor).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = out
    frac = frac.reshape(shape)
    a, b = np.take(x, lo, axis=axis), np.take(x, hi, axis=axis)
    return a + (b - a) * frac


def _nearest_axis(x: np.ndarray, axis: int, out: int) -> np.ndarray:
    size = x.shape[axis]
    src = np.minimum(np.floor((np.arange(out) + 0.5) * (size / out)).astype(np.int64), size - 1)
    return np.take(x, src, axis=axis)


def resize(x: np.ndarray, out: list[int], method: str) -> np.ndarray:
    """channels_last (B, *S, C) to spatial size `out`, axis by axis (both rules separate)."""
    fn = {"bilinear": _bilinear_axis, "nearest": _nearest_axis}.get(method)
    if fn is None:
        raise Unsupported(f"interpolation {method!r} is not computed")
    y = x.astype(np.float32, copy=False)
    for axis, size in enumerate(out, start=1):
        if y.shape[axis] != size:
            y = fn(y, axis, size)
    return y.astype(np.float32)


@layer("Resizing")
def resizing(call: Call, xs: Arrays) -> np.ndarray:
    if call.get("crop_to_aspect_ratio", False) or call.get("pad_to_aspect_ratio", False):
        raise Unsupported("Resizing: aspect-ratio cropping/padding is not computed")
    x = to_last(call, xs[0])
    out = [int(call.config["height"]), int(call.config["width"])]
    return from_last(call, resize(x, out, call.get("interpolation", "bilinear")))


@layer("CenterCrop")
def center_crop(call: Call, xs: Arrays) -> np.ndarray:
    x = to_last(call, xs[0])
    h, w = int(call.config["height"]), int(call.config["width"])
    if x.shape[1] < h or x.shape[2] < w:
        raise Unsupported("CenterCrop: input smaller than the crop (Keras resizes) is not computed")
    top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
    return from_last(call, x[:, top : top + h, left : left + w])
