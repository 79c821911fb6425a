"""Eigenvalues of WₖᵀWₖ for the slices of a weight matrix (wpipe.analyse.spectra's ESD), fast and
within the tolerances of docs: spectral.

The M×M Gram matrix is formed by a symmetric rank-k product (numpy's matmul calls BLAS syrk for
AᵀA: half the multiply-adds of a general product), and diagonalised by LAPACK. Precision per
slice, and what each spectra column gets from it:

- float32 Gram where N ≥ F32_ASPECT·M, i.e. where the product costs more than the solver: its
  eigenvalues are within gram_noise(N)·λmax of a float64 SVD's (measured at most 3.2e-8·λmax,
  random and power-law matrices). From F32_SOLVER_MIN columns it is diagonalised by a float32
  solver (`_solve32`: ~1.5x less CPU than float64's), adding solver_noise(M)·λmax (measured at
  most ~3·eps32·λmax); below, numpy's float64 eigvalsh. λmax itself is refined in float64 (a
  Rayleigh quotient of the float32 top eigenvector), so it keeps the float64 solver's ~1e-8, and
  Σλ (`ESD.total`: norm, log_norm, stable_rank's numerator) is ‖W‖²_F summed in float64, exact
  to ~1e-15 whatever the solver. The other columns (alpha, xmin, D, entropy, ...) and the
  eigenvalues table see the bound above: a slice whose smallest eigenvalue is below SETTLED ×
  that noise is recomputed in float64, and wpipe.analyse.spectra redoes a whole ESD in float64 when
  the power-law fit reaches into the noise (`ESD.noise`).
- float64 Gram elsewhere (near-square matrices, whose small eigenvalues a float32 solver would
  lose): exact to ~1e-13·λmax, diagonalised in float64 by numpy's eigvalsh (LAPACK dsyevd,
  batched over slices) or, from TWO_STAGE_MIN, LAPACK's two-stage solver (dsyevd_2stage, from
  the OpenBLAS that numpy ships; eigvalsh where it is not found); a slice whose smallest
  eigenvalue is below GRAM_FLOOR·λmax (RANK_FLOOR·λmax above SVD_MAX columns, where an SVD
  costs tens of seconds and only eigenvalues that no metric but the rank can see would
  change) is redone exactly: dead rows/columns removed, then the Gram again, or an SVD of the
  float64 matrix.

Threads: the solver runs on one BLAS thread below SOLVER_THREADED_ORDER (more waste CPU for
little time); the slices of a stack are split over threads instead, at most cores / pool
workers (`pool_share`); only large products get BLAS threads, as many as the cores no other
task is running on now (Linux's runnable-task count), and inside an ingest pool worker at
most cores / workers.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

SETTLED = 10.0  # a float32 slice is kept when its smallest eigenvalue is SETTLED × the noise
F32_ASPECT = 2  # float32 Gram for slices with N ≥ F32_ASPECT·M
GRAM_FLOOR = 1e-9  # a float64 Gram slice with λmin below this × λmax is redone exactly ...
SVD_MAX = 1024  # ... by SVD up to this M; above, only below RANK_FLOOR (an SVD of 4096² is 30 s)
RANK_FLOOR = 1e-12  # the float64 Gram resolves λ to ~1e-13·λmax: above this, the rank is sure
GRAM_CHUNK = 1 << 22  # elements per batch of slices (and per float64 conversion block)
# From this order LAPACK's 2-stage solver beats numpy's eigvalsh (dsyevd) on one core: 1.5x
# at 2048, but 0.75-0.8x from 192 to 1536 (CPU seconds, on a loaded machine).
TWO_STAGE_MIN = 1792
# Multiply-adds from which a product gets BLAS threads (~50 ms on one core): OpenBLAS's idle
# threads spin for a while after each threaded call, CPU time spent for nothing on short ones.
THREADED_WORK = 1 << 31
UNLIMITED_BELOW = 1 << 20  # work too small for OpenBLAS to thread: not worth limiting
SOLVER_WORK = 3.2  # eigenvalues of an M×M Gram matrix cost about SOLVER_WORK·M³ multiply-adds
SPLIT_WORK = 1 << 24  # multiply-adds per thread from which a stack's slices are split (~2 ms)
# From this order a float32 Gram's eigenvalues come from the float32 solver (`_solve32`):
# below it the solver costs little and numpy's batched float64 one has less overhead.
F32_SOLVER_MIN = 256


@dataclass
class ESD:
    evals: np.ndarray  # pooled eigenvalues of every slice, descending
    noise: float  # absolute error bound of the float32 eigenvalues among them (0: none)
    total: float  # Σλ = Σ trace(WₖᵀWₖ), summed in float64 from the Grams' diagonals


def eigenvalues(slices: np.ndarray, *, exact: bool = False) -> np.ndarray:
    """Eigenvalues of WₖᵀWₖ for every slice of (rf, N, M) (N >= M), pooled, descending."""
    return spectrum(slices, exact=exact).evals


def spectrum(slices: np.ndarray, *, exact: bool = False) -> ESD:
    """The pooled ESD and its error bound; `exact`: float64 Grams for every slice."""
    rf, n, m = slices.shape
    evals = np.empty((rf, m))
    noise = np.zeros(rf)
    traces = np.zeros(rf)
    single = not exact and slices.dtype != np.float64 and n >= F32_ASPECT * m
    part = _single if single else _double
    ways = _split_ways(rf, n, m)
    if ways < 2:
        part(slices, evals, noise, traces)
    else:  # contiguous runs of slices, one per thread, each on one BLAS thread
        bounds = np.linspace(0, rf, ways + 1).astype(int)
        runs = [slice(a, b) for a, b in itertools.pairwise(bounds)]
        pool = thread_pool("slices", os.cpu_count() or 1)
        with blas_threads(UNLIMITED_BELOW, pin=True):
            list(pool.map(lambda r: part(slices[r], evals[r], noise[r], traces[r]), runs))
    return ESD(np.sort(evals.reshape(-1))[::-1], float(noise.max(initial=0.0)),
               float(traces.sum()))  # fmt: skip


def _split_ways(rf: int, n: int, m: int) -> int:
    """Threads for the slices of a stack: `pool_share()` (not only the idle cores: the load
    average counts other processes' tasks that leave capacity), from SPLIT_WORK multiply-adds
    per thread. LAPACK's solver gains little from BLAS threads (512²: 1.08x faster for 1.85x
    the CPU); independent slices on their own threads, 1.7x faster on idle cores for the same
    CPU, and no faster (within noise) on busy ones."""
    if rf < 2:
        return 1
    work = rf * (n * m * m // 2 + SOLVER_WORK * m**3)
    if work < 2 * SPLIT_WORK:
        return 1
    return max(1, min(rf, pool_share(), int(work // SPLIT_WORK)))


def _single(slices: np.ndarray, evals: np.ndarray, noise: np.ndarray, traces: np.ndarray):
    """float32 Grams; from F32_SOLVER_MIN columns a float32 solver whose largest eigenvalue is
    refined in float64 (`_solve32`), below it float64 eigenvalues; unsettled slices are
    recomputed in float64."""
    rf, n, m = slices.shape
    group = max(1, GRAM_CHUNK // max(n * m, 1))
    for start in range(0, rf, group):
        part = slices[start : start + group]
        with blas_threads(part.shape[0] * n * m * m // 2):
            grams = _gram32(part if part.dtype == np.float32 else part.astype(np.float32))
        done = slice(start, start + part.shape[0])
        # Σλ = ‖W‖²_F in float64 (a float32 Gram's own trace is off by up to ~eps32·√N)
        traces[done] = np.einsum("ijk,ijk->i", part, part, dtype=np.float64)
        evals[done] = _eigvalsh(grams, single=m >= F32_SOLVER_MIN)
    bound = gram_noise(n) + (solver_noise(m) if m >= F32_SOLVER_MIN else 0.0)
    noise[:] = bound * np.maximum(evals[:, -1], 0.0)
    unsettled = np.flatnonzero(evals[:, 0] < SETTLED * noise)
    for k in unsettled:
        _double(slices[k : k + 1], evals[k : k + 1], noise[k : k + 1], traces[k : k + 1])
    noise[unsettled] = 0.0


def gram_noise(n: int) -> float:
    """Error bound of float32-Gram eigenvalues over N rows, relative to λmax: float32 rounding
    of short sums plus a random walk over long ones, eps32·(4 + √N/16). Measured worst cases:
    3.2e-8 at N = 64 (bound 2.7e-7) and 1.6e-8 at N = 25088 (bound 8.3e-7)."""
    return float(np.finfo(np.float32).eps) * (4.0 + math.sqrt(n) / 16.0)


def solver_noise(m: int) -> float:
    """Error bound of the float32 solver's eigenvalues (all but the refined largest) of an
    M×M matrix, relative to its largest: eps32·(4 + √M/4). Measured worst cases on random,
    spiked and power-law Grams: ~3·eps32 at M = 512 (bound 9.7), ~8·eps32 at 4096 (20)."""
    return float(np.finfo(np.float32).eps) * (4.0 + math.sqrt(m) / 4.0)


def _gram32(x: np.ndarray) -> np.ndarray:
    """Batched WᵀW of float32 slices through syrk: numpy uses it when both operands are one
    buffer, so a slice is used in whichever orientation is contiguous."""
    if x[0].flags.f_contiguous and not x[0].flags.c_contiguous:  # Wᵀ of a C-ordered W
        y = x.transpose(0, 2, 1)
        return np.matmul(y, y.transpose(0, 2, 1))
    x = np.ascontiguousarray(x)
    return np.matmul(x.transpose(0, 2, 1), x)


def _double(slices: np.ndarray, evals: np.ndarray, noise: np.ndarray, traces: np.ndarray):
    """float64 Grams (converted a block at a time), redone exactly where near-singular;
    `noise` (no error bound here: left alone) is for the signature `spectrum` shares with
    `_single`."""
    rf, n, m = slices.shape
    group = GRAM_CHUNK // max(n * m, 1)
    if group:
        for start in range(0, rf, group):
            x = slices[start : start + group].astype(np.float64)
            with blas_threads(x.shape[0] * n * m * m // 2):
                grams = np.matmul(x.transpose(0, 2, 1), x)
            traces[start : start + group] = np.trace(grams, axis1=1, axis2=2)
            evals[start : start + group] = _eigvalsh(grams)
    else:
        for k in range(rf):
            with blas_threads(n * m * m // 2):
                gram = _gram64(slices[k])
            traces[k] = np.trace(gram)
            evals[k] = _eigvalsh(gram[None])[0]
    floor = GRAM_FLOOR if m <= SVD_MAX else RANK_FLOOR
    with blas_threads(UNLIMITED_BELOW, pin=True):
        for k in np.flatnonzero(evals[:, 0] < floor * evals[:, -1]):
            evals[k] = _exact(slices[k])


def _gram64(w: np.ndarray) -> np.ndarray:
    """WᵀW in float64, converting at most GRAM_CHUNK elements at a time."""
    n, m = w.shape
    step = max(1, GRAM_CHUNK // max(m, 1))
    if n <= step:
        x = w.astype(np.float64)
        return x.T @ x
    g = np.zeros((m, m))
    for start in range(0, n, step):
        x = w[start : start + step].astype(np.float64)
        g += x.T @ x
    return g


def _exact(w: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of WᵀW (N >= M) for a near-singular W."""
    m = w.shape[1]
    x = w.astype(np.float64)
    x = x[:, x.any(axis=0)]
    x = x[x.any(axis=1)]
    out = np.zeros(m)
    k = min(x.shape)
    if k == 0:
        return out
    if x.shape[0] < x.shape[1]:
        x = x.T
    evals = np.linalg.eigvalsh(x.T @ x)
    if evals[0] < GRAM_FLOOR * evals[-1]:
        evals = np.sort(np.linalg.svd(x, compute_uv=False) ** 2)
    out[m - k :] = evals
    return out


