"""Dense, EinsumDense, Embedding, activation layers, inference-time identities, rescaling."""

from __future__ import annotations

import numpy as np

from wpipe.forward import activations
from wpipe.forward.base import Arrays, Call, Unsupported, layer


def kernel(call: Call, name: str = "kernel") -> np.ndarray:
    """A kernel, dequantized when Keras 3 stored it as int8 with a per-output scale."""
    k = call.weight(name)
    scale = call.optional(f"{name}_scale")
    if k.dtype.kind in "iu":
        if scale is None:
            raise Unsupported(f"{call.class_name}: integer kernel without a scale")
        return (k.astype(np.float32) / scale).astype(np.float32)
    return k


def activate(call: Call, x: np.ndarray) -> np.ndarray:
    fn = activations.get(call.config.get("activation"), call.keras_major)
    return fn(x).astype(np.float32, copy=False)


def bias_add(call: Call, x: np.ndarray) -> np.ndarray:
    if call.get("use_bias", call.get("bias", True)) is False:
        return x
    b = call.optional("bias")
    return x if b is None else x + b


@layer("Dense")
def dense(call: Call, xs: Arrays) -> np.ndarray:
    y = np.matmul(xs[0].astype(np.float32, copy=False), kernel(call))
    return activate(call, bias_add(call, y))


@layer("EinsumDense")
def einsum_dense(call: Call, xs: Arrays) -> np.ndarray:
    y = np.einsum(call.config["equation"], xs[0], kernel(call), optimize=True)
    b = call.optional("bias")
    if b is not None:
        y = y + b  # stored with the broadcast shape Keras built (1s for non-bias axes)
    return activate(call, y.astype(np.float32))


@layer("Embedding")
def embedding(call: Call, xs: Arrays) -> np.ndarray:
    table = call.weight("embeddings")
    scale = call.optional("embeddings_scale")
    if table.dtype.kind in "iu" and scale is not None:
        table = table.astype(np.float32) / scale[:, None]
    ids = np.asarray(xs[0]).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise Unsupported(f"Embedding: input ids outside [0, {table.shape[0]})")
    return table[ids]


@layer("Activation")
def activation_layer(call: Call, xs: Arrays) -> np.ndarray:
    return activate(call, xs[0])


@layer("ReLU")
def relu(call: Call, xs: Arrays) -> np.ndarray:
    x = xs[0]
    slope = float(call.get("negative_slope", 0.0))
    threshold = float(call.get("threshold", 0.0))
    y = np.where(x >= threshold, x, slope * (x - threshold))
    max_value = call.config.get("max_value")
    if max_value is not None:
        y = np.where(x >= float(max_value), float(max_value), y)
    return y.astype(np.float32)


@layer("LeakyReLU")
def leaky_relu(call: Call, xs: Arrays) -> np.ndarray:
    # The layer defaults to 0.3 in every Keras (the string "leaky_relu" means 0.2).
    slope = float(call.get("negative_slope", call.get("alpha", 0.3)))
    return np.where(xs[0] > 0, xs[0], slope * xs[0]).astype(np.float32)


@layer("PReLU")
def prelu(call: Call, xs: Arrays) -> np.ndarray:
    x = xs[0]
    alpha = call.weight("alpha")
    return (np.maximum(x, 0.0) + alpha * np.minimum(x, 0.0)).astype(np.float32)


@layer("ELU")
def elu(call: Call, xs: Arrays) -> np.ndarray:
    return activations.elu(xs[0], float(call.get("alpha", 1.0))).astype(np.float32)


@layer("ThresholdedReLU")
def thresholded_relu(call: Call, xs: Arrays) -> np.ndarray:
    theta = float(call.get("theta", 1.0))
    return np.where(xs[0] > theta, xs[0], 0.0).astype(np.float32)


@layer("Softmax")
def softmax(call: Call, xs: Arrays) -> np.ndarray:
    axis = call.get("axis", -1)
    if isinstance(axis, list):
        axis = tuple(axis)
    return activations.softmax(xs[0], axis=axis).astype(np.float32)


# Layers that only act while training (or only add a loss): identity at inference.
@layer(
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "InputLayer",
)  # fmt: skip
def identity(call: Call, xs: Arrays) -> np.ndarray:
    return xs[0]


@layer("Rescaling")
def rescaling(call: Call, xs: Arrays) -> np.ndarray:
    scale = np.asarray(call.get("scale", 1.0), dtype=np.float32)
    offset = np.asarray(call.get("offset", 0.0), dtype=np.float32)
    return (xs[0].astype(np.float32) * scale + offset).astype(np.float32)


@layer("Normalization")
def normalization(call: Call, xs: Arrays) -> np.ndarray:
    x = xs[0].astype(np.float32)
    mean, var = call.weight("mean"), call.weight("variance")
    if call.get("invert", False):
        raise Unsupported("Normalization: invert=True is not computed")
    shape = _broadcast_shape(x.ndim, call.get("axis", -1), mean)
    mean, var = mean.reshape(shape), var.reshape(shape)
    # Keras: (x - mean) / max(sqrt(var), epsilon()) with epsilon() = 1e-7
    return ((x - mean) / np.maximum(np.sqrt(var), 1e-7)).astype(np.float32)


def _broadcast_shape(ndim: int, axis, stat: np.ndarray) -> list[int]:
    axes = [axis] if isinstance(axis, int) else list(axis or [])
    axes = [a % ndim for a in axes]
    if stat.ndim == ndim:
        return list(stat.shape)
    shape = [1] * ndim
    flat = list(np.atleast_1d(stat).shape) if stat.ndim else []
    for a, n in zip(sorted(axes), flat if len(flat) == len(axes) else [stat.size], strict=False):
        shape[a] = n
    return shape
