"""Format-neutral records every reader yields: a model, its leaf layers, their weight tensors."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ModelReadError(Exception):
    """A file that cannot be read as a Keras model; `code` is a short machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Tensor:
    """One weight tensor; `load()` reads and decodes it only when called."""

    weight_name: str  # canonical name within its layer: `kernel`, `forward/bias`, `query/kernel`
    role: str  # the last component of weight_name, normalised (`W` of Keras 1 -> `kernel`)
    trainable: bool
    source_name: str  # where it lives in the file, verbatim
    shape: tuple[int, ...]
    dtype: str  # logical dtype: float32, float16, bfloat16, ...
    load: Callable[[], np.ndarray]
    # Element order when it differs from Keras 2's: "theano" conv kernels (filters, in, *k),
    # "cudnn" recurrent weights (per-gate cuDNN blocks, bias of 8u/6u).
    layout: str = "keras"
    quantization: str | None = None  # int8 / int4 / float8 / gptq / awq: the layer's mode
    # "ok", or "<code>: <reason>" for a tensor that is kept but not analysed (complex, string,
    # enum, compound dtypes; a dataset never written): weights gets a row without statistics.
    status: str = "ok"
    # Other places the file lists this same variable (a weight tied across layers: T5's shared
    # embedding under `encoder` and `decoder`); the variable is counted once, here.
    tied_sources: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))  # Python ints: a per-tensor np.prod costs µs


@dataclass
class Layer:
    layer_path: str  # `encoder/dense_1` for layers of nested models
    layer_name: str
    class_name: str | None  # None when the file carries no architecture
    config: dict[str, Any] | None
    trainable: bool
    tensors: list[Tensor] = field(default_factory=list)


@dataclass
class Model:
    path: str
    format: str
    keras_version: str | None
    backend: str | None
    model_class: str | None
    optimizer: str | None
    loss: str | None
    layers: list[Layer]
    n_optimizer_tensors: int = 0
    n_optimizer_params: int = 0
    model_config: str | None = None  # raw JSON text, kept verbatim
    training_config: str | None = None
    source_config: str | None = None  # a Hugging Face config.json beside the file (hf_config)


def from_cudnn(values: np.ndarray, role: str, n_gates: int) -> np.ndarray:
    """A CuDNNLSTM/CuDNNGRU kernel or recurrent kernel in Keras's LSTM/GRU layout: cuDNN reads
    each gate block's bytes as its (units, inputs) matrix (`_convert_rnn_weights` in Keras
    2.1.6 topology.py and tf_keras hdf5_format.py)."""
    blocks = np.split(values, n_gates, axis=1)
    if role == "kernel":
        blocks = [b.T.reshape(b.shape, order="F") for b in blocks]
    else:
        blocks = [b.T for b in blocks]
    return np.hstack(blocks)