# --- the symmetric solver -----------------------------------------------------------------------


def _eigvalsh(grams: np.ndarray, *, single: bool = False) -> np.ndarray:
    """Ascending eigenvalues (float64 array) of a stack of symmetric matrices, on one BLAS
    thread below SOLVER_THREADED_ORDER, where more cost far more CPU than they save; `single`:
    float32 Grams through the float32 solver (`_solve32`), else a float64 solver."""
    m = grams.shape[-1]
    work = int(grams.shape[0] * SOLVER_WORK * m**3)
    with blas_threads(work, pin=m < SOLVER_THREADED_ORDER):
        if single:
            lapack = _lapack32()
            if lapack is not None:
                return np.stack([_solve32(g, lapack) for g in grams])
        return _solve(grams)


# From this order the solver gets the idle cores' BLAS threads. Two threads against one on
# 2 cores: 1.08x wall for 1.85x CPU at order 512, 1.24x for 1.6x at 1024, 1.12x for 1.7x at
# 2048, 1.5x for 1.15x at 3072, 1.4x for 1.27x at 4096 (VGG16's fc1 and fc2).
SOLVER_THREADED_ORDER = 3072


def _solve(grams: np.ndarray) -> np.ndarray:
    m = grams.shape[-1]
    solver = _two_stage() if m >= TWO_STAGE_MIN else None
    if solver is None:
        return np.linalg.eigvalsh(grams.astype(np.float64, copy=False))
    out = np.empty(grams.shape[:2])
    for k in range(grams.shape[0]):
        a = np.array(grams[k], dtype=np.float64, order="C")  # the solver overwrites it
        # Symmetric, so the C-ordered matrix read column-major is itself: no transpose.
        info = solver(_COL_MAJOR, b"N", b"L", m, a.ctypes.data, m, out[k].ctypes.data)
        if info != 0:  # not converged (never seen): numpy's solver instead
            out[k] = np.linalg.eigvalsh(grams[k].astype(np.float64))
    return out


