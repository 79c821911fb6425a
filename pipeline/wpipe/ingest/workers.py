"""The per-file executor: map a function over files in worker processes, each file under a
time limit, and yield every file's outcome as it finishes.

Why a process per worker and not a thread: a damaged HDF5 file can make the HDF5 library spin
forever inside C code, where no Python-level timeout reaches. Only killing the process stops
it, so every file runs in a worker that can be killed and replaced. `pebble.ProcessPool` does
the process management (per-task timeouts, replacing a worker that was killed or died); this
module adds the policy:

- `map_files(function, items, jobs=..., timeout=...)` calls `function(item)` for every item in
  a worker and yields `(item, result)` pairs in completion order. `function` must be picklable
  (a module-level function) and should itself turn ordinary errors into a result value.
- A file that runs longer than `timeout` seconds is stopped (its worker killed and replaced) and
  yields `(item, WorkerFailure("timeout", ...))`; a worker that dies (killed by the kernel's OOM
  killer, a segfault in a C library, `kill -9`) yields `WorkerFailure("worker-died", ...)`; an
  exception escaping `function` yields `WorkerFailure("internal-error", ...)`. Only that file
  fails; the other files go on.
- At most `jobs * WINDOW_PER_WORKER` items are in flight, so a huge list of files does not turn
  into a huge queue of pending results in the parent.

Workers are started with the `forkserver` method: a fresh server process (no DuckDB connection,
no threads of the parent) forks each worker, so replacing one costs milliseconds instead of a
new interpreter importing numpy/h5py/pyarrow. The server preloads the modules in `preload`.

`timeout=None` with `jobs=1` runs in the calling process (no limit, no isolation): for callers
that want a debugger or a profiler on the read itself.

`map_files_on_dask(...)` is the same map on Dask distributed (`--dask local` or a scheduler
address): Dask does the scheduling, retries and worker replacement; each item is submitted
under a key derived from its content (`task_key`), so a retried or duplicated task is the same
task and its result arrives once. There is no per-file time limit there: Dask cannot stop a
running task, and its worker processes are daemonic (they cannot start a killable child).
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pebble
import pebble.pool.process

# The default time limit of a task (its files read, analysed, written), scaled with its size:
# a base for the task (a worker's start, a small file's spectra), a second per file and a rate
# for its bytes eight times slower than the slowest we measured (the biggest real checkpoints
# take well under a minute per GB on one core): 11 s for a small file, ~9 min for a GB. A file
# that makes the HDF5 library loop is stopped in seconds, not after ten minutes.
AUTO = "auto"
AUTO_BASE_SECONDS = 10.0
AUTO_SECONDS_PER_FILE = 1.0
AUTO_BYTES_PER_SECOND = 2 << 20
DEFAULT_FILE_TIMEOUT = AUTO
TimeLimit = float | None | str  # seconds, no limit, or AUTO
WINDOW_PER_WORKER = 4
# What an ingest's worker runs (the map's functions are wpipe.ingest.filemap's; a file's compute
# columns need the forward pass, which the driver never loads): imported once by the pool's
# server (or each Dask worker) as it starts, not by every worker, and nothing of the driver's.
READER_MODULES = ("wpipe.ingest.filemap", "wpipe.forward.cost")

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class WorkerFailure:
    """Why a file produced no result: `code` is an `ingest_errors.error` value."""

    code: str  # "timeout" | "worker-died" | "internal-error"
    message: str


def map_files(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    jobs: int = 1,
    timeout: float | Callable[[Item], float] | None = 600.0,
    name: Callable[[Item], str] = str,
    preload: Sequence[str] = (),
) -> Iterator[tuple[Item, Result | WorkerFailure]]:
    """Yield `(item, function(item))` for every item, in completion order; a file that timed
    out, killed its worker or raised yields a `WorkerFailure` instead (named by `name(item)`).
    `timeout`: seconds per item, None (no limit), or a function of the item (`scaled_limit`)."""
    items = list(items)
    if not items:
        return
    if timeout is None and jobs <= 1:
        for item in items:
            yield item, _call(function, item, name)
        return
    # no more workers than items: pebble starts them all at once (one file: one worker)
    n_workers = max(1, min(jobs, len(items)))
    with _OrderlyPool(max_workers=n_workers, context=_context(preload)) as pool:
        try:
            yield from _windowed(pool, function, items, jobs, timeout, name)
        finally:
            pool.stop()  # a consumer that stops early must not leave workers running
            pool.join()


def scaled_limit(sizes: Sequence[int]) -> float:
    """The default time limit of a task reading files of these sizes (see AUTO_*)."""
    return (AUTO_BASE_SECONDS + AUTO_SECONDS_PER_FILE * len(sizes)
            + sum(sizes) / AUTO_BYTES_PER_SECOND)  # fmt: skip


class _OrderlyStop(pebble.pool.process.PoolManager):
    """pebble's pool manager stopping its workers before it closes their channels. pebble
    closes first, which unlinks the channels' named semaphores: a worker still starting (the
    second of two workers, when one read every file) then fails to unpickle its channel and
    prints a `SemLock._rebuild` FileNotFoundError traceback on the user's terminal. A worker
    stopped first dies quietly, wherever it is in its start."""

    def stop(self) -> None:
        self.worker_manager.force_stop_workers()
        self.worker_manager.close_channels()


class _OrderlyPool(pebble.ProcessPool):
    def __init__(self, max_workers: int, context: Any) -> None:
        super().__init__(max_workers=max_workers, context=context)
        self._pool_manager = _OrderlyStop(self._context, context)


def _windowed(
    pool: pebble.ProcessPool,
    function: Callable[[Any], Any],
    items: list[Any],
    jobs: int,
    timeout: float | Callable[[Any], float] | None,
    name: Callable[[Any], str],
) -> Iterator[tuple[Any, Any]]:
    todo = iter(items)
    running: dict[Future, tuple[Any, float | None]] = {}
    window = max(1, jobs) * WINDOW_PER_WORKER
    while True:
        for item in todo:
            limit = timeout(item) if callable(timeout) else timeout
            running[pool.schedule(function, args=(item,), timeout=limit)] = (item, limit)
            if len(running) >= window:
                break
        if not running:
            return
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            item, limit = running.pop(future)
            yield item, _result(future, name(item), limit, callable(timeout))


def _result(future: Future, label: str, limit: float | None, scaled: bool) -> Any:
    try:
        return future.result()
    except FutureTimeout:
        why = ("the default limit for its size; --file-timeout sets another" if scaled
               else "--file-timeout")  # fmt: skip
        return WorkerFailure(
            "timeout", f"{label}: stopped after {limit:.0f} s ({why}); the file may be "
            "damaged in a way that makes the HDF5 library loop"
        )  # fmt: skip
    except pebble.ProcessExpired as exc:
        return WorkerFailure("worker-died", f"{label}: the worker reading it died ({_death(exc)})")
    except BrokenProcessPool as exc:  # workers that cannot even start (no memory, no fork)
        return WorkerFailure("worker-died", f"{label}: no worker could read it ({exc})")
    except Exception as exc:  # escaped the per-file function: a bug, reported for this file only
        return WorkerFailure(
            "internal-error", f"{label}: wpipe failed on this file ({type(exc).__name__}: {exc})"
        )


def _call(function: Callable[[Any], Any], item: Any, name: Callable[[Any], str]) -> Any:
    try:
        return function(item)
    except Exception as exc:
        return WorkerFailure(
            "internal-error",
            f"{name(item)}: wpipe failed on this file ({type(exc).__name__}: {exc})",
        )


def _death(exc: pebble.ProcessExpired) -> str:
    code = exc.exitcode
    if code is not None and code < 0:
        signal = -code
        hint = " — out of memory?" if signal == 9 else ""
        return f"signal {signal}{hint}"
    return f"exit code {code}"


def start_server(preload: Sequence[str]) -> None:
    """Start the pool's server now, for a caller whose pool will surely be needed: its imports
    of `preload` (~0.6 s of CPU for the readers) run on another core while the caller starts,
    instead of after it; the pool uses it when it starts. Nothing where there is no
    forkserver."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    _context(preload)
    forkserver.ensure_running()


