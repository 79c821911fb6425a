"""Keras 3 quantized kernels (`model.quantize("int8" | "int4")`) read as the float kernel Keras
computes from them, as keras/src/layers/core/dense.py does:

* int8: kernel = codes / kernel_scale (one scale per unit).
* int4, per-channel: codes packed two per byte along the last axis (low nibble first, signed
  by `(x ^ 8) - 8`), kernel = codes / kernel_scale.
* int4, sub-channel (kernel_zero and g_idx present): kernel = (codes - zero[g]) * scale[g]
  for the group g = g_idx[row] of each input row.
* Embedding (keras/src/layers/core/embedding.py): the same with one scale per row (token);
  int4 packs, and sub-channel groups, along the output axis.

* int4 before Keras 3.14 (keras_version of the file): Dense codes packed along the input axis
  instead (kernel stored (ceil(in/2), units)); an odd input width left the last row's high
  nibbles zero.
* GPTQ / AWQ: codes transposed, (units, in), as uint8 (4-bit: packed two per byte along the
  units axis, unsigned); kernel = ((codes - zero[g]) * scale[g]).T for the group g = g_idx[i]
  of each input i, and AWQ divides each input row by its `awq_scales` entry.
* float8: Keras keeps the float kernel and quantizes it on each call, so the stored kernel is
  the kernel; its scales and amax histories are variables of their own.

The tensor keeps its stored dtype and shape (`weights.dtype` int8; Keras counts the stored
elements) while every statistic, histogram, unit and spectrum is of the dequantized kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from wpipe.readers.base import Layer, ModelReadError, Tensor
from wpipe.readers.keras_config import quantization_bits
from wpipe.readers.roles import QUANTIZED_ROLES

Loader = Callable[[], np.ndarray]
INT4_ALONG_OUTPUTS_SINCE = (3, 14)  # Keras 3.14 moved int4 packing to the output axis


def dequantize(
    tensors: list[Tensor],
    mode: str | None,
    config: dict | None = None,
    keras_version: str | None = None,
) -> None:
    """Point each quantized kernel's (or embedding table's) loader at its dequantized values,
    in place; the layer's config gives an EinsumDense's equation, an Embedding's width and
    GPTQ's bits, the file's Keras version the int4 packing axis."""
    if mode not in QUANTIZED_ROLES:
        return
    config = config or {}
    by_name = {t.weight_name: t for t in tensors}
    for tensor in tensors:
        tensor.quantization = mode
        if tensor.role == "embeddings" and mode in ("int8", "int4"):
            _embeddings(tensor, by_name, mode, config.get("output_dim"))
        if tensor.role != "kernel" or mode == "float8":
            continue
        scope = tensor.weight_name[: -len("kernel")]
        scale = by_name.get(f"{scope}kernel_scale")
        if scale is None:
            continue
        zero, g_idx = by_name.get(f"{scope}kernel_zero"), by_name.get(f"{scope}g_idx")
        equation = config.get("equation")
        if mode in ("gptq", "awq") and (zero is None or g_idx is None):
            # Keras 3.15's .keras/.weights.h5 saves no kernel_zero (its own load fails too)
            tensor.status = f"not-dequantized: {mode} kernel saved without its zero point"
        elif mode in ("gptq", "awq"):
            bits = quantization_bits(config) or (4 if mode == "awq" else None)
            tensor.load = _transposed_grouped(
                tensor.load, (scale.load, zero.load, g_idx.load), bits,
                _awq_scales(by_name.get(f"{scope}awq_scales")),
            )  # fmt: skip
        elif mode == "int8" and isinstance(equation, str):
            tensor.load = _int8(tensor.load, _einsum_scale(scale.load, tensor.shape, equation))
        elif mode == "int8":
            tensor.load = _int8(tensor.load, _unit_scale(scale.load, tensor.shape))
        elif mode != "int4":
            continue
        elif zero is not None and g_idx is not None:
            tensor.load = _int4_grouped(tensor.load, scale.load, zero.load, g_idx.load)
        elif _packed_along_inputs(keras_version):
            tensor.load = _int4_along_inputs(tensor.load, scale.load, equation)
        else:
            tensor.load = _int4(tensor.load, scale.load)


def mark(tensors: list[Tensor], mode: str | None) -> None:
    """Tag a quantized layer's tensors with its mode; `dequantize_layers` decodes them once
    the file's Keras version is known."""
    if mode in QUANTIZED_ROLES:
        for tensor in tensors:
            tensor.quantization = mode


def dequantize_layers(layers: list[Layer], keras_version: str | None, where: str) -> None:
    """`dequantize` every layer `mark` tagged, with the Keras version of the file; codes and
    parameters that do not fit each other (a damaged file) are a `corrupt` ModelReadError."""
    for layer in layers:
        mode = next((t.quantization for t in layer.tensors if t.quantization), None)
        if not mode:
            continue
        dequantize(layer.tensors, mode, layer.config, keras_version)
        for tensor in layer.tensors:
            if tensor.role in ("kernel", "embeddings"):
                tensor.load = _checked(tensor.load, f"{where}: {tensor.source_name}")


def _checked(load: Loader, what: str) -> Loader:
    def checked() -> np.ndarray:
        try:
            return load()
        except (ValueError, IndexError) as exc:  # shapes or group indices that do not fit
            raise ModelReadError(
                "corrupt", f"{what}: its quantization parameters do not fit its codes ({exc})"
            ) from None

    return checked


