"""Keras's built-in activation functions, as the Keras version that wrote the file defined them.

Traps: `hard_sigmoid` is clip(0.2x + 0.5) in Keras ≤ 2 and relu6(x + 3) / 6 in Keras 3; the
string `leaky_relu` uses slope 0.2 (the LeakyReLU *layer* defaults to 0.3, see core.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from wpipe.forward.base import Unsupported

Fn = Callable[[np.ndarray], np.ndarray]
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, scipy is not a
    runtime dependency."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x).astype(x.dtype)


def elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def hard_sigmoid_k2(x: np.ndarray) -> np.ndarray:
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


def hard_sigmoid_k3(x: np.ndarray) -> np.ndarray:
    return relu6(x + 3.0) / 6.0


def gelu(x: np.ndarray, approximate: bool = False) -> np.ndarray:
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def sparsemax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.moveaxis(x, axis, -1)
    srt = -np.sort(-z, axis=-1)
    k = np.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cum = np.cumsum(srt, axis=-1)
    support = 1 + k * srt > cum
    k_z = support.sum(axis=-1, keepdims=True)
    tau = (np.take_along_axis(cum, k_z - 1, axis=-1) - 1) / k_z
    return np.moveaxis(np.maximum(z - tau, 0.0), -1, axis)


def glu(x: np.ndarray, axis: int = -1) -> np.ndarray:
    a, b = np.split(x, 2, axis=axis)
    return a * sigmoid(b)


def shrink(threshold: float, soft: bool) -> Fn:
    def fn(x: np.ndarray) -> np.ndarray:
        keep = np.abs(x) > threshold
        return np.where(keep, x - np.sign(x) * threshold if soft else x, 0.0)

    return fn


COMMON: dict[str, Fn] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "softplus": softplus,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "elu": elu,
    "selu": lambda x: SELU_SCALE * elu(x, SELU_ALPHA),
    "exponential": np.exp,
    "swish": lambda x: x * sigmoid(x),
    "silu": lambda x: x * sigmoid(x),
    "gelu": gelu,
    "relu6": relu6,
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "mish": lambda x: x * np.tanh(softplus(x)),
    "hard_silu": lambda x: x * hard_sigmoid_k3(x),
    "hard_swish": lambda x: x * hard_sigmoid_k3(x),
    "celu": lambda x: np.maximum(x, 0.0) + np.minimum(0.0, np.expm1(np.minimum(x, 0.0))),
    "glu": glu,
    "sparse_plus": lambda x: np.where(x <= -1, 0.0, np.where(x >= 1, x, (x + 1) ** 2 / 4)),
    "squareplus": lambda x: (x + np.sqrt(x * x + 4.0)) / 2.0,
    "soft_shrink": shrink(0.5, True),
    "hard_shrink": shrink(0.5, False),
    "hard_tanh": lambda x: np.clip(x, -1.0, 1.0),
    "tanh_shrink": lambda x: x - np.tanh(x),
    "log_sigmoid": lambda x: -softplus(-x),
    "sparsemax": sparsemax,
}


def get(spec: Any, keras_major: int) -> Fn:
    """The function an `activation` config entry names (a string or a serialized object)."""
    if spec is None:
        return COMMON["linear"]
    if isinstance(spec, dict):  # Keras 3 may serialize {"class_name": ..., "config": ...}
        name = spec.get("config") if isinstance(spec.get("config"), str) else spec.get("class_name")
        if spec.get("module") not in (
            None,
            "builtins",
            "keras.activations",
            "keras.src.activations",
        ):
            raise Unsupported(f"custom activation {name!r}: code stored in the file is never run")
        spec = name
    if not isinstance(spec, str):
        raise Unsupported(f"activation {spec!r} is not a built-in name")
    name = spec.rsplit(">", 1)[-1].lower()
    if name == "hard_sigmoid":
        return hard_sigmoid_k2 if keras_major <= 2 else hard_sigmoid_k3
    fn = COMMON.get(name)
    if fn is None:
        raise Unsupported(f"activation {spec!r} is not a built-in Keras activation")
    return fn