def _context(preload: Sequence[str]) -> Any:
    # forkserver: workers fork from a clean server, not from the parent (which holds DuckDB
    # and its threads); spawn where forkserver does not exist (Windows, macOS without fork).
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # `__main__` too: each worker would otherwise import the main script again (the `wpipe`
    # script: the CLI, Typer and rich), where the server's import serves every worker
    context.set_forkserver_preload(["__main__", *preload])
    return context


# Extra attempts of a Dask task that raised (wpipe's per-file function only raises when its
# worker broke down mid-call, e.g. a full temporary disk); lost workers are Dask's business
# (distributed.scheduler.allowed-failures).
DASK_RETRIES = 2


def task_key(parts: tuple) -> str:
    """A Dask key for one file's task: same file, content and settings -> same key."""
    digest = hashlib.sha256(repr(parts).encode("utf-8", "backslashreplace")).hexdigest()
    return f"wpipe-file-{digest[:32]}"


def map_files_on_dask(
    function: Callable[[Item], Result],
    items: Sequence[Item],
    address: Any,
    jobs: int,
    keys: Sequence[str],
    name: Callable[[Item], str] = str,
    preload: Sequence[str] = (),
) -> Iterator[tuple[Item, Result | WorkerFailure]]:
    """`map_files` on a Dask cluster: `address` is `local` (a LocalCluster of `jobs`
    single-threaded worker processes, which preload the modules in `preload`), a scheduler's
    address, or a client from `dask_client` (one cluster for several maps); `keys` name the
    tasks."""
    if not items:
        return
    if isinstance(address, str):
        with dask_client(address, jobs, preload) as client:
            yield from map_files_on_dask(function, items, client, jobs, keys, name)
        return
    import distributed

    futures = address.map(function, items, key=list(keys), retries=DASK_RETRIES, pure=True)
    item_of = {future.key: item for future, item in zip(futures, items, strict=True)}
    for future in distributed.as_completed(futures):
        item = item_of[future.key]
        if future.status == "finished":
            yield item, future.result()
        else:
            yield item, _dask_failure(future.exception(), name(item))
        future.release()


