"""analyse stage: pure functions from a weight array to statistics and a histogram.

Definitions (docs/statistics.md): every statistic is computed in float64 over the finite
elements; NaN and ±inf are only counted. std is the population std, skew and kurtosis are the
biased Fisher-Pearson g1 and excess g2 (scipy.stats defaults), percentiles interpolate linearly
between order statistics (numpy.percentile's default), histogram bins are numpy.histogram's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
PERCENTILE_COLUMNS = tuple(f"p{q:02d}" for q in PERCENTILES)
FINE_BINS = 65536  # fits uint16 indices; each histogram bin is a whole number of fine bins
CHUNK = 1 << 18  # elements per pass: float64 scratch of 2 MiB stays in cache
# Tensors from this many values use the compiled kernels (auto): their 3 passes beat numpy's
# ~20 by ~4x, which outweighs numba's one-off start-up (~0.5 s per process) on big models.
COMPILED_MIN = 1 << 22
SORT_MAX = 1 << 12  # percentiles of tensors up to this size: one sort of all values


@dataclass(frozen=True)
class StatsOptions:
    near_zero: float = 1e-3
    bins: int = 64


@dataclass
class Histogram:
    edges: np.ndarray  # bins + 1 edges
    counts: np.ndarray  # bins counts


@dataclass
class _Moments:
    """Running count, mean and central moment sums, merged chunk by chunk (Pébay 2008)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0

    def merge(self, n: int, mean: float, m2: float, m3: float, m4: float) -> None:
        na, nb = self.n, n
        total = na + nb
        delta = mean - self.mean
        d_n = delta / total
        self.m4 += (
            m4
            + delta * d_n**3 * na * nb * (na * na - na * nb + nb * nb)
            + 6 * d_n**2 * (na * na * m2 + nb * nb * self.m2)
            + 4 * d_n * (na * m3 - nb * self.m3)
        )
        self.m3 += m3 + delta * d_n**2 * na * nb * (na - nb) + 3 * d_n * (na * m2 - nb * self.m2)
        self.m2 += m2 + delta * d_n * na * nb
        self.mean += d_n * nb
        self.n = total


def _empty_stats(size: int, nan_count: int, inf_count: int, near_zero: float) -> dict:
    stats: dict = dict.fromkeys(
        ("mean", "std", "min", "max", "abs_mean", "l1", "l2", "max_abs", "near_zero_frac",
         "skew", "kurtosis", *PERCENTILE_COLUMNS),
    )  # fmt: skip
    stats.update(size=size, zero_count=0, nan_count=nan_count, inf_count=inf_count)
    stats["near_zero_threshold"] = near_zero
    return stats


def tensor_stats(
    values: np.ndarray, options: StatsOptions, *, kernel: str = "auto"
) -> tuple[dict, Histogram | None]:
    """Distribution statistics of a tensor and its histogram (None when nothing is finite).

    `kernel`: "numpy" (the reference), "compiled" (wpipe.stats_kernel, numba) or "auto": the
    compiled passes for float32/float16 tensors of COMPILED_MIN values or more when numba is
    installed (below that, numpy is as fast and no process pays numba's start-up)."""
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype.kind not in "f":
        flat = flat.astype(np.float64)
    compiled = (
        None if kernel == "auto" and flat.size < COMPILED_MIN else _compiled_kernel(flat, kernel)
    )
    if compiled is not None:
        return _stats_compiled(compiled, flat, options)
    size = flat.size
    nan_count = inf_count = 0
    if size:
        lo, hi = flat.min(), flat.max()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            nan_count, inf_count, flat = _finite(flat)
            if flat.size:
                lo, hi = flat.min(), flat.max()
    if flat.size == 0:
        return _empty_stats(size, nan_count, inf_count, options.near_zero), None
    grid = _Grid.of(float(lo), float(hi), flat.size, options.bins)

    moments = _Moments()
    l1 = 0.0
    zeros = near = 0
    fine_counts = np.zeros(grid.fine, dtype=np.int64)
    # Kept for the percentile gather: 2 bytes per element instead of a second binning pass.
    fine_index = np.empty(flat.size, dtype=np.uint16)
    buf = np.empty(min(CHUNK, flat.size), dtype=np.float64)
    sq = np.empty_like(buf)
    tmp = np.empty_like(buf)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start : start + CHUNK]
        n = chunk.size
        x, x2, t = buf[:n], sq[:n], tmp[:n]
        np.copyto(x, chunk, casting="unsafe")
        idx = fine_index[start : start + n]
        _fine_index(x, grid.edge_lo, grid.scale, grid.fine, x2, idx)
        fine_counts += np.bincount(idx, minlength=grid.fine)
        np.abs(x, out=x2)
        l1 += float(x2.sum())
        near += int(np.count_nonzero(x2 < options.near_zero))
        zeros += int(np.count_nonzero(x2 == 0.0))
        mean = float(x.sum()) / n
        x -= mean
        np.multiply(x, x, out=x2)
        # ufuncs, not np.dot: BLAS threads cost milliseconds per call on a busy machine.
        m3 = float(np.multiply(x2, x, out=t).sum())
        m4 = float(np.multiply(x2, x2, out=t).sum())
        moments.merge(n, mean, float(x2.sum()), m3, m4)

    def gather(wanted: np.ndarray | None, _total: int) -> np.ndarray:
        if wanted is None:
            return flat.astype(np.float64)
        parts = [
            flat[start : start + CHUNK][wanted[fine_index[start : start + CHUNK]]]
            for start in range(0, flat.size, CHUNK)
        ]
        return np.concatenate(parts).astype(np.float64)

    stats = _empty_stats(size, nan_count, inf_count, options.near_zero)
    stats.update(_moment_columns(moments, l1, zeros, near, grid))
    stats.update(zip(PERCENTILE_COLUMNS, _percentiles(flat.size, fine_counts, gather), strict=True))
    return stats, grid.histogram(fine_counts, options.bins)