def _solve32(gram: np.ndarray, lapack: dict) -> np.ndarray:
    """Ascending eigenvalues of one float32 Gram: LAPACK's float32 tridiagonal reduction
    (ssytrd, ~1.5x faster than float64's on one core), the tridiagonal's eigenvalues in float64
    (dsterf), then the largest refined in float64: the tridiagonal's top eigenvector (dstevx)
    taken back through the reduction's reflectors (sormtr) is within eps32·λmax/gap of the
    Gram's, so its float64 Rayleigh quotient after one power step (a lower bound of λmax)
    is within ~(eps32·λmax)²/gap of it: as exact as the float64 solver's."""
    m = gram.shape[0]
    if m == 1:
        return gram.reshape(1).astype(np.float64)
    a = np.array(gram, dtype=np.float32, order="C")  # overwritten by the reflectors
    d, e, tau = np.empty(m, np.float32), np.empty(m - 1, np.float32), np.empty(m - 1, np.float32)
    # Symmetric, so the C-ordered matrix read column-major is itself (its lower triangle).
    info = lapack["ssytrd"](_COL_MAJOR, b"L", m, a.ctypes.data, m, d.ctypes.data, e.ctypes.data,
                            tau.ctypes.data)  # fmt: skip
    if info != 0:  # never seen: the float64 solver instead
        return _solve(gram[None])[0]
    diag, off = d.astype(np.float64), e.astype(np.float64)
    evals, work = diag.copy(), off.copy()
    lapack["dsterf"](m, evals.ctypes.data, work.ctypes.data)
    evals.sort()
    top = _top_vector(lapack, a, tau, diag, off)
    if top is not None:
        g = gram.astype(np.float64)
        y = g @ top
        v = y / np.linalg.norm(y)
        lam = max(float(top @ y), float(v @ (g @ v)))  # Rayleigh quotients: both <= λmax
        np.minimum(evals, lam, out=evals)  # the float32 ones just under it are within noise
        evals[-1] = lam
    return evals