def _dask_failure(error: BaseException | None, label: str) -> WorkerFailure:
    from distributed import KilledWorker

    if isinstance(error, KilledWorker):  # its workers kept dying (allowed-failures)
        return WorkerFailure("worker-died", f"{label}: the Dask cluster gave up on this file "
                             f"after its workers died ({error})")  # fmt: skip
    return WorkerFailure(
        "internal-error", f"{label}: wpipe failed on this file ({type(error).__name__}: {error})"
    )


@contextmanager
def dask_client(address: str, jobs: int, preload: Sequence[str] = ()) -> Iterator[Any]:
    """A `distributed.Client` on `address` (`local`: a LocalCluster of `jobs` worker
    processes, started here and stopped on exit; its workers import `preload` as they start,
    in parallel, instead of in their first task)."""
    from wpipe.core import extras

    extras.require("distributed", "dask", "--dask")
    import distributed

    if address == "local":
        with (
            distributed.LocalCluster(
                n_workers=max(1, jobs),
                threads_per_worker=1,  # the per-file work holds the GIL (h5py, numpy)
                processes=True,
                dashboard_address=None,  # nobody looks at it during an ingest
                silence_logs=40,
                preload=[*preload],
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
        return
    try:  # how long to try: Dask's own setting, distributed.comm.timeouts.connect
        client = distributed.Client(address)
    except OSError as exc:
        raise ConnectionError(f"--dask {address}: cannot reach the scheduler ({exc})") from None
    with client:
        yield client
