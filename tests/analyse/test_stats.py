"""tensor_stats against numpy and scipy computed independently on the same arrays."""

import numpy as np
import pytest
from scipy import stats as sps
from wpipe.analyse.stats import (
    CHUNK,
    COMPILED_MIN,
    COUNTS_MIN,
    PERCENTILE_COLUMNS,
    PERCENTILES,
    StatsOptions,
    _value_counts,
    sample_indices,
    tensor_stats,
)
from wpipe.analyse.stats_kernel import BLOCK

RNG = np.random.default_rng(7)
ARRAYS = {
    "small-normal": RNG.normal(size=(7, 5)).astype(np.float32),
    # more than one chunk, heavy tails: exercises moment merging and the percentile gather
    "multi-chunk-t": RNG.standard_t(3, size=3 * CHUNK + 11).astype(np.float32),
    "float16": RNG.normal(size=(33, 9)).astype(np.float16),
    "float64-offset": 1e4 + RNG.normal(size=5000),
    "ints": np.arange(-20, 21, dtype=np.int64),
    "with-zeros": np.where(RNG.random(1000) < 0.3, 0.0, RNG.normal(size=1000)).astype(np.float32),
}


def reference(a: np.ndarray, near_zero: float) -> dict:
    f = a.astype(np.float64).ravel()
    return {
        "mean": f.mean(),
        "std": f.std(),
        "min": f.min(),
        "max": f.max(),
        "abs_mean": np.abs(f).mean(),
        "l1": np.abs(f).sum(),
        "l2": np.linalg.norm(f),
        "max_abs": np.abs(f).max(),
        "zero_count": int((f == 0).sum()),
        "near_zero_frac": float((np.abs(f) < near_zero).mean()),
        "skew": sps.skew(f),
        "kurtosis": sps.kurtosis(f),
        **{f"p{q:02d}": np.percentile(f, q) for q in PERCENTILES},
    }


@pytest.mark.parametrize("name", ARRAYS)
def test_statistics_match_numpy_and_scipy(name):
    a = ARRAYS[name]
    options = StatsOptions(near_zero=0.05, bins=64)
    stats, hist = tensor_stats(a, options)
    for key, expected in reference(a, options.near_zero).items():
        assert stats[key] == pytest.approx(expected, rel=1e-9, abs=1e-12), key
    assert stats["size"] == a.size
    assert stats["nan_count"] == stats["inf_count"] == 0
    counts, edges = np.histogram(a.astype(np.float64), bins=64)
    np.testing.assert_array_equal(hist.counts, counts)
    np.testing.assert_allclose(hist.edges, edges, rtol=1e-12)


def test_nonfinite_values_are_counted_and_excluded():
    a = np.array([np.nan, 1.0, -np.inf, 2.0, np.inf, 4.0, 0.0], dtype=np.float32)
    stats, hist = tensor_stats(a, StatsOptions())
    assert (stats["nan_count"], stats["inf_count"], stats["size"]) == (1, 2, 7)
    finite = np.array([1.0, 2.0, 4.0, 0.0])
    assert stats["mean"] == pytest.approx(finite.mean())
    assert stats["p50"] == pytest.approx(np.median(finite))
    assert stats["zero_count"] == 1
    assert hist.counts.sum() == 4


def test_constant_tensor_has_zero_std_and_no_shape_moments():
    stats, hist = tensor_stats(np.full((3, 4), 2.5, dtype=np.float32), StatsOptions())
    assert stats["std"] == 0.0
    assert stats["skew"] is None and stats["kurtosis"] is None
    assert stats["p01"] == stats["p99"] == 2.5
    counts, edges = np.histogram(np.full(12, 2.5), bins=64)  # numpy widens to [2.0, 3.0]
    np.testing.assert_array_equal(hist.counts, counts)
    np.testing.assert_allclose(hist.edges, edges)


def test_all_nan_and_empty_tensors_have_no_statistics():
    for a in (np.full(3, np.nan, dtype=np.float32), np.zeros((0, 4), dtype=np.float32)):
        stats, hist = tensor_stats(a, StatsOptions())
        assert hist is None
        assert stats["mean"] is None and stats["p50"] is None
        assert stats["size"] == a.size


@pytest.mark.parametrize("bins", [1, 10, 64, 100])
def test_histogram_bin_count_is_configurable(bins):
    a = RNG.normal(size=10_000)
    _, hist = tensor_stats(a, StatsOptions(bins=bins))
    counts, _ = np.histogram(a, bins=bins)
    np.testing.assert_array_equal(hist.counts, counts)


def test_sample_indices_are_distinct_sorted_and_reproducible():
    first = sample_indices(1000, 50, seed=3)
    assert len(set(first.tolist())) == 50 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(first, sample_indices(1000, 50, seed=3))
    np.testing.assert_array_equal(sample_indices(10, 50, seed=3), np.arange(10))


