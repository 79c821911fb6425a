"""analyse stage: the empirical spectral density (ESD) of a weight tensor's matrices and
WeightWatcher-compatible metrics of it (docs: spectral).

Pure functions of (layer class, layer config, weight name, role, layout, array); they know
nothing of files, caches or storage. `plan` says which matrices a tensor holds (or why it has
none), `analyse` computes one matrix's eigenvalues and metrics, `tensor_spectra` does both.

Definitions follow WeightWatcher's `analyze()` defaults (weightwatcher.py, WW_powerlaw.py,
RMT_Util.py): eigenvalues are squared singular values of W without 1/N scaling; a convolution
kernel is cut into one in×out matrix per kernel position, pooled into one ESD and scaled by
1/√2 (eigenvalues × 1/2); the power law is the continuous MLE at every candidate xmin, keeping
the xmin of least KS distance, over eigenvalues > 1e-5 (below 20 of them, WeightWatcher 0.7.7's
small-sample rule). bench/compare_weightwatcher.py checks the numbers against WeightWatcher.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from wpipe.analyse.anatomy import (
    CONV,
    CONV_TRANSPOSE,
    DENSE,
    DEPTHWISE,
    GATES,
    SEPARABLE,
    _wrapped,
)
from wpipe.analyse.eigen import SOLVER_WORK, spectrum
from wpipe.readers.base import from_cudnn

# 2: float32 Gram where N >= 2M (wpipe.analyse.eigen); 3: there, a float32 solver from 256 columns
# with λmax refined in float64, and Σλ the float64 ‖W‖²_F
METHOD_VERSION = "wpipe-spectra/3"
EVALS_THRESH = 1e-5  # eigenvalues at or below this are not fitted (WeightWatcher EVALS_THRESH)
MIN_EVALS = 8  # fewer eigenvalues in an ESD: no power-law fit (WeightWatcher min_evals)
SMALL_N = 20  # fewer fitted eigenvalues: WeightWatcher's small-sample fit (WW_powerlaw.py)
SMALL_N_MIN_TAIL = 8  # the small-sample fit's shortest tail
ENTROPY_EPSILON = 1e-10  # added to each p and to the rank in the entropy (WeightWatcher EPSILON)
# --spectra auto: a matrix is analysed when its estimated cost (`cost_seconds`) is within
# AUTO_BUDGET seconds at AUTO_RATE multiply-adds per second (one core of the project's 2-core
# machine: float32 syrk ~4·10¹⁰/s; the float64 2-stage solver ~M³/(7·10⁻¹¹ s), i.e. 3.2 M³).
AUTO_BUDGET = 2.0
AUTO_RATE = 4e10
AUTO_SKIP = "skipped: above the auto budget; --spectra all analyses it"
# |w| beyond this (an exploded training run's weights) squares past float32 in a Gram matrix
# of a few thousand rows, and LAPACK then fails to converge: such a tensor is skipped
GRAM_LIMIT = 1e15
SETTLED_FIT = 1e3  # a fit whose xmin is within this × the eigenvalues' error bound is redone
CONV_RESCALE = 0.5  # eigenvalue factor of pooled convolution slices: W/√2 (WW conv2d_norm)
OVER_TRAINED_BELOW = 2.0
UNDER_TRAINED_ABOVE = 6.0
MODES = ("auto", "all", "none")
KS_BLOCK = 1 << 20  # candidate × eigenvalue cells per step of the KS-distance search
# Every KS_STRIDE-th eigenvalue gives the lower bounds of the KS distances: looser bounds than
# 16's, but 4x fewer cells to bound; the same fits, 2.4x less time on ResNet50's 54 ESDs (7x
# on 4,096 eigenvalues, 2.6x on 20,000).
KS_STRIDE = 64
KS_FIRST = 16  # candidates computed exactly in the first round (then twice as many each)


@dataclass(frozen=True)
class SpectraOptions:
    """How spectra are computed. `cache_dir` is for the ingest glue
    (wpipe.analyse.spectra_tables)."""

    mode: str = "auto"  # auto | all | none
    pool: bool = True  # one pooled ESD per convolution kernel (False: one per kernel position)
    conv_rescale: bool = True  # scale convolution eigenvalues as WeightWatcher (1/2 pooled)
    cache_dir: str | None = None

    @classmethod
    def parse(cls, mode: str) -> SpectraOptions:
        if mode not in MODES:
            raise ValueError(f"--spectra must be auto, all or none, not {mode!r}")
        return cls(mode)


@dataclass
class Planned:
    """One matrix (or pooled set of slices) of a tensor, or the reason it is not analysed."""

    label: str  # full | pooled | slice:i,j | gate:i | gate:i slice:i,j | filters
    slices: np.ndarray | None  # (rf, N, M) with N >= M, usually a view of the tensor
    n: int | None = None
    m: int | None = None
    rf: int | None = None
    rescale: float = 1.0
    skip: str | None = None  # "skipped: <reason>" when nothing is computed


@dataclass
class Spectrum:
    """The result for one planned matrix: a row of the spectra table and its eigenvalues."""

    label: str
    metrics: dict  # spectra columns other than the tensor key
    evals: np.ndarray | None  # descending, after rescale; None when not computed


# --- which matrices a tensor holds --------------------------------------------------------------


def plan(
    class_name: str | None,
    config: dict | None,
    weight_name: str,
    role: str,
    layout: str,
    array: np.ndarray,
    options: SpectraOptions,
) -> list[Planned]:
    """The matrices of one tensor (docs: spectral, "Which matrices")."""
    if array.size == 0:
        return [Planned("full", None, skip="skipped: empty tensor")]
    if array.ndim < 2:
        return [Planned("full", None, skip=f"skipped: not a matrix ({array.ndim}-D)")]
    if role == "bias":
        return [Planned("full", None, skip="skipped: bias (not a linear map)")]
    cls, _ = _wrapped(class_name, config or {})
    matrices = _rules(cls, weight_name, role, layout, array, options)
    if isinstance(matrices, str):
        return [Planned("full", None, skip=matrices)]
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the answer, not a warning
        total = float(array.sum(dtype=np.float64))
    if not math.isfinite(total):  # any NaN or ±inf, no mask copy
        return [Planned(label, None, skip="skipped: non-finite values") for label, *_ in matrices]
    if max(float(array.max()), -float(array.min())) > GRAM_LIMIT:  # exploded: Gram overflows
        return [Planned(label, None, skip=f"skipped: values above {GRAM_LIMIT:g} (its Gram "
                        "matrix overflows)") for label, *_ in matrices]  # fmt: skip
    return [_limit(p, options) for p in _planned(matrices)]


def _rules(cls, weight_name, role, layout, array, options):
    """[(label, (rf, a, b) slices, rescale), ...] or a skip reason."""
    conv = options.conv_rescale
    if cls in GATES and role in ("kernel", "recurrent_kernel"):
        gates = GATES[cls]
        if not gates:  # SimpleRNN
            return _conv_or_matrix("", array, "keras", options.pool, conv)
        if layout == "cudnn":
            array = from_cudnn(array.reshape(-1, array.shape[-1]), role, len(gates))
        u, rest = divmod(array.shape[-1], len(gates))
        if rest:
            return f"skipped: {array.shape[-1]} columns do not split into {len(gates)} gates"
        out = []
        for g, gate in enumerate(gates):
            block = array[..., g * u : (g + 1) * u]
            out += _conv_or_matrix(f"gate:{gate}", block, "keras", options.pool, conv)
        return out
    if cls == "MultiHeadAttention" and role == "kernel":
        scope = weight_name.split("/")[-2] if "/" in weight_name else ""
        if scope == "attention_output":  # (heads, dim, d_out) -> heads·dim × d_out
            return [("full", array.reshape(1, -1, array.shape[-1]), 1.0)]
        return [("full", array.reshape(1, array.shape[0], -1), 1.0)]  # d_in × heads·dim
    if cls in DEPTHWISE or (cls in SEPARABLE and role == "depthwise_kernel"):
        # (k..., in, multiplier): each row one depthwise filter over the kernel positions
        rf = int(np.prod(array.shape[:-2]))
        return [("filters", array.reshape(1, rf, -1).transpose(0, 2, 1), 1.0)]
    if cls in CONV | CONV_TRANSPOSE | SEPARABLE and role in ("kernel", "pointwise_kernel"):
        return _conv_or_matrix("", array, layout, options.pool, conv)
    if cls in DENSE or cls == "Embedding" or cls not in _KNOWN:
        if array.ndim == 2:
            return [("full", array[None], 1.0)]
        return f"skipped: no matrix rule for a {array.ndim}-D {role} of {cls or 'unknown class'}"
    return f"skipped: no matrix rule for {role} of {cls}"


_KNOWN = set(GATES) | CONV | CONV_TRANSPOSE | DEPTHWISE | SEPARABLE | {"MultiHeadAttention"}


def _conv_or_matrix(prefix: str, array: np.ndarray, layout: str, pool: bool, rescale: bool):
    """A 2-D matrix as itself; a convolution kernel as its kernel-position slices, scaled as
    WeightWatcher's conv2d_norm: W·√(count/2), count = 1 pooled, rf one slice at a time."""
    if array.ndim == 2:
        return [((prefix or "full"), array[None], 1.0)]
    if layout in ("theano", "out_in"):  # (filters, in, *k) -> (k..., in, filters)
        array = np.moveaxis(array, (0, 1), (-1, -2))
    kernel = array.shape[:-2]
    slices = array.reshape(-1, *array.shape[-2:])
    if pool:
        return [((prefix or "pooled"), slices, CONV_RESCALE if rescale else 1.0)]
    per_slice = CONV_RESCALE * slices.shape[0] if rescale else 1.0
    out = []
    for k in range(slices.shape[0]):
        where = ",".join(str(int(i)) for i in np.unravel_index(k, kernel))
        label = f"{prefix} slice:{where}" if prefix else f"slice:{where}"
        out.append((label, slices[k : k + 1], per_slice))
    return out


