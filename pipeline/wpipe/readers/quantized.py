"""Keras 3 quantized kernels (`model.quantize("int8" | "int4")`) read as the float kernel Keras
computes from them, as keras/src/layers/core/dense.py does:

* int8: kernel = codes / kernel_scale (one scale per unit).
* int4, per-channel: codes packed two per byte along the last axis (low nibble first, signed
  by `(x ^ 8) - 8`), kernel = codes / kernel_scale.
* int4, sub-channel (kernel_zero and g_idx present): kernel = (codes - zero[g]) * scale[g]
  for the group g = g_idx[row] of each input row.
* Embedding (keras/src/layers/core/embedding.py): the same with one scale per row (token);
  int4 packs, and sub-channel groups, along the output axis.

The tensor keeps its stored dtype and shape (`weights.dtype` int8; Keras counts the stored
elements) while every statistic, histogram, unit and spectrum is of the dequantized kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from wpipe.readers.base import Tensor

Loader = Callable[[], np.ndarray]


def dequantize(tensors: list[Tensor], mode: str | None, config: dict | None = None) -> None:
    """Point each quantized kernel's (or embedding table's) loader at its dequantized values,
    in place; the layer's config gives an EinsumDense's equation and an Embedding's width."""
    if mode not in ("int8", "int4"):
        return
    config = config or {}
    by_name = {t.weight_name: t for t in tensors}
    for tensor in tensors:
        tensor.quantization = mode
        if tensor.role == "embeddings":
            _embeddings(tensor, by_name, mode, config.get("output_dim"))
        if tensor.role != "kernel":
            continue
        scope = tensor.weight_name[: -len("kernel")]
        scale = by_name.get(f"{scope}kernel_scale")
        if scale is None:
            continue
        zero, g_idx = by_name.get(f"{scope}kernel_zero"), by_name.get(f"{scope}g_idx")
        equation = config.get("equation")
        if mode == "int8" and isinstance(equation, str):
            tensor.load = _int8(tensor.load, _einsum_scale(scale.load, tensor.shape, equation))
        elif mode == "int8":
            tensor.load = _int8(tensor.load, scale.load)
        elif zero is not None and g_idx is not None:
            tensor.load = _int4_grouped(tensor.load, scale.load, zero.load, g_idx.load)
        else:
            tensor.load = _int4(tensor.load, scale.load)


def _embeddings(
    table: Tensor, by_name: dict[str, Tensor], mode: str, output_dim: int | None
) -> None:
    scope = table.weight_name[: -len("embeddings")]
    scale = by_name.get(f"{scope}embeddings_scale")
    zero, g_idx = by_name.get(f"{scope}embeddings_zero"), by_name.get(f"{scope}g_idx")
    if scale is None:
        return
    if mode == "int8":
        table.load = _rows(table.load, scale.load)
    elif zero is not None and g_idx is not None:
        table.load = _int4_grouped(table.load, scale.load, zero.load, g_idx.load, axis=-1)
    elif output_dim:
        table.load = _rows(_unpacked(table.load, output_dim), scale.load)


def _rows(codes: Loader, scale: Loader) -> Loader:
    def load() -> np.ndarray:
        return codes().astype(np.float32) / scale().astype(np.float32)[:, None]

    return load


def _unpacked(codes: Loader, length: int) -> Loader:
    return lambda: unpack_int4(codes(), length)


def saved_order(tensors: list[Tensor], mode: str | None) -> list[Tensor]:
    """A quantized layer's tensors in Keras's serialization order (the native files' order;
    legacy `.h5` lists trainable ones first, so the bias came before the kernel)."""
    order = {
        "int8": ("kernel", "bias", "kernel_scale"),
        "int4": ("kernel", "bias", "kernel_scale", "kernel_zero", "g_idx"),
    }.get(mode or "")
    if not order:
        return tensors
    rank = {role: i for i, role in enumerate(order)}
    return sorted(tensors, key=lambda t: rank.get(t.role, len(rank)))


def unpack_int4(packed: np.ndarray, length: int) -> np.ndarray:
    """Two signed 4-bit codes per int8 along the last axis -> int8 codes, `length` of them."""
    raw = packed.astype(np.int8).view(np.uint8)
    low = (raw & 0x0F).astype(np.int8)
    high = ((raw >> 4) & 0x0F).astype(np.int8)
    codes = np.stack([low, high], axis=-1).reshape(*raw.shape[:-1], -1)[..., :length]
    return (codes ^ 8) - 8


def _int8(codes: Loader, scale: Loader) -> Loader:
    def load() -> np.ndarray:
        return codes().astype(np.float32) / scale().astype(np.float32)

    return load


def _einsum_scale(scale: Loader, kernel_shape: tuple[int, ...], equation: str) -> Loader:
    """An EinsumDense kernel_scale laid out against its kernel. Keras keeps one scale per
    kernel axis that survives into the output and stores them in the output's axis order
    (keras/src/layers/core/einsum_dense.py, `_adjust_scale_for_quant`)."""

    def load() -> np.ndarray:
        inputs, output = equation.replace("...", "").split("->")
        kernel = inputs.split(",")[1]  # the kernel's labels: Keras writes no `...` there
        kept = [axis for axis, label in enumerate(kernel) if label in output]
        stored = sorted(kept, key=lambda axis: output.index(kernel[axis]))
        s = scale().reshape([kernel_shape[axis] for axis in stored])
        s = np.transpose(s, [stored.index(axis) for axis in kept])
        return s.reshape([n if axis in kept else 1 for axis, n in enumerate(kernel_shape)])

    return load


def _int4(codes: Loader, scale: Loader) -> Loader:
    def load() -> np.ndarray:
        s = scale().astype(np.float32)
        return unpack_int4(codes(), s.shape[-1]).astype(np.float32) / s

    return load


def _int4_grouped(
    codes: Loader, scale: Loader, zero: Loader, g_idx: Loader, axis: int = 0
) -> Loader:
    """(codes - zero[g]) * scale[g], the group g = g_idx[i] of each index i along `axis`
    (Keras's dequantize_with_sz_map: a Dense kernel's input rows, axis 0, scale (n_groups,
    units); an Embedding table's output columns, axis -1, scale (input_dim, n_groups))."""

    def load() -> np.ndarray:
        groups = g_idx().astype(np.int64)
        s = np.take(scale().astype(np.float32), groups, axis=axis)  # now the table's shape
        q = unpack_int4(codes(), s.shape[-1]).astype(np.float32)
        return (q - np.take(zero().astype(np.float32), groups, axis=axis)) * s

    return load
