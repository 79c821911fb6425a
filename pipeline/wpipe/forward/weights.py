"""A model's weights by layer path, loaded on first use, as float32 arrays in Keras 2/3 layout."""

from __future__ import annotations

import numpy as np

from wpipe.readers.base import Layer, Tensor


class WeightBook:
    """Arrays of the reader's layers keyed by layer path then canonical weight name."""

    def __init__(self, layers: list[Layer]) -> None:
        self._tensors: dict[str, list[Tensor]] = {}
        for layer in layers:
            self._tensors.setdefault(layer.layer_path, []).extend(layer.tensors)
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def arrays(self, layer_path: str) -> dict[str, np.ndarray]:
        if layer_path not in self._cache:
            tensors = self._tensors.get(layer_path, [])
            self._cache[layer_path] = {t.weight_name: _decode(t) for t in tensors}
        return self._cache[layer_path]

    def nbytes(self) -> int:
        return sum(t.size * 4 for ts in self._tensors.values() for t in ts)


def _decode(tensor: Tensor) -> np.ndarray:
    array = np.asarray(tensor.load())
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    if tensor.layout == "theano" and tensor.role == "kernel" and array.ndim >= 3:
        # (filters, in, *k) true-convolution kernels -> (*k, in, filters), flipped
        spatial = tuple(range(2, array.ndim))
        array = np.flip(np.transpose(array, (*spatial, 1, 0)), axis=tuple(range(len(spatial))))
    return array