# ------------------------------------------------------- compiled kernels against the numpy path

EXACT = ("size", "nan_count", "inf_count", "zero_count", "near_zero_frac", "min", "max",
         "max_abs", *PERCENTILE_COLUMNS)  # fmt: skip


def bfloat16_values(a: np.ndarray) -> np.ndarray:
    """float32 values that are exactly bfloat16 (what the reader widens a bfloat16 tensor to)."""
    bits = a.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def kernel_cases() -> dict:
    rng = np.random.default_rng(11)
    n = 3 * BLOCK + 17  # several kernel blocks and a ragged last one
    with_nonfinite = rng.normal(size=n).astype(np.float32)
    with_nonfinite[rng.integers(0, n, 40)] = np.nan
    with_nonfinite[rng.integers(0, n, 9)] = np.inf
    with_nonfinite[rng.integers(0, n, 5)] = -np.inf
    huge = rng.normal(size=n) * 10.0 ** rng.integers(-38, 38, n)
    return {
        "random": rng.standard_t(3, size=n).astype(np.float32),
        "offset": (1e4 + rng.normal(size=n)).astype(np.float32),
        "constant": np.full(n, -0.75, dtype=np.float32),
        "nan-inf": with_nonfinite,
        "all-nan": np.full(50, np.nan, dtype=np.float32),
        "tiny": np.array([3.25], dtype=np.float32),
        "two": np.array([1.0, -2.0], dtype=np.float32),
        "empty": np.zeros(0, dtype=np.float32),
        "huge-range": huge.astype(np.float32),
        "denormals": (rng.normal(size=n) * 1e-42).astype(np.float32),
        "zeros-and-near": np.where(rng.random(n) < 0.4, 0.0, rng.normal(size=n) * 1e-3).astype(
            np.float32
        ),
        "float16": rng.normal(size=n).astype(np.float16),
        "float16-nan-subnormal": np.concatenate(
            [rng.normal(size=n).astype(np.float16), np.array([np.nan, 6e-8, -6e-8, 0], np.float16)]
        ),
        "bfloat16": bfloat16_values(rng.normal(size=n)),
        # 16-bit-valued float32 but for the last value: counted, then passed to the 3 passes
        "bfloat16-but-one": np.append(bfloat16_values(rng.normal(size=n)), np.float32(0.1)),
        "bfloat16-nan-inf": bfloat16_values(with_nonfinite),
        "constant-not-16-bit": np.full(n, 0.1, dtype=np.float32),
        "float16-inf-huge": np.concatenate(
            [(rng.normal(size=n) * 1e4).astype(np.float16), np.array([np.inf, -65504], np.float16)]
        ),
    }


KERNEL_CASES = kernel_cases()


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_compiled_statistics_equal_the_numpy_path(name):
    assert_same_statistics(KERNEL_CASES[name], "compiled")


def counted_cases() -> dict:
    rng = np.random.default_rng(12)
    n = CHUNK + 5000  # two chunks of the numpy count
    late = bfloat16_values(rng.normal(size=n))
    late[-3] = np.float32(0.1)  # not 16-bit, found in the second chunk
    half = (rng.normal(size=n) * 300).astype(np.float16)
    half[rng.integers(0, n, 30)] = np.nan
    half[rng.integers(0, n, 7)] = -np.inf
    return {
        "float16-nan-inf": half,
        "bfloat16": bfloat16_values(rng.standard_t(3, size=n)),
        "bfloat16-but-one-late": late,
        "zeros": np.zeros(n, dtype=np.float32),
        "float32": rng.normal(size=n).astype(np.float32),
    }


COUNTED_CASES = counted_cases()


@pytest.mark.parametrize("name", COUNTED_CASES)
def test_counted_16_bit_statistics_equal_the_numpy_path(name):
    # COUNTS_MIN <= size < COMPILED_MIN: `auto` counts 16-bit values with numpy
    a = COUNTED_CASES[name]
    assert COUNTS_MIN <= a.size < COMPILED_MIN
    assert_same_statistics(a, "auto")


def test_numpy_value_counts_equal_the_compiled_ones():
    from wpipe.analyse.stats_kernel import value_counts

    for name, a in COUNTED_CASES.items():
        expected = value_counts(a)
        got = _value_counts(a)
        assert (got is None) == (expected is None), name
        if got is not None:
            np.testing.assert_array_equal(got, expected)


