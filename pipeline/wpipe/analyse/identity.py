"""Weights identity: content hashes that recognise identical weights whatever the file.

A tensor's hash covers its dtype, shape and values in one canonical byte order (little-endian,
C order), so the `.h5`, `.keras` and `.weights.h5` saves of one model, a re-save, or a frozen
layer copied into a fine-tune hash alike, while file hashes (`models.sha256`) differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def tensor_sha(array: np.ndarray, layout: str = "keras") -> str:
    """SHA-256 (hex) of `array`'s dtype, shape and values, independent of the stored layout.
    A PyTorch (out, in, *k) weight (`layout` out_in) is hashed in Keras's (*k, in, out)
    order: a Keras kernel exported to safetensors by transposing it keeps its hash."""
    if layout == "out_in" and array.ndim >= 2:
        array = np.moveaxis(array, (0, 1), (-1, -2))
    dtype = array.dtype
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False):
        dtype = dtype.newbyteorder("<")
        array = array.astype(dtype)
    digest = hashlib.sha256(f"{dtype.str}|{list(array.shape)}|".encode())
    digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    return digest.hexdigest()


def model_sha(layers: Iterable[list[str | None]]) -> str | None:
    """SHA-256 over the model's layers, each the set of its tensor hashes; NULL when a tensor
    has none.

    Sets, not sequences: formats order a model differently (a `.weights.h5` without its
    config lists layers in the file's group order; a frozen sublayer reorders an `.h5`
    group's weight names), and the values are what make two models the same weights."""
    entries = []
    for shas in layers:
        if any(s is None for s in shas):
            return None
        if shas:
            entries.append("|".join(sorted(shas)))  # type: ignore[arg-type]
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()