def _planned(matrices) -> list[Planned]:
    out = []
    for label, slices, rescale in matrices:
        rf, a, b = slices.shape
        if a < b:
            slices = slices.transpose(0, 2, 1)
        out.append(Planned(label, slices, max(a, b), min(a, b), rf, rescale))
    return out


def cost_seconds(rf: int, n: int, m: int) -> float:
    """Estimated seconds for one core to analyse rf slices of N×M: the Gram products (syrk,
    N·M²/2 multiply-adds each) and the solver (SOLVER_WORK·M³), at AUTO_RATE."""
    return rf * (n * m * m / 2 + SOLVER_WORK * m**3) / AUTO_RATE


def _limit(p: Planned, options: SpectraOptions) -> Planned:
    if options.mode == "auto" and cost_seconds(p.rf, p.n, p.m) > AUTO_BUDGET:
        p.skip = AUTO_SKIP
        p.slices = None
    return p


# --- the power law ------------------------------------------------------------------------------


@dataclass
class PowerLawFit:
    alpha: float
    xmin: float
    D: float
    sigma: float


def fit_power_law(evals: np.ndarray) -> PowerLawFit | None:
    """WeightWatcher 0.7.7's fit (WW_powerlaw.WWFit): over the eigenvalues x > EVALS_THRESH
    sorted ascending, every x_i but the largest is a candidate xmin; for each, with the
    n = len − i eigenvalues x ≥ x_i,

        alpha_i = 1 + n / Σ_j ln(x_j / x_i)           (continuous power-law MLE)
        D_i     = max_j |1 − (x_j / x_i)^(1 − alpha_i) − (j − i)/n|   (KS distance)
        sigma_i = (alpha_i − 1) / √n

    and the candidate of least D is kept (the first on ties). Below SMALL_N fitted
    eigenvalues the small-sample rule applies instead (`_fit_small`). None when fewer than two
    eigenvalues exceed EVALS_THRESH or all of them are equal."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > EVALS_THRESH]
    total = x.size
    if total < 2:
        return None
    logx = np.log(x)
    if total < SMALL_N:
        return _fit_small(x, logx)
    suffix = np.cumsum(logx[::-1])[::-1]
    i = np.arange(total - 1)
    n = (total - i).astype(np.float64)
    spread = suffix[:-1] - n * logx[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = np.where(spread > 0, 1.0 + n / spread, np.nan)
    ds = np.ones(total - 1)
    ok = np.flatnonzero(np.isfinite(alphas) & (alphas > 1))
    ds[ok] = _least_distances(logx, alphas, n, ok)
    best = int(np.argmin(ds))
    alpha = float(alphas[best])
    if not math.isfinite(alpha):  # every candidate degenerate (all eigenvalues equal)
        return None
    return PowerLawFit(alpha, float(x[best]), float(ds[best]), (alpha - 1) / math.sqrt(n[best]))


def _least_distances(logx: np.ndarray, alphas: np.ndarray, n: np.ndarray, ok: np.ndarray):
    """KS distances of the candidates `ok`, exact wherever one could be the least: each gets
    a lower bound first (its largest gap over every KS_STRIDE-th eigenvalue, a subset of the
    gaps D maximises), then candidates are computed exactly in the order of their bounds
    until the next bound exceeds the least distance found; the others keep their bounds,
    which cannot be the least. Same argmin and D as computing all ~n²/2 gaps, for a few %."""
    total = logx.size
    columns = np.arange(0, total, KS_STRIDE)
    bounds = _gaps_max(logx, alphas, n, ok, columns)
    out = bounds.copy()
    order = np.argsort(bounds, kind="stable")
    best = np.inf
    step = KS_FIRST
    done = 0
    while done < order.size and bounds[order[done]] <= best:
        batch = order[done : done + step]
        out[batch] = _gaps_max(logx, alphas, n, ok[batch], np.arange(total))
        best = min(best, float(out[batch].min()))
        done += batch.size
        step *= 2
    return out


def _gaps_max(logx, alphas, n, rows, columns) -> np.ndarray:
    """For each candidate in `rows`: max |1 − (x_j/x_i)^(1−α_i) − (j−i)/n_i| over the
    `columns` j ≥ i (0 where there is none), a block of KS_BLOCK cells at a time."""
    out = np.zeros(rows.size)
    block = max(1, KS_BLOCK // max(columns.size, 1))
    for start in range(0, rows.size, block):
        r = rows[start : start + block]
        cols = columns[np.searchsorted(columns, r.min()) :]
        if cols.size == 0:
            continue
        a = alphas[r, None]
        with np.errstate(invalid="ignore", over="ignore"):
            theory = 1.0 - np.exp((1.0 - a) * (logx[None, cols] - logx[r, None]))
            empirical = (cols[None, :] - r[:, None]) / n[r, None]
            gap = np.abs(theory - empirical)
        gap[cols[None, :] < r[:, None]] = 0.0
        out[start : start + block] = gap.max(axis=1)
    return out


def _fit_small(x: np.ndarray, logx: np.ndarray) -> PowerLawFit | None:
    """WeightWatcher 0.7.7's small-sample fit (WWFit.fit_powerlaw_smallN, lambda_prior 0):
    candidates with tails of n ≥ SMALL_N_MIN_TAIL eigenvalues, the bias-corrected MLE
    alpha = 1 + (n − 1) / Σ ln(x_j / x_i), the same KS distance D, and the candidate of least
    D − 0.868/√n kept; with no such candidate, the whole sample is the tail."""
    total = x.size
    best = None
    for i in range(total - 1):
        n = total - i
        spread = float(logx[i:].sum() - n * logx[i])
        if n < SMALL_N_MIN_TAIL or spread <= 1e-12:
            continue
        alpha = 1.0 + (n - 1.0) / spread
        if alpha <= 1.0:
            continue
        d = float(np.abs(np.arange(n) / n - (1.0 - (x[i:] / x[i]) ** (1.0 - alpha))).max())
        score = d - 0.868 / math.sqrt(n)
        if best is None or score < best[0]:
            best = (score, PowerLawFit(alpha, float(x[i]), d, (alpha - 1) / math.sqrt(n)))
    if best is not None:
        return best[1]
    spread = float(logx.sum() - total * logx[0])
    if spread <= 1e-12:
        return None
    alpha = 1.0 + (total - 1.0) / spread
    d = float(np.abs(np.arange(total) / total - (1.0 - (x / x[0]) ** (1.0 - alpha))).max())
    return PowerLawFit(alpha, float(x[0]), d, (alpha - 1) / math.sqrt(total))


# --- metrics ------------------------------------------------------------------------------------


def analyse(p: Planned) -> Spectrum:
    """Eigenvalues and metrics of one planned matrix (nothing computed for a skipped one)."""
    metrics = {"matrix": p.label, "N": p.n, "M": p.m, "rf": p.rf, "rescale": p.rescale,
               "method_version": METHOD_VERSION}  # fmt: skip
    if p.skip is not None:
        return Spectrum(p.label, {**metrics, "status": p.skip}, None)
    # numpy's warnings (overflow of a Gram of huge weights) and a solver that gives up are
    # this matrix's status, never a line on stderr nor the file's failure
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, evals = _computed(p)
        except np.linalg.LinAlgError as exc:
            reason = f"skipped: the eigenvalue solver did not converge ({exc})"
            return Spectrum(p.label, {**metrics, "status": reason}, None)
    trouble = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    if trouble:
        reason = f"skipped: numerical trouble (numpy: {trouble[0].message})"
        return Spectrum(p.label, {**metrics, "status": reason}, None)
    return Spectrum(p.label, {**metrics, **result}, evals)


def _computed(p: Planned) -> tuple[dict, np.ndarray]:
    esd = spectrum(p.slices)
    evals = esd.evals * p.rescale
    result = esd_metrics(evals, p.n, esd.total * p.rescale)
    if esd.noise and _unsettled(result, evals, esd.noise * p.rescale):
        esd = spectrum(p.slices, exact=True)
        evals = esd.evals * p.rescale
        result = esd_metrics(evals, p.n, esd.total * p.rescale)
    return result, evals


def _unsettled(metrics: dict, evals: np.ndarray, noise: float) -> bool:
    """Whether float32-Gram eigenvalues (absolute error <= noise) might change the fit: its
    xmin within SETTLED_FIT × noise, or an eigenvalue within noise of EVALS_THRESH."""
    xmin = metrics.get("xmin")
    if xmin is not None and xmin < SETTLED_FIT * noise:
        return True
    return bool(np.any(np.abs(evals - EVALS_THRESH) <= noise))


def esd_metrics(evals: np.ndarray, n: int, total: float | None = None) -> dict:
    """Metrics of a descending ESD whose matrices have largest dimension `n` (docs: spectral);
    `total`: Σλ = ‖W‖²_F computed exactly (wpipe.analyse.eigen's Gram traces), else the eigenvalues'
    sum."""
    num = int(evals.size)
    lam = float(evals[0])
    out: dict = {"num_evals": num, "lambda_max": lam, "spectral_norm": lam}
    if lam <= 0:
        return {**out, "norm": 0.0, "status": "skipped: all eigenvalues are zero"}
    norm = float(evals.sum()) if total is None else float(total)
    rank = int(np.count_nonzero(evals > lam * (n * np.finfo(np.float64).eps) ** 2))
    p = evals / norm + ENTROPY_EPSILON
    out.update(
        log_spectral_norm=math.log10(lam),
        norm=norm,
        log_norm=math.log10(norm),
        stable_rank=norm / lam,
        entropy=float(-(p * np.log(p)).sum() / math.log(rank + ENTROPY_EPSILON)),
    )
    if num < MIN_EVALS:
        return {**out, "status": f"skipped: {num} eigenvalues, fewer than {MIN_EVALS} to fit"}
    fit = fit_power_law(evals)
    if fit is None:
        return {**out, "status": "skipped: no power law to fit (fewer than 2 distinct "
                f"eigenvalues above {EVALS_THRESH:g})"}  # fmt: skip
    positive = np.log(evals[evals > 0])
    scaled = fit.alpha * positive
    top = float(scaled.max())
    log_alpha_norm = (top + math.log(float(np.exp(scaled - top).sum()))) / math.log(10)
    warning = None
    if fit.alpha < OVER_TRAINED_BELOW:
        warning = "over-trained"
    elif fit.alpha > UNDER_TRAINED_ABOVE:
        warning = "under-trained"
    return {
        **out,
        "alpha": fit.alpha,
        "xmin": fit.xmin,
        "D": fit.D,
        "sigma": fit.sigma,
        "num_pl_spikes": int(np.count_nonzero(evals >= fit.xmin)),
        "alpha_weighted": fit.alpha * math.log10(lam),
        "log_alpha_norm": log_alpha_norm,
        "warning": warning,
        "status": "ok",
    }


def tensor_spectra(
    class_name: str | None,
    config: dict | None,
    weight_name: str,
    role: str,
    layout: str,
    array: np.ndarray,
    options: SpectraOptions,
) -> list[Spectrum]:
    """Every matrix of a tensor analysed (or skipped with its reason); [] for mode none."""
    if options.mode == "none":
        return []
    return [analyse(p) for p in plan(class_name, config, weight_name, role, layout, array,
                                     options)]  # fmt: skip