def assert_same_statistics(a: np.ndarray, kernel: str) -> None:
    options = StatsOptions(near_zero=0.01, bins=64)
    ref, ref_hist = tensor_stats(a, options, kernel="numpy")
    fast, fast_hist = tensor_stats(a, options, kernel=kernel)
    assert fast.keys() == ref.keys()
    for key in EXACT:
        assert fast[key] == ref[key], key
    # moments: the same float64 definitions, summed in another order (rounding only)
    for key, rel, abs_ in (("mean", 1e-12, 1e-15 * (ref["max_abs"] or 0)), ("std", 1e-12, 0),
                           ("abs_mean", 1e-12, 0), ("l1", 1e-12, 0), ("l2", 1e-12, 0),
                           ("skew", 1e-9, 1e-9), ("kurtosis", 1e-9, 1e-9)):  # fmt: skip
        assert (fast[key] is None) == (ref[key] is None), key
        if ref[key] is not None:
            assert fast[key] == pytest.approx(ref[key], rel=rel, abs=abs_), key
    if ref_hist is None:
        assert fast_hist is None
    else:
        np.testing.assert_array_equal(fast_hist.counts, ref_hist.counts)
        np.testing.assert_array_equal(fast_hist.edges, ref_hist.edges)


def test_value_counts_take_16_bit_values_only():
    from wpipe.analyse.stats_kernel import value_counts

    cases = KERNEL_CASES
    for name in ("float16", "bfloat16", "bfloat16-nan-inf"):
        a = cases[name]
        counts = value_counts(a)
        bits = a.view(np.uint16) if a.dtype == np.float16 else a.view(np.uint32) >> 16
        np.testing.assert_array_equal(counts, np.bincount(bits, minlength=1 << 16))
    for name in ("random", "bfloat16-but-one", "constant-not-16-bit"):
        assert value_counts(cases[name]) is None, name


POLICY = """
import sys
import numpy as np
from wpipe.analyse import stats as analysis
analysis.RENT_VALUES = 2 * analysis.COMPILED_MIN
a = np.random.default_rng(0).normal(size=analysis.COMPILED_MIN).astype(np.float32)
seen = []
for size in (analysis.COMPILED_MIN - 1, analysis.COMPILED_MIN, analysis.COMPILED_MIN,
             analysis.COMPILED_MIN, 1000):
    analysis.tensor_stats(a[:size], analysis.StatsOptions())
    seen.append("numba" in sys.modules)
print(seen)
"""


def test_a_process_uses_numba_only_after_renting_enough_big_tensors():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", POLICY], capture_output=True, text=True,
                          check=True)  # fmt: skip
    # small: numpy; two big ones on numpy (the rent); from the third big one, compiled
    assert done.stdout.strip() == "[False, False, False, True, True]"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_compiled_statistics_match_numpy_on_a_large_tensor(dtype):
    # Past COMPILED_MIN the default path is the compiled one once this process has imported
    # the kernels (this module did); checked against numpy directly.
    a = np.random.default_rng(5).standard_t(4, size=COMPILED_MIN + 1001).astype(dtype)
    options = StatsOptions(near_zero=0.05, bins=64)
    stats, hist = tensor_stats(a, options)
    f = a.astype(np.float64)
    d = f - f.mean()
    m2, m3, m4 = (d**2).mean(), (d**3).mean(), (d**4).mean()
    expected = {
        "mean": f.mean(), "std": np.sqrt(m2), "min": f.min(), "max": f.max(),
        "l1": np.abs(f).sum(), "l2": np.sqrt((f * f).sum()),
        "near_zero_frac": float((np.abs(f) < options.near_zero).mean()),
        "skew": m3 / m2**1.5, "kurtosis": m4 / m2**2 - 3.0,
        **dict(zip(PERCENTILE_COLUMNS, np.percentile(f, PERCENTILES), strict=True)),
    }  # fmt: skip
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    counts, _ = np.histogram(f, bins=64)
    np.testing.assert_array_equal(hist.counts, counts)


def test_compiled_statistics_refuse_other_dtypes():
    with pytest.raises(ValueError, match="float32/float16"):
        tensor_stats(np.arange(5.0), StatsOptions(), kernel="compiled")


@pytest.mark.parametrize("spread_size", [COUNTS_MIN, 500])  # binned; sorted whole
@pytest.mark.parametrize("kernel", ["numpy", "compiled", "auto"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_values_on_histogram_edges_fall_in_numpys_bins(kernel, dtype, spread_size):
    # values exactly on numpy's edges: with this range, (x - lo) * fine / (hi - lo) is
    # 16383.999999999998 at edge 16 (-12.7109375), which numpy.histogram puts in bin 16
    rng = np.random.default_rng(13)
    lo, hi = -63.90625, 140.875
    edges = np.linspace(lo, hi, 65)
    on_edges = edges[edges.astype(np.float16) == edges]
    assert -12.7109375 in on_edges
    spread = rng.uniform(lo, hi, spread_size)
    a = np.concatenate([np.repeat(on_edges, 50), spread]).astype(dtype)
    _, hist = tensor_stats(a, StatsOptions(bins=64), kernel=kernel)
    counts, edges = np.histogram(a.astype(np.float64), bins=64)
    np.testing.assert_array_equal(hist.edges, edges)
    np.testing.assert_array_equal(hist.counts, counts)