def _packed_along_inputs(keras_version: str | None) -> bool:
    """True for a file Keras 3.0-3.13 wrote (int4 codes packed along the input axis)."""
    parts = str(keras_version or "").split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        return False  # no version (a weights-only file): the layout of Keras since 3.14
    major, minor = int(parts[0]), int(parts[1])
    return major == 3 and (major, minor) < INT4_ALONG_OUTPUTS_SINCE


def _int4_along_inputs(codes: Loader, scale: Loader, equation: str | None) -> Loader:
    """Keras < 3.14: two codes a byte along the input axis (an EinsumDense's first summed
    kernel axis, its kernel keeping its rank and its scale laid out as int8's)."""

    def load() -> np.ndarray:
        if not isinstance(equation, str):
            return _unpacked_along(codes(), 0).astype(np.float32) / scale().astype(np.float32)
        unpacked = _unpacked_along(codes(), _first_summed_axis(equation))
        laid_out = _einsum_scale(scale, unpacked.shape, equation)()
        return unpacked.astype(np.float32) / laid_out.astype(np.float32)

    return load


def _unpacked_along(packed: np.ndarray, axis: int) -> np.ndarray:
    """Signed codes packed two a byte along `axis`. The file keeps no unpacked length: an odd
    one left the last packed slice's high nibbles zero (Keras's `pack_int4` pads with 0)."""
    moved = np.moveaxis(np.asarray(packed).astype(np.int8), axis, -1)
    odd = moved.shape[-1] and not np.any(moved[..., -1].view(np.uint8) >> 4)
    return np.moveaxis(unpack_int4(moved, 2 * moved.shape[-1] - int(bool(odd))), -1, axis)


def _first_summed_axis(equation: str) -> int:
    inputs, output = equation.replace("...", "").split("->")
    kernel = inputs.split(",")[1]
    return next((axis for axis, label in enumerate(kernel) if label not in output), 0)


def _awq_scales(tensor: Tensor | None) -> Loader | None:
    return tensor.load if tensor is not None else None


def _transposed_grouped(
    codes: Loader, params: tuple[Loader, Loader, Loader], bits: int | None, awq: Loader | None
) -> Loader:
    """GPTQ/AWQ (keras/src/layers/core/dense.py `_gptq_call`, `_awq_call`): codes (units, in)
    uint8, 4-bit ones packed two a byte along the units axis; scale and zero (units, groups).
    Returns the kernel Keras multiplies, (in, units)."""
    scale, zero, g_idx = params

    def load() -> np.ndarray:
        s, z = scale().astype(np.float32), zero().astype(np.float32)
        stored = codes()
        q = stored.astype(np.float32)
        if bits == 4 or (bits is None and stored.shape[0] != s.shape[0]):
            q = _unpack_unsigned(stored, s.shape[0]).astype(np.float32)
        groups = g_idx().astype(np.int64)
        a = awq().astype(np.float32) if awq is not None else None
        # every array below is the codes' size: checked before it is made
        _fit(q.ndim == 2 and s.ndim == 2 and z.shape == s.shape and s.shape[0] == q.shape[0]
             and groups.shape == (q.shape[1],) and (a is None or a.shape == groups.shape),
             q, s, groups)  # fmt: skip
        w = ((q - np.take(z, groups, axis=-1)) * np.take(s, groups, axis=-1)).T
        return w / a[:, None] if a is not None else w

    return load


def _fit(fits: bool, codes: np.ndarray, scale: np.ndarray, g_idx: np.ndarray) -> None:
    if not fits:
        raise ValueError(f"codes {codes.shape}, scale {scale.shape}, g_idx {g_idx.shape}")


def _unpack_unsigned(packed: np.ndarray, length: int) -> np.ndarray:
    """Two unsigned 4-bit codes per uint8 along axis 0 (low nibble first) -> `length` rows."""
    raw = packed.astype(np.uint8)
    stacked = np.stack([raw & 0x0F, raw >> 4], axis=1)
    return stacked.reshape(-1, *raw.shape[1:])[:length]


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
    order = QUANTIZED_ROLES.get(mode or "")
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


def _unit_scale(scale: Loader, kernel_shape: tuple[int, ...]) -> Loader:
    """A kernel_scale without the equation that lays it out (a weights-only file): Dense's
    (units,) broadcasts as it is; an EinsumDense's kept sizes go to the kernel axes of those
    sizes, in order (Keras stores them in the output's order, most often the kernel's)."""

    def load() -> np.ndarray:
        s = scale()
        kept = [n for n in s.shape if n != 1]
        if s.ndim <= 1 or len(kernel_shape) < len(kept):
            return s
        shape, axis = [1] * len(kernel_shape), 0
        for n in kept:
            while axis < len(kernel_shape) and kernel_shape[axis] != n:
                axis += 1
            if axis == len(kernel_shape):
                return s  # no such axis: left as stored
            shape[axis], axis = n, axis + 1
        return s.reshape(shape)

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
        groups, packed = g_idx().astype(np.int64), codes()
        sc, z = scale().astype(np.float32), zero().astype(np.float32)
        # the scale taken by group must stay the codes' size: checked before it is made
        if axis == 0:
            fits = groups.shape == packed.shape[:1] and sc.shape[-1] <= 2 * packed.shape[-1]
        else:
            fits = groups.size <= 2 * packed.shape[-1] and sc.shape[:1] == packed.shape[:1]
        fits = fits and sc.ndim == 2 and z.shape == sc.shape and packed.ndim == 2
        _fit(fits and groups.ndim == 1, packed, sc, groups)
        s = np.take(sc, groups, axis=axis)  # now the table's shape
        q = unpack_int4(packed, s.shape[-1]).astype(np.float32)
        return (q - np.take(z, groups, axis=axis)) * s

    return load
