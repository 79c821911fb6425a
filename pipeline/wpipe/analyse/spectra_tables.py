"""The `spectra` and `eigenvalues` tables of one model, with a content-addressed cache.

Glue between the pure analysis (wpipe.analyse.spectra) and the per-model tables
(wpipe.analyse.tables): the
result of each tensor worth caching (CACHE_MIN_WORK) is cached in `<lake>/.spectra-cache/`
under the SHA-256 of its bytes and of everything else the result depends on (method version,
layer class, weight name, role, layout, dtype, shape, the planned matrices), so a re-ingested
file costs one hash per such tensor. Workers share the folder; an entry is written under a temporary
name and renamed, so a reader never sees half of one. Deleting the folder only costs time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections import deque
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from wpipe.analyse.anatomy import _wrapped
from wpipe.analyse.eigen import (
    SOLVER_THREADED_ORDER,
    SOLVER_WORK,
    UNLIMITED_BELOW,
    blas_threads,
    pool_share,
    thread_pool,
)
from wpipe.analyse.spectra import (
    AUTO_RATE,
    METHOD_VERSION,
    SpectraOptions,
    Spectrum,
    analyse,
    cost_seconds,
    plan,
)

CACHE_FOLDER = ".spectra-cache"
# Matrices whose eigen-decomposition costs less than this many multiply-adds (N·M·min(N, M),
# summed over a tensor's matrices) are computed again rather than cached: below it, a cache
# entry (a hash, a small file written and read back) costs more than the computation, and
# 10,000 small checkpoints would leave tens of thousands of tiny files.
CACHE_MIN_WORK = 10**8
# Tensors analysed in the background hold at most this many bytes (beyond the one the caller
# has loaded), and at most the model's largest tensor's (the memory bound allows a few of
# it: ResNet50's last stages held ~60 MB pending, its largest tensor being 9 MB); a larger
# tensor is analysed in the caller's thread.
OVERLAP_BYTES = 64 << 20
OVERLAP_MIN = 1 << 15  # values of the smallest tensor worth a background thread
# A tensor whose spectra cost this many multiply-adds (a 3072-order solve) is analysed in the
# caller's thread too, where its products and solver get BLAS threads: in the background it
# would run pinned to one (VGG16's 4096 × 4096 fc2: ~6 s of one core, the reading long done).
INLINE_WORK = SOLVER_WORK * SOLVER_THREADED_ORDER**3
# Work done in this process (tests count cache hits with it): tensors computed / read back.
COUNTS = {"computed": 0, "cached": 0}
_COUNTING = threading.Lock()  # background threads count too


class SpectraCollector:
    """Rows of the spectra and eigenvalues tables, tensor by tensor. With cores to spare, the
    tensors of at most `room` bytes whose spectra cost less than INLINE_WORK are analysed on
    background threads (one per core: the caller's is idle once it has read the last tensor)
    while the caller reads and summarises the next ones (LAPACK and BLAS release the GIL);
    rows keep tensor order."""

    def __init__(self, options: SpectraOptions, room: int | None = None) -> None:
        """`room`: bytes the background's pending tensors may hold (OVERLAP_BYTES at most)."""
        self.options = options
        self.room = OVERLAP_BYTES if room is None else min(room, OVERLAP_BYTES)
        self.rows: list[dict] = []
        self.eigen: list[tuple[dict, str, np.ndarray]] = []
        # (key, bytes held, Future of the results or the results themselves), tensor order
        self.pending: deque[tuple[dict, int, Future | list[Spectrum]]] = deque()
        self.background = options.mode != "none" and pool_share() >= 2
        # One BLAS thread while tensors are analysed in the background: OpenBLAS called from
        # two threads with its own threads on spins in all of them (measured: an ingest 4x
        # slower, 3x the CPU); these tensors' products are small, their slices split anyway.
        self.pinned: blas_threads | None = None

    def add(self, key: dict, class_name: str | None, config: dict | None, tensor, array) -> None:
        """Analyse one tensor (a wpipe.readers.Tensor and its loaded array)."""
        if self.options.mode == "none":
            return
        planned = plan(class_name, config, tensor.weight_name, tensor.role, tensor.layout,
                       array, self.options)  # fmt: skip
        job = (class_name, config, tensor, array, planned)
        if array.nbytes > self.room or _cost(planned) >= INLINE_WORK or not self.background:
            self._drain(-1)  # large or costly: in this thread, after the pending ones
            self._emit(key, self._analyse(*job))
        elif array.size < OVERLAP_MIN:  # small: at once, its rows queued behind the pending
            results = self._analyse(*job)
            if self.pending:
                self.pending.append((key, 0, results))
            else:
                self._emit(key, results)
        else:
            self._drain(self.room - array.nbytes)
            if self.pinned is None:
                self.pinned = blas_threads(UNLIMITED_BELOW, pin=True).__enter__()
            future = thread_pool("spectra", pool_share()).submit(self._analyse, *job)
            self.pending.append((key, array.nbytes, future))

    def _analyse(self, class_name, config, tensor, array, planned) -> list[Spectrum]:
        if (all(p.skip for p in planned) or self.options.cache_dir is None
                or _work(planned) < CACHE_MIN_WORK):  # fmt: skip
            return [analyse(p) for p in planned]
        return _cached(Path(self.options.cache_dir), class_name, config, tensor, array, planned)

    def _drain(self, room: int) -> None:
        """Emit the oldest pending tensors (waiting for them) until the rest hold at most
        `room` bytes; all of them for a negative `room`."""
        while self.pending and (room < 0 or sum(e[1] for e in self.pending) > room):
            key, _, entry = self.pending.popleft()
            self._emit(key, entry.result() if isinstance(entry, Future) else entry)
        if not self.pending:
            self._unpin()

    def _unpin(self) -> None:
        if self.pinned is not None:
            self.pinned.__exit__(None, None, None)
            self.pinned = None

    def __del__(self) -> None:
        # A model whose ingest failed midway: its background work ends, then BLAS gets its
        # threads back.
        for _, _, entry in getattr(self, "pending", ()):
            if isinstance(entry, Future):
                entry.exception()
        if getattr(self, "pinned", None) is not None:
            self._unpin()

    def _emit(self, key: dict, results: list[Spectrum]) -> None:
        for result in results:
            self.rows.append({**key, **result.metrics})
            if result.evals is not None:
                self.eigen.append((key, result.label, result.evals))

    def results(self) -> tuple[list[dict], list[tuple[dict, str, np.ndarray]]]:
        """Every tensor's spectra rows and (key, matrix, eigenvalues), in tensor order."""
        self._drain(-1)
        return self.rows, self.eigen


def _cost(planned) -> float:
    """Estimated multiply-adds of a tensor's spectra (wpipe.analyse.spectra.cost_seconds' model)."""
    return sum(cost_seconds(p.rf, p.n, p.m) for p in planned if not p.skip) * AUTO_RATE


def _work(planned) -> int:
    return sum((p.rf or 1) * p.n * p.m * min(p.n, p.m) for p in planned
               if not p.skip and p.n and p.m)  # fmt: skip


def cache_key(class_name, config, tensor, array: np.ndarray, planned) -> str:
    digest = hashlib.sha256()
    about = {
        "method": METHOD_VERSION,
        "class": _wrapped(class_name, config or {})[0],
        "name": tensor.weight_name.split("/")[-2:],
        "role": tensor.role,
        "layout": tensor.layout,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "plan": [[p.label, p.n, p.m, p.rf, p.rescale, p.skip] for p in planned],
    }
    digest.update(json.dumps(about, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    return digest.hexdigest()


def _cached(folder: Path, class_name, config, tensor, array, planned) -> list[Spectrum]:
    key = cache_key(class_name, config, tensor, array, planned)
    path = folder / key[:2] / f"{key}.npz"
    results = _read(path)
    if results is not None:
        _count("cached")
        return results
    results = [analyse(p) for p in planned]
    _count("computed")
    _write(path, results)
    return results


def _count(kind: str) -> None:
    with _COUNTING:
        COUNTS[kind] += 1


def _read(path: Path) -> list[Spectrum] | None:
    try:
        with np.load(path, allow_pickle=False) as entry:
            meta = json.loads(str(entry["meta"]))
            return [Spectrum(m["matrix"], m, entry.get(f"evals{i}")) for i, m in enumerate(meta)]
    except (OSError, ValueError, KeyError):
        return None  # absent or unreadable: computed again and rewritten


def _write(path: Path, results: list[Spectrum]) -> None:
    arrays = {f"evals{i}": r.evals for i, r in enumerate(results) if r.evals is not None}
    tmp = path.with_name(f".{path.stem}-{uuid.uuid4().hex[:8]}.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps([r.metrics for r in results])), **arrays)
        os.replace(tmp, path)
    except OSError:  # a cache that cannot be written only costs time
        tmp.unlink(missing_ok=True)
