"""analyse stage: pure functions from a weight array to statistics and a histogram.

Definitions (docs/statistics.md): every statistic is computed in float64 over the finite
elements; NaN and ±inf are only counted. std is the population std, skew and kurtosis are the
biased Fisher-Pearson g1 and excess g2 (scipy.stats defaults), percentiles interpolate linearly
between order statistics (numpy.percentile's default), histogram bins are numpy.histogram's.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
PERCENTILE_COLUMNS = tuple(f"p{q:02d}" for q in PERCENTILES)
FINE_BINS = 65536  # fits uint16 indices; each histogram bin is a whole number of fine bins
CHUNK = 1 << 18  # elements per pass: float64 scratch of 2 MiB stays in cache
# Tensors from this many values may use the compiled kernels (auto): 4x (float32) to 15x
# (16-bit values) faster than numpy's ~20 passes; below it numpy is about as fast.
COMPILED_MIN = 1 << 22
# numba's start-up (import, kernels loaded from its cache) costs ~1 s per process, what the
# kernels save on ~1.3e8 values (~8 ns each). So a process "rents" first: its big tensors run
# on numpy until they add up to RENT_VALUES, and only then does it "buy" numba (ski rental:
# never more than twice the cost of the better choice made in hindsight). A one-model ingest
# then never pays the start-up; a worker ingesting many big models pays it once.
RENT_VALUES = 1 << 27
_RENTED = [0]  # values of big tensors this process has analysed on numpy so far
# From this size, 16-bit values (float16; float32 with zero low halves, e.g. bfloat16 as
# read) are counted by bit pattern (`_value_counts`) instead of binned and gathered.
COUNTS_MIN = 1 << 16
PROBE = 1024  # leading values whose low halves say whether a float32 tensor may be 16-bit
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

    `kernel`: "numpy" (the reference), "compiled" (wpipe.analyse.stats_kernel, numba) or "auto": the
    compiled kernels for float32/float16 tensors of COMPILED_MIN values or more when numba is
    installed, once this process has done RENT_VALUES such values on numpy (below that, no
    process pays numba's start-up)."""
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype.kind not in "f":
        flat = flat.astype(np.float64)
    compiled = _compiled_kernel(flat, kernel)
    if compiled is not None:
        return _stats_compiled(compiled, flat, options)
    counts = _value_counts(flat) if kernel == "auto" and flat.size >= COUNTS_MIN else None
    if counts is not None:
        return _stats_of_counts(_pattern_values(flat.dtype), counts, flat.size, options)
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
    # A small tensor is sorted whole (percentiles and histogram from the order: fewer calls
    # than the fine bins cost); a big one's fine index is kept for the percentile gather
    # (2 bytes per element instead of a second binning pass).
    small = flat.size <= SORT_MAX
    fine_counts = np.zeros(grid.fine, dtype=np.int64)
    fine_index = np.empty(0 if small else flat.size, dtype=np.uint16)
    buf = np.empty(min(CHUNK, flat.size), dtype=np.float64)
    sq = np.empty_like(buf)
    tmp = np.empty_like(buf)
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start : start + CHUNK]
        n = chunk.size
        x, x2, t = buf[:n], sq[:n], tmp[:n]
        np.copyto(x, chunk, casting="unsafe")
        if not small:
            idx = fine_index[start : start + n]
            _fine_index(x, grid, x2, idx)
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
    if small:
        ordered = np.sort(flat.astype(np.float64))
        positions = [(ordered.size - 1) * q / 100 for q in PERCENTILES]
        order_stat = lambda rank: float(ordered[rank])  # noqa: E731
        stats.update(zip(PERCENTILE_COLUMNS, _interpolate(positions, ordered.size, order_stat),
                         strict=True))  # fmt: skip
        return stats, grid.histogram_of_sorted(ordered)
    stats.update(zip(PERCENTILE_COLUMNS, _percentiles(flat.size, fine_counts, gather), strict=True))
    return stats, grid.histogram(fine_counts, options.bins)


def _finite(flat: np.ndarray) -> tuple[int, int, np.ndarray]:
    """NaN count, ±inf count and the finite values of a tensor holding non-finite ones."""
    nan_count = int(np.count_nonzero(np.isnan(flat)))
    inf_count = int(np.count_nonzero(np.isinf(flat)))
    return nan_count, inf_count, flat[np.isfinite(flat)]


