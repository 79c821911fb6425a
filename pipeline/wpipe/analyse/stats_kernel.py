"""Compiled passes of analysis.tensor_stats for large float32/float16 tensors (numba).

Why compiled: in numpy the statistics need about twenty passes of float64 temporaries and a
65536-bin bincount per chunk, ~0.4 GB/s per core. numba installs from wheels wherever wpipe
does; when it cannot be imported, analysis.py's numpy path (the reference the tests compare
these kernels with) is used instead.

Two methods:

- 16-bit values (float16, and float32 tensors whose low 16 bits are all zero: a bfloat16
  tensor as the reader widens it, or values such as 0 and 0.5) have at most 65536 distinct
  values: one pass counts each bit pattern (`value_counts`), and analysis computes every
  statistic from those counts. A float32 tensor with a non-zero low half is told apart on its
  first values (the pass stops there).
- other float32 tensors: three passes (moments with min/max and counts; the fine histogram;
  the percentile gather), each value converted to float64 in registers. Same numbers as the
  numpy path: moments are float64 central moments of blocks of BLOCK values (two passes over
  a block while it sits in L1) merged with Pébay's formulas, as analysis._Moments merges
  chunks; the fine-bin index is the same float64 expression as analysis._fine_index, so
  histogram counts and percentiles are identical, and the moments differ only by summation
  order (rounding).

Start-up: numba's import and the loading of these kernels from its on-disk cache (`cache=True`:
next to this file, or the user's cache directory when that is not writable) cost ~1 s per
process, which is why analysis decides when a process starts using them.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

BLOCK = 4096  # values per block: 16 KiB of float32, in L1 for the block's second pass
# Running state of `moments`: count, mean, M2, M3, M4, l1, zeros, near, min, max.
STATE = 10


def new_state() -> np.ndarray:
    state = np.zeros(STATE)
    state[8], state[9] = np.inf, -np.inf
    return state


def value_counts(flat: np.ndarray) -> np.ndarray | None:
    """How often each 16-bit pattern occurs (65536 counts): a float16 array's bits, or the high
    halves of a float32 array whose low halves are all zero; None for another float32 array."""
    if flat.dtype == np.float16:
        return _half_counts(flat.view(np.uint16))
    counts = _high_counts(flat.view(np.uint32))
    return counts if counts.size else None


def moments(flat: np.ndarray, near: float) -> np.ndarray:
    """The STATE vector of a 1-D float32 array (its sum is NaN or ±inf iff it holds a
    non-finite value: a float32 sum cannot overflow float64)."""
    state = new_state()
    _moments(flat, near, state)
    return state


def fine_counts(flat: np.ndarray, grid) -> np.ndarray:
    """Counts of the fine bins of an analysis._Grid (analysis._fine_index's rule)."""
    counts = np.zeros(grid.fine, dtype=np.int64)
    _fine_counts(flat, *_index_args(grid), counts)
    return counts


def gather(flat: np.ndarray, grid, wanted: np.ndarray, total: int):
    """The values (float64, in array order) whose fine bin is marked in `wanted`."""
    out = np.empty(total)
    filled = _gather(flat, *_index_args(grid), wanted, out, 0)
    return out[:filled]


def _index_args(grid) -> tuple:
    # How far (in fine bins) rounding can move a value's index from the edges numpy compares
    # it with: the index's own rounding (3 ulps of `fine`) and the edges' (2 ulps of the
    # largest magnitude, times scale), with a 2^10 margin.
    extent = max(abs(grid.edge_lo), abs(grid.edge_hi))
    tol = 2.0**-42 * (grid.fine + grid.scale * extent)
    return grid.edge_lo, grid.scale, float(grid.fine - 1), grid.per_bin, grid.edges, tol


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
def _moments(x, near, state):
    na, mean, big2, big3, big4 = state[0], state[1], state[2], state[3], state[4]
    for start in range(0, x.size, BLOCK):
        xb = x[start : start + BLOCK]
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


@_jit_fast
def _block_index(x, lo, scale, top, per_bin, edges, tol, idx):
    # Values within `tol` fine bins of a histogram edge are counted (the loop vectorises);
    # only a block that has any is scanned again by _settle.
    near = 0
    step = 1.0 / per_bin
    for i in range(x.size):
        t = min((np.float64(x[i]) - lo) * scale, top)
        idx[i] = np.uint16(t)
        q = t * step
        near += abs(q - math.floor(q + 0.5)) * per_bin <= tol
    if near:
        _settle(x, per_bin, edges, idx)


@_jit
def _settle(x, per_bin, edges, idx):
    """As analysis._fine_index: a value in a histogram bin's first or last fine bin is put on
    the side of the edge where numpy.histogram has it (it compares with the edges)."""
    mask = per_bin - 1
    last = edges.size - 2
    for i in range(x.size):
        inner = idx[i] & mask
        if inner == 0 or inner == mask:
            v = np.float64(x[i])
            b = np.int64(idx[i]) // per_bin
            if b > 0 and v < edges[b]:
                idx[i] = np.uint16(b * per_bin - 1)
            elif b < last and v >= edges[b + 1]:
                idx[i] = np.uint16((b + 1) * per_bin)


@_jit
def _fine_counts(x, lo, scale, top, per_bin, edges, tol, counts):
    idx = np.empty(BLOCK, dtype=np.uint16)
    for start in range(0, x.size, BLOCK):
        xb = x[start : start + BLOCK]
        ib = idx[: xb.size]
        _block_index(xb, lo, scale, top, per_bin, edges, tol, ib)
        for i in range(ib.size):
            counts[ib[i]] += 1


@_jit
def _gather(x, lo, scale, top, per_bin, edges, tol, wanted, out, filled):
    idx = np.empty(BLOCK, dtype=np.uint16)
    for start in range(0, x.size, BLOCK):
        xb = x[start : start + BLOCK]
        ib = idx[: xb.size]
        _block_index(xb, lo, scale, top, per_bin, edges, tol, ib)
        for i in range(ib.size):
            if wanted[ib[i]]:
                out[filled] = xb[i]
                filled += 1
    return filled


@_jit
def _half_counts(bits):
    # four interleaved tables: runs of equal values do not wait on one counter
    counts = np.zeros((4, 1 << 16), dtype=np.int64)
    end = bits.size - bits.size % 4
    for i in range(0, end, 4):
        counts[0, bits[i]] += 1
        counts[1, bits[i + 1]] += 1
        counts[2, bits[i + 2]] += 1
        counts[3, bits[i + 3]] += 1
    for i in range(end, bits.size):
        counts[0, bits[i]] += 1
    return counts.sum(axis=0)


@_jit
def _high_counts(words):
    """_half_counts of the high halves; an empty array at the first non-zero low half."""
    counts = np.zeros((4, 1 << 16), dtype=np.int64)
    end = words.size - words.size % 4
    for i in range(0, end, 4):
        a, b, c, d = words[i], words[i + 1], words[i + 2], words[i + 3]
        if (a | b | c | d) & 0xFFFF:
            return counts[0, :0].copy()
        counts[0, a >> 16] += 1
        counts[1, b >> 16] += 1
        counts[2, c >> 16] += 1
        counts[3, d >> 16] += 1
    for i in range(end, words.size):
        if words[i] & 0xFFFF:
            return counts[0, :0].copy()
        counts[0, words[i] >> 16] += 1
    return counts.sum(axis=0)