def _top_vector(lapack: dict, a: np.ndarray, tau: np.ndarray, diag, off) -> np.ndarray | None:
    """The unit eigenvector of the Gram's largest eigenvalue, from ssytrd's reflectors (in `a`,
    `tau`) and its tridiagonal (`diag`, `off`, float64); None if LAPACK fails."""
    m = diag.size
    d, e = diag.copy(), off.copy()
    found, w = ctypes.c_int64(0), np.empty(m)
    z, fail = np.empty(m), np.empty(m, np.int64)
    info = lapack["dstevx"](_COL_MAJOR, b"V", b"I", m, d.ctypes.data, e.ctypes.data, 0.0, 0.0,
                            m, m, 0.0, ctypes.byref(found), w.ctypes.data, z.ctypes.data, m,
                            fail.ctypes.data)  # fmt: skip
    if info != 0 or found.value != 1:
        return None
    c = z.astype(np.float32)
    info = lapack["sormtr"](_COL_MAJOR, b"L", b"L", b"N", m, 1, a.ctypes.data, m,
                            tau.ctypes.data, c.ctypes.data, m)  # fmt: skip
    if info != 0:
        return None
    v = c.astype(np.float64)
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else None


_COL_MAJOR = 102
_I64, _P, _C, _F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_char, ctypes.c_double
_SIGNATURES = {  # LAPACKE (ILP64) argument types
    "dsyevd_2stage": [ctypes.c_int, _C, _C, _I64, _P, _I64, _P],
    "ssytrd": [ctypes.c_int, _C, _I64, _P, _I64, _P, _P, _P],
    "dsterf": [_I64, _P, _P],
    "dstevx": [ctypes.c_int, _C, _C, _I64, _P, _P, _F64, _F64, _I64, _I64, _F64, _P, _P, _P,
               _I64, _P],
    "sormtr": [ctypes.c_int, _C, _C, _C, _I64, _I64, _P, _I64, _P, _P, _I64],
}  # fmt: skip
_FOUND: dict = {}  # name -> function or None, once looked up


def _two_stage():
    """LAPACKE_dsyevd_2stage of numpy's bundled OpenBLAS (ILP64), or None when not found."""
    return _lapack("dsyevd_2stage")


