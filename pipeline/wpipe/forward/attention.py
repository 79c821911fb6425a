"""MultiHeadAttention (no masks): Keras's einsum formulation, inference mode."""

from __future__ import annotations

import numpy as np

from wpipe.forward.activations import softmax
from wpipe.forward.base import Arrays, Call, Unsupported, layer


def _project(call: Call, name: str, x: np.ndarray) -> np.ndarray:
    y = np.einsum("abc,cde->abde", x.astype(np.float32, copy=False), call.weight(f"{name}/kernel"))
    b = call.optional(f"{name}/bias")
    return y if b is None else y + b


def _tensor(call: Call, xs: Arrays, key: str, position: int, default: np.ndarray) -> np.ndarray:
    value = call.kwargs.get(key)
    if isinstance(value, np.ndarray):
        return value
    return xs[position] if len(xs) > position else default


@layer("MultiHeadAttention")
def multi_head_attention(call: Call, xs: Arrays) -> np.ndarray:
    if call.config.get("attention_axes") not in (None, [1]):
        raise Unsupported("MultiHeadAttention: attention_axes other than the sequence axis")
    if any(isinstance(call.kwargs.get(k), np.ndarray) for k in ("attention_mask",)):
        raise Unsupported("MultiHeadAttention: attention masks are not applied")
    query = xs[0]
    value = _tensor(call, xs, "value", 1, query)
    key = _tensor(call, xs, "key", 2, value)
    q = _project(call, "query", query) / np.sqrt(float(call.config["key_dim"]))
    k = _project(call, "key", key)
    v = _project(call, "value", value)
    scores = np.einsum("aecd,abcd->acbe", k, q)
    weights = softmax(scores, axis=-1)
    context = np.einsum("acbe,aecd->abcd", weights, v)
    out = np.einsum("abcd,cde->abe", context, call.weight("attention_output/kernel"))
    b = call.optional("attention_output/bias")
    return (out if b is None else out + b).astype(np.float32)
