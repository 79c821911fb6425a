"""Convolutions (1D/2D/3D, transposed, depthwise, separable) as batched matrix products.

Each convolution gathers its input patches (im2col) in chunks of at most CHUNK_BYTES and
multiplies them with the kernel in one BLAS call per chunk; nothing loops per pixel. Kernels
keep Keras's layout: (*k, in/groups, filters); transposed (*k, filters, in); depthwise
(*k, in, depth_multiplier). `same` padding puts the extra cell after (TensorFlow's rule).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from wpipe.forward.base import Arrays, Call, Unsupported, as_tuple, channels_first, layer
from wpipe.forward.core import activate, bias_add, kernel

CHUNK_BYTES = 32 << 20


def to_last(call: Call, x: np.ndarray) -> np.ndarray:
    """channels_first input -> channels_last (kernels do not depend on data_format)."""
    return np.moveaxis(x, 1, -1) if channels_first(call) else x


def from_last(call: Call, y: np.ndarray) -> np.ndarray:
    return np.moveaxis(y, -1, 1) if channels_first(call) else y


def spatial_params(call: Call, n: int) -> tuple[tuple[int, ...], ...]:
    k = as_tuple(call.get("kernel_size"), n)
    strides = as_tuple(call.get("strides", 1), n)
    dilation = as_tuple(call.get("dilation_rate", 1), n)
    return k, strides, dilation


def pad_amounts(size: int, k_eff: int, stride: int, padding: str) -> tuple[int, int]:
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return k_eff - 1, 0
    if padding == "same":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + k_eff - size, 0)
        return total // 2, total - total // 2  # the odd cell goes after
    raise Unsupported(f"padding {padding!r} is not supported")


def pad_input(x: np.ndarray, k, strides, dilation, padding: str, value: float = 0.0):
    pads = [(0, 0)]
    for size, kk, s, d in zip(x.shape[1:-1], k, strides, dilation, strict=True):
        pads.append(pad_amounts(size, (kk - 1) * d + 1, s, padding))
    pads.append((0, 0))
    if any(p != (0, 0) for p in pads):
        x = np.pad(x, pads, constant_values=value)
    return x


def windows(x: np.ndarray, k, strides, dilation) -> np.ndarray:
    """A view (B, *out, C, *k) of every patch of a padded channels_last input."""
    n = len(k)
    eff = tuple((kk - 1) * d + 1 for kk, d in zip(k, dilation, strict=True))
    view = sliding_window_view(x, eff, axis=tuple(range(1, n + 1)))
    index = (slice(None), *(slice(None, None, s) for s in strides), slice(None))
    index += tuple(slice(None, None, d) for d in dilation)
    return view[index]


def patch_matmul(view: np.ndarray, mats: list[np.ndarray], groups: int) -> np.ndarray:
    """Σ over patches: view (B, *out, C, *k) times `mats` (one (k*C/g, F/g) matrix per group)."""
    b = view.shape[0]
    n = (view.ndim - 2) // 2
    out = view.shape[1 : 1 + n]
    c = view.shape[1 + n]
    f = sum(m.shape[1] for m in mats)
    y = np.empty((b, *out, f), dtype=np.float32)
    k_cells = int(np.prod(view.shape[2 + n :]))
    # patches as (rows, *k, C): the kernel's own element order
    order = (0, *range(1, 1 + n), *range(2 + n, 2 + 2 * n), 1 + n)
    per_row = int(np.prod(out[1:], dtype=np.int64)) * k_cells * c * 4
    rows = max(1, CHUNK_BYTES // max(per_row, 1))
    cg = c // groups
    for bi, r0, r1 in _chunks(b, out[0], rows):
        part = view[bi, r0:r1] if isinstance(bi, int) else view[bi, :]
        if isinstance(bi, int):
            part = part[None]
        cols = np.ascontiguousarray(part.transpose(order), dtype=np.float32)
        m = cols.shape[0] * int(np.prod(cols.shape[1 : 1 + n]))
        cols = cols.reshape(m, k_cells, c)
        outs = []
        for g, mat in enumerate(mats):
            block = cols if groups == 1 else cols[:, :, g * cg : (g + 1) * cg]
            outs.append(block.reshape(m, math.prod(block.shape[1:])) @ mat)
        res = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
        target = y[bi, r0:r1] if isinstance(bi, int) else y[bi]
        target[...] = res.reshape(target.shape)
    return y


def _chunks(batch: int, rows: int, per_chunk: int):
    """(batch index or slice, row start, row end) blocks of at most `per_chunk` rows."""
    if per_chunk >= rows:
        step = max(1, per_chunk // rows)
        for b0 in range(0, batch, step):
            yield slice(b0, min(b0 + step, batch)), 0, rows
        return
    for b in range(batch):
        for r0 in range(0, rows, per_chunk):
            yield b, r0, min(r0 + per_chunk, rows)


def convolve(x: np.ndarray, k: np.ndarray, strides, dilation, padding: str, groups: int = 1):
    """channels_last x (B, *S, C) with kernel (*k, C/groups, F) -> (B, *out, F)."""
    n = k.ndim - 2
    ksize = k.shape[:n]
    x = x.astype(np.float32, copy=False)
    if all(kk == 1 for kk in ksize) and groups == 1:
        if any(s > 1 for s in strides):  # a strided 1×1 convolution samples, then multiplies
            x = x[(slice(None), *(slice(None, None, s) for s in strides))]
        return (x.reshape(-1, x.shape[-1]) @ k.reshape(k.shape[-2], -1)).reshape(
            *x.shape[:-1], k.shape[-1]
        )
    xp = pad_input(x, ksize, strides, dilation, padding)
    view = windows(xp, ksize, strides, dilation)
    fg = k.shape[-1] // groups
    mats = [k[..., g * fg : (g + 1) * fg].reshape(-1, fg) for g in range(groups)]
    return patch_matmul(view, mats, groups)


@layer("Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D")
def conv(call: Call, xs: Arrays) -> np.ndarray:
    k = kernel(call)
    n = k.ndim - 2
    _, strides, dilation = spatial_params(call, n)
    x = to_last(call, xs[0])
    groups = int(call.get("groups", 1))
    y = convolve(x, k, strides, dilation, call.get("padding", "valid"), groups)
    return from_last(call, activate(call, bias_add(call, y)))


def depthwise(x: np.ndarray, dk: np.ndarray, strides, dilation, padding: str) -> np.ndarray:
    """x (B, *S, C), kernel (*k, C, M) -> (B, *out, C*M), channel c*M + m."""
    n = dk.ndim - 2
    ksize = dk.shape[:n]
    xp = pad_input(x.astype(np.float32, copy=False), ksize, strides, dilation, padding)
    view = windows(xp, ksize, strides, dilation)  # (B, *out, C, *k)
    c, m = dk.shape[-2], dk.shape[-1]
    y = np.zeros((*view.shape[: 1 + n], c, m), dtype=np.float32)
    for offset in np.ndindex(*ksize):
        y += view[(..., *offset)][..., None] * dk[offset]
    return y.reshape(*y.shape[:-2], c * m)


@layer("DepthwiseConv1D", "DepthwiseConv2D")
def depthwise_conv(call: Call, xs: Arrays) -> np.ndarray:
    dk = (
        kernel(call, "depthwise_kernel")
        if call.optional("depthwise_kernel") is not None
        else kernel(call)
    )
    n = dk.ndim - 2
    _, strides, dilation = spatial_params(call, n)
    y = depthwise(to_last(call, xs[0]), dk, strides, dilation, call.get("padding", "valid"))
    return from_last(call, activate(call, bias_add(call, y)))


@layer("SeparableConv1D", "SeparableConv2D", "SeparableConvolution2D")
def separable_conv(call: Call, xs: Arrays) -> np.ndarray:
    dk, pk = call.weight("depthwise_kernel"), call.weight("pointwise_kernel")
    n = dk.ndim - 2
    _, strides, dilation = spatial_params(call, n)
    y = depthwise(to_last(call, xs[0]), dk, strides, dilation, call.get("padding", "valid"))
    y = (y.reshape(-1, y.shape[-1]) @ pk.reshape(pk.shape[-2], -1)).reshape(
        *y.shape[:-1], pk.shape[-1]
    )
    return from_last(call, activate(call, bias_add(call, y)))


def transposed_length(n: int, k: int, s: int, d: int, padding: str, output_padding) -> int:
    """keras.utils.conv_utils.deconv_output_length."""
    k_eff = (k - 1) * d + 1
    if output_padding is None:
        if padding == "valid":
            return n * s + max(k_eff - s, 0)
        if padding == "same":
            return n * s
        raise Unsupported(f"padding {padding!r} is not supported")
    pad = {"same": k_eff // 2, "valid": 0}.get(padding, 0)
    return (n - 1) * s + k_eff - 2 * pad + int(output_padding)


@layer("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Deconvolution2D")
def conv_transpose(call: Call, xs: Arrays) -> np.ndarray:
    k = kernel(call)  # (*k, F, C)
    n = k.ndim - 2
    ksize, strides, dilation = spatial_params(call, n)
    padding = call.get("padding", "valid")
    out_pad = call.config.get("output_padding")
    out_pad = [None] * n if out_pad is None else as_tuple(out_pad, n)
    x = to_last(call, xs[0]).astype(np.float32, copy=False)
    b, sizes, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    f = k.shape[-2]
    # every input cell times every kernel cell: (B, *S, *k, F)
    mat = np.moveaxis(k, -1, 0).reshape(c, -1)
    contrib = (x.reshape(-1, c) @ mat).reshape(b, *sizes, *ksize, f)
    full = [
        (sz - 1) * s + (kk - 1) * d + 1
        for sz, kk, s, d in zip(sizes, ksize, strides, dilation, strict=True)
    ]
    lengths = [
        transposed_length(sz, kk, s, d, padding, op)
        for sz, kk, s, d, op in zip(sizes, ksize, strides, dilation, out_pad, strict=True)
    ]
    big = [max(fl, ln + _crop(fl, ln, padding)) for fl, ln in zip(full, lengths, strict=True)]
    y = np.zeros((b, *big, f), dtype=np.float32)
    for offset in np.ndindex(*ksize):
        index = (
            slice(None),
            *(
                slice(o * d, o * d + (sz - 1) * s + 1, s)
                for o, d, sz, s in zip(offset, dilation, sizes, strides, strict=True)
            ),
        )
        y[index] += contrib[(*((slice(None),) * (1 + n)), *offset)]
    crop = (
        slice(None),
        *(
            slice(_crop(fl, ln, padding), _crop(fl, ln, padding) + ln)
            for fl, ln in zip(full, lengths, strict=True)
        ),
    )
    y = y[crop]
    return from_last(call, activate(call, bias_add(call, y)))


def _crop(full: int, length: int, padding: str) -> int:
    """Cells dropped before the output: the forward conv's `same` padding before the input."""
    if padding != "same":
        return 0
    return max(full - length, 0) // 2