def _lapack32() -> dict | None:
    """The LAPACKE functions of `_solve32`, or None when one is not found."""
    found = {name: _lapack(name) for name in ("ssytrd", "dsterf", "dstevx", "sormtr")}
    return None if None in found.values() else found


def _lapack(name: str):
    if name not in _FOUND:
        _FOUND[name] = _find_lapack(name)
    return _FOUND[name]


def _find_lapack(name: str):
    """LAPACKE_<name> of numpy's bundled OpenBLAS (ILP64), or None when not found."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for symbol in (f"scipy_LAPACKE_{name}64_", f"LAPACKE_{name}64_"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn.restype = _I64
                fn.argtypes = _SIGNATURES[name]
                return fn
    return None


# --- BLAS threads -------------------------------------------------------------------------------


class blas_threads:
    """Context: BLAS threads for `work` multiply-adds, as many as there are idle cores (at most
    cores / pool workers; one for work below THREADED_WORK, where threads cost more than they
    save). `pin`: one thread for everything inside, on every thread (slices run on their own
    threads then, and a nested context leaves the limit alone)."""

    def __init__(self, work: int, *, pin: bool = False) -> None:
        self.work, self.pin = work, pin
        self.threads = 1 if pin else threads_for(work)
        self.limiter = None
        self.pinned = False

    def __enter__(self):
        if _PINNED[0]:  # inside a pinned section: one thread already, whichever thread we are
            return self
        controller = _controller() if self.work >= UNLIMITED_BELOW else None
        if controller is not None:
            self.limiter = controller.limit(limits=self.threads, user_api="blas")
        if self.pin:
            with _PINNING:
                _PINNED[0] += 1
            self.pinned = True
        return self

    def __exit__(self, *exc) -> None:
        if self.pinned:
            with _PINNING:
                _PINNED[0] -= 1
        if self.limiter is not None:
            self.limiter.restore_original_limits()


_PINNED = [0]  # pinned sections running (one per thread that runs spectra: ingests on Dask threads)
_PINNING = threading.Lock()


def threads_for(work: int) -> int:
    return 1 if work < THREADED_WORK else spare_threads()


def spare_threads() -> int:
    """BLAS threads this process may keep busy now: idle cores, at most `pool_share()` (an
    OpenBLAS thread on a busy core spins, preempted, and costs CPU for nothing)."""
    cores = _cores()
    idle = max(1, round(cores - max(busy_cores(), 0.0)))
    return max(1, min(idle, pool_share()))


def pool_share() -> int:
    """Threads of independent work this process may run without oversubscribing its own
    ingest pool: cores / pool workers (they block rather than spin, so the load of other
    processes only shares the cores, as the scheduler does)."""
    return max(1, _cores() // _siblings())


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def thread_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """This process's pool of `workers` threads called `name`, made on first use (and again in
    a forked child, where the parent's threads are gone)."""
    pool = _POOLS.get(name)
    if pool is None or pool[0] != os.getpid():
        pool = _POOLS[name] = (os.getpid(), ThreadPoolExecutor(workers, f"wpipe-{name}"))
    return pool[1]


_POOLS: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def busy_cores() -> float:
    """Tasks of other processes that want a core now: Linux's count of runnable tasks
    (/proc/loadavg, 4th field) less this process's own running threads, else the 1-minute
    load average. The average lags by a minute, so right after another heavy job it would
    keep a quiet machine on one thread; and OpenBLAS's threads spin for a while after a
    threaded product, so counted as others they left the solver after it one thread."""
    try:
        with open("/proc/loadavg") as fh:
            runnable = float(fh.read().split()[3].split("/")[0])
        return max(runnable - _own_running(), 0.0)
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] - 1.0 if hasattr(os, "getloadavg") else 0.0


def _own_running() -> int:
    """Threads of this process running or runnable now (at least this one)."""
    running = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        running += state == "R"
    return max(running, 1)


def _siblings() -> int:
    """Processes sharing the cores with this one: the parent's children when this is a pool
    worker (the load average lags a pool's start by a minute), else 1."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return 1
    try:
        with open(f"/proc/{parent.pid}/task/{parent.pid}/children") as fh:
            return max(1, len(fh.read().split()))
    except OSError:  # not Linux: assume the pool has every core
        return os.cpu_count() or 1


_CONTROLLER: list = []


def _controller():
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController

            _CONTROLLER.append(ThreadpoolController())
        except ImportError:
            _CONTROLLER.append(None)
    return _CONTROLLER[0]
