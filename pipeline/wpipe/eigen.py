"""Eigenvalues of WₖᵀWₖ for the slices of a weight matrix (wpipe.spectra's ESD), fast and
within the tolerances of README: Spectral health.

The M×M Gram matrix is formed by a symmetric rank-k product (numpy's matmul calls BLAS syrk for
AᵀA: half the multiply-adds of a general product), and diagonalised in float64 by numpy's
eigvalsh (LAPACK dsyevd, batched over slices) or, from TWO_STAGE_MIN, by LAPACK's two-stage
solver (dsyevd_2stage, from the OpenBLAS that numpy ships; eigvalsh where it is not found).
Precision per slice:

- float32 Gram where N ≥ F32_ASPECT·M, i.e. where the product costs more than the solver: its
  eigenvalues are within gram_noise(N)·λmax of a float64 SVD's (measured at most 3.2e-8·λmax,
  random and power-law matrices), so λmax, Σλ and the large eigenvalues are exact to ~1e-8
  relative. A slice whose smallest eigenvalue is below SETTLED × that noise is
  recomputed in float64, and wpipe.spectra redoes a whole ESD in float64 when the power-law
  fit reaches into the noise (`ESD.noise`).
- float64 Gram elsewhere (near-square matrices, where the solver dominates anyway): exact to
  ~1e-13·λmax; a slice whose smallest eigenvalue is below GRAM_FLOOR·λmax (RANK_FLOOR·λmax
  above SVD_MAX columns, where an SVD costs tens of seconds and only eigenvalues that no
  metric but the rank can see would change) is redone exactly: dead rows/columns removed,
  then the Gram again, or an SVD of the float64 matrix.

Threads: the solver runs on one BLAS thread (more waste CPU for little time); the slices of a
stack are split over threads instead, at most cores / pool workers (`pool_share`); only large
products get BLAS threads, as many as the cores no other task is running on now (Linux's
runnable-task count), and inside an ingest pool worker at most cores / workers.
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


@dataclass
class ESD:
    evals: np.ndarray  # pooled eigenvalues of every slice, descending
    noise: float  # absolute error bound of the float32-Gram eigenvalues among them (0: none)


def eigenvalues(slices: np.ndarray, *, exact: bool = False) -> np.ndarray:
    """Eigenvalues of WₖᵀWₖ for every slice of (rf, N, M) (N >= M), pooled, descending."""
    return spectrum(slices, exact=exact).evals


def spectrum(slices: np.ndarray, *, exact: bool = False) -> ESD:
    """The pooled ESD and its error bound; `exact`: float64 Grams for every slice."""
    rf, n, m = slices.shape
    evals = np.empty((rf, m))
    noise = np.zeros(rf)
    single = not exact and slices.dtype != np.float64 and n >= F32_ASPECT * m
    part = _single if single else _double
    ways = _split_ways(rf, n, m)
    if ways < 2:
        part(slices, evals, noise)
    else:  # contiguous runs of slices, one per thread, each on one BLAS thread
        bounds = np.linspace(0, rf, ways + 1).astype(int)
        runs = [slice(a, b) for a, b in itertools.pairwise(bounds)]
        pool = thread_pool("slices", os.cpu_count() or 1)
        with blas_threads(UNLIMITED_BELOW, pin=True):
            list(pool.map(lambda r: part(slices[r], evals[r], noise[r]), runs))
    return ESD(np.sort(evals.reshape(-1))[::-1], float(noise.max(initial=0.0)))


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


def _single(slices: np.ndarray, evals: np.ndarray, noise: np.ndarray) -> None:
    """float32 Grams, float64 eigenvalues; unsettled slices are recomputed in float64."""
    rf, n, m = slices.shape
    group = max(1, GRAM_CHUNK // max(n * m, 1))
    for start in range(0, rf, group):
        part = slices[start : start + group]
        with blas_threads(part.shape[0] * n * m * m // 2):
            grams = _gram32(part if part.dtype == np.float32 else part.astype(np.float32))
        evals[start : start + part.shape[0]] = _eigvalsh(grams)
    noise[:] = gram_noise(n) * np.maximum(evals[:, -1], 0.0)
    unsettled = np.flatnonzero(evals[:, 0] < SETTLED * noise)
    for k in unsettled:
        _double(slices[k : k + 1], evals[k : k + 1], noise[k : k + 1])
    noise[unsettled] = 0.0


def gram_noise(n: int) -> float:
    """Error bound of float32-Gram eigenvalues over N rows, relative to λmax: float32 rounding
    of short sums plus a random walk over long ones, eps32·(4 + √N/16). Measured worst cases:
    3.2e-8 at N = 64 (bound 2.7e-7) and 1.6e-8 at N = 25088 (bound 8.3e-7)."""
    return float(np.finfo(np.float32).eps) * (4.0 + math.sqrt(n) / 16.0)


def _gram32(x: np.ndarray) -> np.ndarray:
    """Batched WᵀW of float32 slices through syrk: numpy uses it when both operands are one
    buffer, so a slice is used in whichever orientation is contiguous."""
    if x[0].flags.f_contiguous and not x[0].flags.c_contiguous:  # Wᵀ of a C-ordered W
        y = x.transpose(0, 2, 1)
        return np.matmul(y, y.transpose(0, 2, 1))
    x = np.ascontiguousarray(x)
    return np.matmul(x.transpose(0, 2, 1), x)


def _double(slices: np.ndarray, evals: np.ndarray, noise: np.ndarray | None = None) -> None:
    """float64 Grams (converted a block at a time), redone exactly where near-singular;
    `noise` (no error bound here) is for the signature `spectrum` shares with `_single`."""
    rf, n, m = slices.shape
    group = GRAM_CHUNK // max(n * m, 1)
    if group:
        for start in range(0, rf, group):
            x = slices[start : start + group].astype(np.float64)
            with blas_threads(x.shape[0] * n * m * m // 2):
                grams = np.matmul(x.transpose(0, 2, 1), x)
            evals[start : start + group] = _eigvalsh(grams)
    else:
        for k in range(rf):
            with blas_threads(n * m * m // 2):
                gram = _gram64(slices[k])
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


def _eigvalsh(grams: np.ndarray) -> np.ndarray:
    """Ascending float64 eigenvalues of a stack of symmetric matrices (any float dtype), on one
    BLAS thread below SOLVER_THREADED_ORDER, where more cost far more CPU than they save."""
    m = grams.shape[-1]
    work = int(grams.shape[0] * SOLVER_WORK * m**3)
    with blas_threads(work, pin=m < SOLVER_THREADED_ORDER):
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


_COL_MAJOR = 102
_SOLVER: list = []  # [function or None] once looked up


def _two_stage():
    """LAPACKE_dsyevd_2stage of numpy's bundled OpenBLAS (ILP64), or None when not found."""
    if not _SOLVER:
        _SOLVER.append(_find_two_stage())
    return _SOLVER[0]


def _find_two_stage():
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
        for name in ("scipy_LAPACKE_dsyevd_2stage64_", "LAPACKE_dsyevd_2stage64_"):
            fn = getattr(lib, name, None)
            if fn is not None:
                i64 = ctypes.c_int64
                fn.restype = i64
                fn.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, i64, ctypes.c_void_p,
                               i64, ctypes.c_void_p]  # fmt: skip
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
