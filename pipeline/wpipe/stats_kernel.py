"""Compiled passes of analysis.tensor_stats for large float32/float16 tensors (numba).

Why compiled: in numpy the statistics need about twenty passes of float64 temporaries and a
65536-bin bincount per chunk, ~0.4 GB/s per core. These kernels read the tensor three times
(moments with min/max and counts; the fine histogram; the percentile gather), each value
converted to float64 in registers, at well over 1 GB/s per core. numba installs from wheels
wherever wpipe does; when it cannot be imported, analysis.py's numpy path (the reference
the tests compare these kernels with) is used instead.

Same numbers as the numpy path: moments are float64 central moments of blocks of BLOCK values
(two passes over a block while it sits in L1) merged with Pébay's formulas, as
analysis._Moments merges chunks; the fine-bin index is the same float64 expression as
analysis._fine_index, so histogram counts and percentiles are identical, and the moments
differ only by summation order (rounding).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.extending import overload

BLOCK = 4096  # values per block: 16 KiB of float32, in L1 for the block's second pass
# float16 -> float32 by table (exact; numba has no float16 type), indexed by the raw bits
_HALF_TABLE = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
# Running state of `moments`: count, mean, M2, M3, M4, l1, zeros, near, min, max.
STATE = 10


def new_state() -> np.ndarray:
    state = np.zeros(STATE)
    state[8], state[9] = np.inf, -np.inf
    return state


def moments(flat: np.ndarray, near: float) -> np.ndarray:
    """The STATE vector of a 1-D float32/float16 array (its sum is NaN or ±inf iff it holds a
    non-finite value: a float32 sum cannot overflow float64)."""
    state = new_state()
    _moments(_raw(flat), near, state, _HALF_TABLE)
    return state


def fine_counts(flat: np.ndarray, lo: float, scale: float, fine: int) -> np.ndarray:
    """Counts of the `fine` equal bins from `lo` (analysis._fine_index's rule)."""
    counts = np.zeros(fine, dtype=np.int64)
    _fine_counts(_raw(flat), lo, scale, float(fine - 1), counts, _HALF_TABLE)
    return counts


def gather(flat: np.ndarray, lo: float, scale: float, wanted: np.ndarray, total: int):
    """The values (float64, in array order) whose fine bin is marked in `wanted`."""
    out = np.empty(total)
    filled = _gather(_raw(flat), lo, scale, float(wanted.size - 1), wanted, out, 0, _HALF_TABLE)
    return out[:filled]


def _raw(flat: np.ndarray) -> np.ndarray:
    """float32 as it is; float16 as its bits, widened by table a block at a time (_block)."""
    return flat if flat.dtype == np.float32 else flat.view(np.uint16)


# --- kernels ----------------------------------------------------------------------------------
# reassoc lets LLVM vectorise the float64 sums (the order of a block's sum changes, as
# numpy's pairwise order differs from a sequential one); no nnan/ninf: only finite data
# is summed, but nothing here may assume it.
_FAST = {"reassoc", "nsz"}
_jit = nb.njit(cache=True, nogil=True)
_jit_fast = nb.njit(cache=True, nogil=True, fastmath=_FAST)


@_jit_fast
def _block_sums(x, near):
    s = a = 0.0
    zeros = nears = 0
    lo = hi = x[0]
    for i in range(x.size):
        v = np.float64(x[i])
        av = abs(v)
        s += v
        a += av
        zeros += av == 0.0
        nears += av < near
        lo = min(lo, x[i])
        hi = max(hi, x[i])
    return s, a, zeros, nears, lo, hi


@_jit_fast
def _block_central(x, mean):
    m2 = m3 = m4 = 0.0
    for i in range(x.size):
        d = np.float64(x[i]) - mean
        d2 = d * d
        m2 += d2
        m3 += d2 * d
        m4 += d2 * d2
    return m2, m3, m4


@_jit
def _moments(x, near, state, table):
    buf = np.empty(BLOCK, dtype=np.float32)
    na, mean, big2, big3, big4 = state[0], state[1], state[2], state[3], state[4]
    for start in range(0, x.size, BLOCK):
        xb = _block(x, start, table, buf)
        nb_ = float(xb.size)
        s, a, zeros, nears, lo, hi = _block_sums(xb, near)
        state[5] += a
        state[6] += zeros
        state[7] += nears
        state[8] = min(state[8], lo)
        state[9] = max(state[9], hi)
        mb = s / nb_
        m2, m3, m4 = _block_central(xb, mb)
        # Pébay (2008), as analysis._Moments.merge
        total = na + nb_
        delta = mb - mean
        d_n = delta / total
        big4 += (
            m4
            + delta * d_n**3 * na * nb_ * (na * na - na * nb_ + nb_ * nb_)
            + 6 * d_n**2 * (na * na * m2 + nb_ * nb_ * big2)
            + 4 * d_n * (na * m3 - nb_ * big3)
        )
        big3 += m3 + delta * d_n**2 * na * nb_ * (na - nb_) + 3 * d_n * (na * m2 - nb_ * big2)
        big2 += m2 + delta * d_n * na * nb_
        mean += d_n * nb_
        na = total
    state[0], state[1], state[2], state[3], state[4] = na, mean, big2, big3, big4


@_jit
def _block_index(x, lo, scale, top, idx):
    for i in range(x.size):
        idx[i] = np.uint16(min((np.float64(x[i]) - lo) * scale, top))


@_jit
def _fine_counts(x, lo, scale, top, counts, table):
    buf = np.empty(BLOCK, dtype=np.float32)
    idx = np.empty(BLOCK, dtype=np.uint16)
    for start in range(0, x.size, BLOCK):
        xb = _block(x, start, table, buf)
        ib = idx[: xb.size]
        _block_index(xb, lo, scale, top, ib)
        for i in range(ib.size):
            counts[ib[i]] += 1


@_jit
def _gather(x, lo, scale, top, wanted, out, filled, table):
    buf = np.empty(BLOCK, dtype=np.float32)
    idx = np.empty(BLOCK, dtype=np.uint16)
    for start in range(0, x.size, BLOCK):
        xb = _block(x, start, table, buf)
        ib = idx[: xb.size]
        _block_index(xb, lo, scale, top, ib)
        for i in range(ib.size):
            if wanted[ib[i]]:
                out[filled] = xb[i]
                filled += 1
    return filled


def _block(x, start, table, buf):
    """Values start..start+BLOCK as float32: a view of float32 data, float16 bits widened."""


@overload(_block, jit_options={"cache": True})
def _block_typed(x, start, table, buf):
    if x.dtype == nb.types.uint16:

        def widen(x, start, table, buf):
            bits = x[start : start + BLOCK]
            for i in range(bits.size):
                buf[i] = table[bits[i]]
            return buf[: bits.size]

        return widen
    return lambda x, start, table, buf: x[start : start + BLOCK]