def _finite(flat: np.ndarray) -> tuple[int, int, np.ndarray]:
    """NaN count, ±inf count and the finite values of a tensor holding non-finite ones."""
    nan_count = int(np.count_nonzero(np.isnan(flat)))
    inf_count = int(np.count_nonzero(np.isinf(flat)))
    return nan_count, inf_count, flat[np.isfinite(flat)]


@dataclass(slots=True)
class _Grid:
    """The fine bins: `fine` equal bins over the histogram's range, each histogram bin a whole
    number of them, so that fine counts add up to numpy.histogram's counts."""

    lo: float
    hi: float
    edge_lo: float
    edge_hi: float
    fine: int
    scale: float

    @classmethod
    def of(cls, lo: float, hi: float, n: int, bins: int) -> _Grid:
        if lo == hi:  # numpy.histogram widens a degenerate range the same way
            edge_lo, edge_hi = lo - 0.5, hi + 0.5
        else:
            edge_lo, edge_hi = lo, hi
        # Fine bins per histogram bin: enough that the percentile gather touches few values,
        # few enough that a tiny tensor does not pay for 65536 empty bins.
        per_bin = min(FINE_BINS // bins, 1 << max(0, math.ceil(math.log2(n / bins))))
        fine = bins * max(per_bin, 1)
        return cls(lo, hi, edge_lo, edge_hi, fine, fine / (edge_hi - edge_lo))

    def histogram(self, fine_counts: np.ndarray, bins: int) -> Histogram:
        counts = fine_counts.reshape(bins, -1).sum(axis=1)
        return Histogram(np.linspace(self.edge_lo, self.edge_hi, bins + 1), counts)


def _moment_columns(moments: _Moments, l1: float, zeros: int, near: int, grid: _Grid) -> dict:
    n = moments.n
    m2, m3, m4 = moments.m2 / n, moments.m3 / n, moments.m4 / n
    lo, hi = grid.lo, grid.hi
    constant = m2 <= 0.0 or lo == hi
    return dict(
        mean=moments.mean,
        std=0.0 if constant else math.sqrt(m2),
        min=lo,
        max=hi,
        abs_mean=l1 / n,
        l1=l1,
        l2=math.sqrt(moments.m2 + n * moments.mean**2),
        max_abs=max(abs(lo), abs(hi)),
        zero_count=zeros,
        near_zero_frac=near / n,
        skew=None if constant else m3 / m2**1.5,
        kurtosis=None if constant else m4 / m2**2 - 3.0,
    )


def _compiled_kernel(flat: np.ndarray, kernel: str):
    """wpipe.stats_kernel when it is to be used for this tensor, else None."""
    if kernel == "numpy" or flat.dtype not in (np.float32, np.float16):
        if kernel == "compiled" and flat.dtype not in (np.float32, np.float16):
            raise ValueError(f"the compiled statistics take float32/float16, not {flat.dtype}")
        return None
    if kernel == "auto" and flat.size < COMPILED_MIN:
        return None
    try:
        from wpipe import stats_kernel
    except ImportError:  # numba not installed: the numpy path computes the same numbers
        if kernel == "compiled":
            raise
        return None
    return stats_kernel


def _stats_compiled(
    kernel, flat: np.ndarray, options: StatsOptions
) -> tuple[dict, Histogram | None]:
    size = flat.size
    nan_count = inf_count = 0
    state = kernel.moments(flat, options.near_zero) if size else None
    if state is not None and not math.isfinite(state[1]):
        nan_count, inf_count, flat = _finite(flat)
        state = kernel.moments(flat, options.near_zero) if flat.size else None
    if state is None:
        return _empty_stats(size, nan_count, inf_count, options.near_zero), None
    n, mean, m2, m3, m4, l1, zeros, near, lo, hi = state.tolist()
    grid = _Grid.of(lo, hi, flat.size, options.bins)
    fine_counts = kernel.fine_counts(flat, grid.edge_lo, grid.scale, grid.fine)

    def gather(wanted: np.ndarray | None, total: int) -> np.ndarray:
        if wanted is None:
            return flat.astype(np.float64)
        return kernel.gather(flat, grid.edge_lo, grid.scale, wanted, total)

    stats = _empty_stats(size, nan_count, inf_count, options.near_zero)
    moments = _Moments(int(n), mean, m2, m3, m4)
    stats.update(_moment_columns(moments, l1, int(zeros), int(near), grid))
    stats.update(zip(PERCENTILE_COLUMNS, _percentiles(flat.size, fine_counts, gather), strict=True))
    return stats, grid.histogram(fine_counts, options.bins)


def _fine_index(
    x: np.ndarray, lo: float, scale: float, fine: int, scratch: np.ndarray, out: np.ndarray
) -> None:
    """Monotone bin index of each value among `fine` equal bins (the last bin is closed)."""
    np.subtract(x, lo, out=scratch)
    scratch *= scale
    np.minimum(scratch, fine - 1, out=scratch)
    np.copyto(out, scratch, casting="unsafe")


def _percentiles(n: int, fine_counts: np.ndarray, gather) -> list:
    """Exact percentiles (numpy's linear rule) without sorting: the fine histogram says which
    bins hold the wanted order statistics, and only those bins' values are gathered (by
    `gather(wanted_mask, how_many)`) and sorted. A small tensor is sorted whole
    (`gather(None, n)`): the same order statistics, for less than the bin bookkeeping costs."""
    positions = [(n - 1) * q / 100 for q in PERCENTILES]
    if n <= SORT_MAX:
        ordered = np.sort(gather(None, n))
        return _interpolate(positions, n, lambda rank: float(ordered[rank]))
    ranks = sorted({r for h in positions for r in (math.floor(h), min(math.floor(h) + 1, n - 1))})
    cum = np.cumsum(fine_counts)
    rank_bins = np.searchsorted(cum, ranks, side="right")
    wanted = np.zeros(fine_counts.size, dtype=bool)
    wanted[rank_bins] = True
    wanted_bins = np.flatnonzero(wanted)
    gathered = np.sort(gather(wanted, int(fine_counts[wanted_bins].sum())))
    # Values of the wanted bins sit in `gathered` in bin order (the index is monotone).
    starts = np.concatenate(([0], np.cumsum(fine_counts[wanted_bins])[:-1]))
    before = cum[wanted_bins] - fine_counts[wanted_bins]
    order = {}
    for rank, b in zip(ranks, rank_bins, strict=True):
        j = int(np.searchsorted(wanted_bins, b))
        order[rank] = float(gathered[starts[j] + rank - before[j]])
    return _interpolate(positions, n, order.__getitem__)


def _interpolate(positions: list, n: int, value_at) -> list:
    """numpy.percentile's linear rule from the order statistics `value_at(rank)`."""
    out = []
    for h in positions:
        k = math.floor(h)
        a, b = value_at(k), value_at(min(k + 1, n - 1))
        out.append(a + (h - k) * (b - a))
    return out


def sample_indices(size: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct flat indices drawn uniformly (all of them when n >= size), ascending."""
    if n >= size:
        return np.arange(size, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(size, size=n, replace=False)).astype(np.int64)
