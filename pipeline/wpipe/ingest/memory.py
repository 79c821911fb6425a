"""The process's memory: glibc malloc's settings for an ingest, and giving back what the
allocators keep after a step (Arrow's pool, glibc's free lists). Nothing to do without glibc
(macOS, Windows, musl) beyond Arrow's part."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# glibc malloc's settings in an ingest's processes (name: (value, mallopt parameter)):
# - arenas: glibc gives each thread that allocates an arena of its own (up to 8 per core) and
#   keeps what was freed in it: DuckDB's, deltalake's, BLAS's and the spectra's threads made a
#   one-process ResNet50 ingest peak at 412 / 391 MB, against 373 / 346 MB with two arenas;
# - a fixed mmap threshold: glibc raises its own to the largest block freed (up to 32 MB), so
#   after one 9 MB tensor every smaller array comes from the heap and what is freed stays in
#   it: the same ingest peaked at 305-310 MB against 342-346 MB;
# - a trim threshold (fixed, as the mmap threshold fixes it at 128 KB otherwise): the heap's
#   top is given back past 4 MB free, not after every large free, which made a VGG16-sized
#   ingest's statistics 4.4-4.7 s against 3.3-3.9 s (3.4-3.7 s at 4 MB).
MALLOC_SETTINGS = {
    "MALLOC_ARENA_MAX": ("2", -8),
    "MALLOC_MMAP_THRESHOLD_": (str(16 << 20), -3),
    "MALLOC_TRIM_THRESHOLD_": (str(4 << 20), -1),
}


def _libc_function(name: str) -> Callable | None:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):
        return None


def tune_malloc() -> None:
    """MALLOC_SETTINGS in this process and in the workers it starts (their server reads them
    from the environment when it starts); a value the user set wins."""
    mallopt = _libc_function("mallopt")
    for name, (default, parameter) in MALLOC_SETTINGS.items():
        value = os.environ.setdefault(name, default)
        if mallopt is not None and value.isdigit():
            mallopt(parameter, int(value))


def give_back() -> None:
    """Return to the OS the memory Arrow's pool and glibc's heap hold freed: before a step
    that allocates afresh, so its peak does not stack on what earlier steps left (10,000
    small checkpoints: the driver peaked at 311-312 MB against 324 at the same CPU)."""
    import pyarrow as pa  # here: the CLI sets the malloc settings before it loads Arrow

    pa.default_memory_pool().release_unused()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


# What one file may add to a pool worker's address space (RLIMIT_AS) while it is read: a base
# for the libraries' own work (a first JIT compile, BLAS and spectra threads' stacks and
# arenas) plus a multiple of the file's bytes (its tensors as float64, the previous
# checkpoint's for drift, the statistics' buffers). A damaged 30 KB file on which the HDF5
# library loops allocated ~2 GiB in its first seconds: now its allocations fail, and the file
# is one `memory-limit` row.
FILE_MEMORY_BASE = 1536 << 20
FILE_MEMORY_FACTOR = 12


@contextmanager
def bounded(file_bytes: int) -> Iterator[None]:
    """In a pool worker (a child process), bound what reading one file may allocate; in the
    driver (one-process ingests, tests) nothing changes."""
    import multiprocessing

    try:
        import resource
    except ImportError:  # not a POSIX system
        yield
        return
    if multiprocessing.parent_process() is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + FILE_MEMORY_BASE + FILE_MEMORY_FACTOR * max(file_bytes, 0)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space() -> int:
    """The process's virtual size now (bytes), from /proc; 0 where there is none."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
