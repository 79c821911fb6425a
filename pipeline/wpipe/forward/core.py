"""Dense, EinsumDense, Embedding, activation layers, inference-time identities, rescaling."""

from __future__ import annotations

import numpy as np

from wpipe.forward import activations
from wpipe.forward.base import Arrays, Call, Unsupported, layer
from wpipe.readers.keras_config import quantization_mode

# keras.quantizers.AbsMaxQuantizer's defaults: what a Keras 3 int8 Dense without a
# `quantization_config` (files from before Keras 3.11 wrote none) applies to its inputs.
ABS_MAX_DEFAULT = {"value_range": [-127, 127], "epsilon": 1e-7}


def kernel(call: Call, name: str = "kernel") -> np.ndarray:
    """A kernel; the reader has already dequantized Keras 3's int8/int4 codes by their scales."""
    k = call.weight(name)
    if k.dtype.kind in "iu":
        raise Unsupported(f"{call.class_name}: integer kernel without a scale")
    return k


def input_quantizer(call: Call) -> dict | None:
    """The AbsMaxQuantizer config a quantized layer applies to its inputs, None for weight-only.

    Keras 3 int8 Dense/EinsumDense (keras/src/layers/core/dense.py, einsum_dense.py) round
    their inputs to int8 codes by their absolute maximum before the integer product, so their
    outputs differ from a float product by ~0.5 %."""
    mode = quantization_mode(call.config)
    if mode == "float8":  # a float product would be off by float8's rounding, unannounced
        raise Unsupported(f"{call.class_name}: float8 rounding of inputs and kernel not computed")
    if mode not in ("int8", "int4"):
        return None  # GPTQ / AWQ: weight-only, the inputs go in as they are
    if mode == "int4" and call.class_name == "EinsumDense":
        raise Unsupported("EinsumDense: int4-quantized kernels are not computed")
    if "quantization_config" not in call.config:
        if mode == "int4":
            raise Unsupported(
                f"{call.class_name}: int4 kernels of Keras before 3.11 are not computed"
            )
        return ABS_MAX_DEFAULT
    spec = ((call.config.get("quantization_config") or {}).get("config") or {}).get(
        "activation_quantizer"
    )
    if spec is None:
        return None
    if spec.get("class_name") != "AbsMaxQuantizer":
        raise Unsupported(f"{call.class_name}: input quantizer {spec.get('class_name')!r}")
    return spec.get("config") or ABS_MAX_DEFAULT


def quantized_inputs(call: Call, x: np.ndarray, axes: tuple[int, ...] = (-1,)) -> np.ndarray:
    """`x` as the layer's int8 product sees it: keras.quantizers.abs_max_quantize over the
    reduced `axes`, then divided back by its scale (the same product up to rounding)."""
    config = input_quantizer(call)
    if config is None:
        return x
    low, high = (float(v) for v in config.get("value_range", (-127, 127)))
    eps = np.float32(config.get("epsilon", 1e-7))
    scale = np.float32(high) / (np.max(np.abs(x), axis=axes, keepdims=True) + eps)
    codes = np.clip(np.round(x * scale), low, high)
    return (codes / scale).astype(np.float32)


def reduced_input_axes(equation: str) -> tuple[int, ...]:
    """The input axes an EinsumDense equation sums over (negative after a leading `...`)."""
    lhs, output = equation.split("->")
    spec = lhs.split(",")[0]
    labels = spec.replace("...", "")
    axes = [i for i, label in enumerate(labels) if label not in output]
    offset = len(labels) if spec.startswith("...") else 0
    return tuple(i - offset for i in axes)


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
    x = quantized_inputs(call, xs[0].astype(np.float32, copy=False))
    return activate(call, bias_add(call, np.matmul(x, kernel(call))))


@layer("EinsumDense")
def einsum_dense(call: Call, xs: Arrays) -> np.ndarray:
    equation = call.config["equation"]
    x = quantized_inputs(call, xs[0].astype(np.float32, copy=False), reduced_input_axes(equation))
    y = np.einsum(equation, x, kernel(call), optimize=True)
    b = call.optional("bias")
    if b is not None:
        y = y + b  # stored with the broadcast shape Keras built (1s for non-bias axes)
    return activate(call, y.astype(np.float32))


@layer("Embedding")
def embedding(call: Call, xs: Arrays) -> np.ndarray:
    table = call.weight("embeddings")  # dequantized by the reader when Keras 3 quantized it
    if table.dtype.kind in "iu":
        raise Unsupported("Embedding: integer table without a scale")
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