@dataclass(slots=True)
class _Grid:
    """The fine bins: `fine` equal bins over the histogram's range, each histogram bin
    `per_bin` of them (a power of two), so that fine counts add up to numpy.histogram's."""

    lo: float
    hi: float
    edge_lo: float
    edge_hi: float
    fine: int
    scale: float
    per_bin: int
    edges: np.ndarray  # numpy.histogram's bin edges

    @classmethod
    def of(cls, lo: float, hi: float, n: int, bins: int) -> _Grid:
        if lo == hi:  # numpy.histogram widens a degenerate range the same way
            edge_lo, edge_hi = lo - 0.5, hi + 0.5
        else:
            edge_lo, edge_hi = lo, hi
        # Fine bins per histogram bin: enough that the percentile gather touches few values,
        # few enough that a tiny tensor does not pay for 65536 empty bins.
        most = 1 << max(0, (FINE_BINS // bins).bit_length() - 1)
        per_bin = max(1, min(most, 1 << max(0, math.ceil(math.log2(n / bins)))))
        fine = bins * per_bin
        edges = np.linspace(edge_lo, edge_hi, bins + 1)
        return cls(lo, hi, edge_lo, edge_hi, fine, fine / (edge_hi - edge_lo), per_bin, edges)

    def settle(self, x: np.ndarray, index: np.ndarray) -> np.ndarray:
        """`index` of values `x` moved to the first/last fine bin of the histogram bin that
        numpy.histogram gives them (edges[b] <= x < edges[b + 1], the last bin closed)."""
        bins = self.edges.size - 1
        b = (index // self.per_bin).astype(np.int64)
        below = (b > 0) & (x < self.edges[b])
        above = (b < bins - 1) & (x >= self.edges[np.minimum(b + 1, bins)])
        out = index.astype(np.int64)
        out[below] = b[below] * self.per_bin - 1
        out[above] = (b[above] + 1) * self.per_bin
        return out.astype(index.dtype)

    def histogram_of_sorted(self, ordered: np.ndarray) -> Histogram:
        """numpy.histogram of the ascending values `ordered` (edges[b] <= x < edges[b + 1],
        the last bin closed)."""
        starts = np.searchsorted(ordered, self.edges, side="left")
        starts[-1] = ordered.size
        return Histogram(self.edges, np.diff(starts))

    def histogram(self, fine_counts: np.ndarray, bins: int) -> Histogram:
        counts = fine_counts.reshape(bins, -1).sum(axis=1)
        return Histogram(self.edges, counts)


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
    """wpipe.analyse.stats_kernel when it is to be used for this tensor, else None."""
    if kernel == "numpy" or flat.dtype not in (np.float32, np.float16):
        if kernel == "compiled" and flat.dtype not in (np.float32, np.float16):
            raise ValueError(f"the compiled statistics take float32/float16, not {flat.dtype}")
        return None
    if kernel == "auto" and not _bought(flat.size):
        return None
    try:
        from wpipe.analyse import stats_kernel
    except ImportError:  # numba not installed: the numpy path computes the same numbers
        if kernel == "compiled":
            raise
        return None
    return stats_kernel


def _bought(size: int) -> bool:
    """Whether a tensor of `size` values runs on the compiled kernels (auto): see RENT_VALUES."""
    if size < COMPILED_MIN:
        return False
    if "wpipe.analyse.stats_kernel" in sys.modules or _RENTED[0] >= RENT_VALUES:
        return True
    _RENTED[0] += size
    return False


def _stats_compiled(
    kernel, flat: np.ndarray, options: StatsOptions
) -> tuple[dict, Histogram | None]:
    counts = kernel.value_counts(flat)
    if counts is not None:
        return _stats_of_counts(_pattern_values(flat.dtype), counts, flat.size, options)
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
    fine_counts = kernel.fine_counts(flat, grid)

    def gather(wanted: np.ndarray | None, total: int) -> np.ndarray:
        if wanted is None:
            return flat.astype(np.float64)
        return kernel.gather(flat, grid, wanted, total)

    stats = _empty_stats(size, nan_count, inf_count, options.near_zero)
    moments = _Moments(int(n), mean, m2, m3, m4)
    stats.update(_moment_columns(moments, l1, int(zeros), int(near), grid))
    stats.update(zip(PERCENTILE_COLUMNS, _percentiles(flat.size, fine_counts, gather), strict=True))
    return stats, grid.histogram(fine_counts, options.bins)


_PATTERNS: dict = {}


def _pattern_values(dtype: np.dtype) -> np.ndarray:
    """float64 value of each 16-bit pattern: float16 bits, or a float32's high half."""
    key = np.dtype(dtype).name
    if key not in _PATTERNS:
        bits = np.arange(1 << 16, dtype=np.uint32)
        if key == "float16":
            values = bits.astype(np.uint16).view(np.float16)
        else:
            values = (bits << 16).view(np.float32)
        with np.errstate(invalid="ignore"):  # signalling NaN patterns
            _PATTERNS[key] = values.astype(np.float64)
    return _PATTERNS[key]


def _value_counts(flat: np.ndarray) -> np.ndarray | None:
    """numpy's stats_kernel.value_counts (for processes without the compiled kernels): the
    bit patterns of 16-bit values counted a chunk at a time (~5x the reference's speed). A
    float32 tensor is taken when its first values have zero low halves, and given up (None)
    at the first chunk that has another."""
    if flat.dtype == np.float16:
        words, shift = flat.view(np.uint16), 0
    elif flat.dtype == np.float32 and not (flat[:PROBE].view(np.uint32) & 0xFFFF).any():
        words, shift = flat.view(np.uint32), 16
    else:
        return None
    counts = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, words.size, CHUNK):
        chunk = words[start : start + CHUNK]
        if shift:
            if (chunk & 0xFFFF).any():
                return None
            chunk = chunk >> shift
        counts += np.bincount(chunk, minlength=1 << 16)
    return counts


def _stats_of_counts(
    values: np.ndarray, counts: np.ndarray, size: int, options: StatsOptions
) -> tuple[dict, Histogram | None]:
    """The statistics of a tensor given as how often each of its distinct `values` occurs
    (stats_kernel.value_counts): the same definitions over at most 65536 weighted values.
    Order statistics, counts, min/max and histogram are exact as in the numpy path; the float64
    moments are two-pass sums over the distinct values (rounding differs, not the definition)."""
    nan_count = int(counts[np.isnan(values)].sum())
    inf_count = int(counts[np.isinf(values)].sum())
    keep = (counts > 0) & np.isfinite(values)
    if not keep.any():
        return _empty_stats(size, nan_count, inf_count, options.near_zero), None
    v, c = values[keep], counts[keep]
    order = np.argsort(v, kind="stable")
    v, c = v[order], c[order]
    w = c.astype(np.float64)
    n = int(c.sum())
    mean = float((w * v).sum()) / n
    d = v - mean
    d2 = d * d
    moments = _Moments(n, mean, float((w * d2).sum()), float((w * d2 * d).sum()),
                       float((w * d2 * d2).sum()))  # fmt: skip
    a = np.abs(v)
    grid = _Grid.of(float(v[0]), float(v[-1]), n, options.bins)
    idx = np.empty(v.size, dtype=np.uint16)
    _fine_index(v, grid, np.empty_like(v), idx)
    fine_counts = np.bincount(idx, weights=w, minlength=grid.fine).astype(np.int64)
    cum = np.cumsum(c)
    stats = _empty_stats(size, nan_count, inf_count, options.near_zero)
    stats.update(_moment_columns(moments, float((w * a).sum()), int(c[a == 0.0].sum()),
                                 int(c[a < options.near_zero].sum()), grid))  # fmt: skip
    positions = [(n - 1) * q / 100 for q in PERCENTILES]
    value_at = lambda rank: float(v[np.searchsorted(cum, rank, side="right")])  # noqa: E731
    stats.update(zip(PERCENTILE_COLUMNS, _interpolate(positions, n, value_at), strict=True))
    return stats, grid.histogram(fine_counts, options.bins)


def _fine_index(x: np.ndarray, grid: _Grid, scratch: np.ndarray, out: np.ndarray) -> None:
    """Monotone bin index of each value among the grid's fine bins (the last bin is closed),
    each value on the side of a histogram edge where numpy.histogram puts it."""
    np.subtract(x, grid.edge_lo, out=scratch)
    scratch *= grid.scale
    np.minimum(scratch, grid.fine - 1, out=scratch)
    np.copyto(out, scratch, casting="unsafe")
    # Rounding can put a value within a fine bin of a histogram edge on the other side of it
    # (numpy compares with the edges themselves): only the first and last fine bin of a
    # histogram bin can hold such a value.
    mask = grid.per_bin - 1
    inner = out & mask
    suspect = np.flatnonzero((inner == 0) | (inner == mask))
    if suspect.size:
        out[suspect] = grid.settle(x[suspect], out[suspect])


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
