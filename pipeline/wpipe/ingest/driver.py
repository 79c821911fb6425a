"""Ingest: find model files (`walk`), decide what to read (`plan`), map each through
`filemap.process_file` (in a process pool), commit the results to the lake in batches and load
each batch into DuckDB.

The steps live beside this module: the map over files in `filepool`, the batches committed
and loaded in `batches`, the last steps (prune, derived tables, compaction) in `finish`.
Workers are run by `wpipe.ingest.workers.map_files` (each file under a time limit, a hung or dead
worker replaced, its file recorded as `timeout` / `worker-died`). The driver only plans,
commits and loads: an unchanged file costs a stat; files that may be
copies of each other (same size) are hashed first so identical content is read once; each
file's drift against the previous checkpoint of its series is computed by the worker that
reads it. `commit_batch` is the one step that writes the lake's log; it takes the workers'
outcomes, wherever they ran.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from wpipe import store
from wpipe.analyse.spectra import SpectraOptions
from wpipe.analyse.spectra_tables import CACHE_FOLDER
from wpipe.analyse.stats import StatsOptions
from wpipe.analyse.tables import ValuesMode, model_id_for
from wpipe.core import dblock
from wpipe.ingest import memory, workers
from wpipe.ingest.batches import BATCH_MODELS, Driver, commit_batch, copy_rows, release
from wpipe.ingest.filemap import Outcome, Settings
from wpipe.ingest.filepool import FilePool
from wpipe.ingest.finish import finish, is_gone, prune_gone
from wpipe.ingest.plan import Report, key_of, make_plan, record_skipped
from wpipe.readers.walk import walk
from wpipe.store import remote, space, sync
from wpipe.store.lake import Lake
from wpipe.store.space import StoreFailed

SWEEP_REMOTE_AGE = 86400.0  # seconds: uncommitted files of a lake on object storage kept so long

__all__ = [
    "BATCH_MODELS", "Outcome", "Report", "StoreFailed", "commit_batch", "copy_rows", "discover",
    "ingest", "ingest_options",
]  # fmt: skip


class ProgressSink(Protocol):
    def phase(self, name: str, total: int) -> None: ...
    def advance(self, n: int = 1, item: str = "") -> None: ...


class _Silent:
    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self, n: int = 1, item: str = "") -> None:
        pass


# What a file's rows hold: raised when a release changes them (new tables or columns, new role
# rules), so that files ingested by an older wpipe are read again rather than kept half-filled.
ROWS_VERSION = 4  # 4: content hashes, compute per layer, structure of weights files


def ingest_options(options: StatsOptions, values: ValuesMode, spectra: SpectraOptions) -> str:
    """The options that change a model's rows, as stored in models.ingest_options."""
    return (
        f"rows={ROWS_VERSION} values={values.text} near_zero={options.near_zero:g} "
        f"bins={options.bins} "
        f"spectra={spectra.mode} pool={spectra.pool} conv_rescale={spectra.conv_rescale}"
    )


def discover(paths: Iterable[str | os.PathLike], skip: Iterable[Path] = ()) -> list[Path]:
    """Model saves under `paths` (`walk.walk`'s rules), never any of `skip` (by inode)."""
    return walk([Path(p) for p in paths], dblock.Protected(list(skip)))[0]


def _stops_on_full_disk(function: Callable[..., Report]) -> Callable[..., Report]:
    """A full disk anywhere in the run (lake, database, a worker's files) is StoreFailed."""

    @functools.wraps(function)
    def run(*args, **kwargs) -> Report:
        try:
            return function(*args, **kwargs)
        except StoreFailed:
            raise
        except Exception as exc:
            if not space.is_full(exc):
                raise
            raise StoreFailed(space.full_reason(exc)) from None

    return run


@_stops_on_full_disk
def ingest(
    paths: Iterable[str | os.PathLike],
    db: store.Database,
    lake: Path | str | Lake,
    options: StatsOptions | None = None,
    values: ValuesMode | None = None,
    jobs: int = 1,
    prune: bool = False,
    tag_pattern: str | None = None,
    drift: bool = True,
    on_done: Callable[[Outcome], None] | None = None,
    spectra: SpectraOptions | None = None,
    progress: ProgressSink | None = None,
    file_timeout: workers.TimeLimit = workers.DEFAULT_FILE_TIMEOUT,
    dask: str | None = None,
) -> Report:
    """Bring the database and lake up to date with the model files under `paths` (local paths
    or object-storage URLs), then re-derive tags, attach training logs found next to
    checkpoints, and complete series drift. `lake` is a folder or a URL (`s3://…`).

    Each file is read in a worker process and stopped after `file_timeout` seconds (None: no
    limit, and with jobs=1 the files are read in this process; `workers.AUTO`: a limit scaled
    with the task's bytes, `workers.scaled_limit`); `dask` (`local` or a
    scheduler address) runs the per-file map on Dask distributed instead."""
    started = time.perf_counter()
    memory.tune_malloc()
    progress = progress or _Silent()
    options = options or StatsOptions()
    values = values or ValuesMode.default()
    spectra = spectra or SpectraOptions()
    paths = [str(p) for p in paths]
    urls = [p for p in paths if remote.is_url(p)]
    roots = [Path(p).resolve() for p in paths if not remote.is_url(p)]
    if not isinstance(lake, Lake):
        lake = remote.open_lake(lake)
    local_lake = Path(lake.location.root) if "://" not in lake.location.root else None
    if spectra.cache_dir is None and local_lake is not None:
        spectra = replace(spectra, cache_dir=str(local_lake / CACHE_FOLDER))
    report = Report()
    report.warnings += sync.reconcile(db, lake)
    # data files a killed or failed run wrote and never committed (on object storage another
    # machine's may be in flight: only day-old ones)
    lake.sweep(0.0 if local_lake else SWEEP_REMOTE_AGE)
    settings = Settings(options, values, spectra, ingest_options(options, values, spectra))

    progress.phase("scan", 0)
    # never the database, its WAL or the lake as input: reading the database closes a
    # descriptor of it, which drops DuckDB's POSIX lock and lets another writer in
    files, skipped = walk(roots, dblock.Protected(dblock.protected_paths(db.path, local_lake)))
    if urls:  # the same rules, on a shadow of the listing (remote.discover)
        files += remote.discover(urls, discover).saves
    report.files = len(files) + len(skipped)
    for entry in skipped:
        record_skipped(entry, db, report, on_done)
    known = db.known_files()  # the one query a run with nothing to do makes
    plan = make_plan(files, db, lake, settings, tag_pattern, report, drift, on_done, known)
    current = {p: v[2] for p, v in known.items() if v[3] == settings.text}
    shas = dict(current)  # path -> sha256 of rows computed with these settings
    driver = Driver(db, lake, report, on_done, progress, current, known)

    with FilePool(jobs, file_timeout, dask) as pool:
        if plan.to_hash:
            progress.phase("hash", len(plan.to_hash))
            plan.work += driver.sort_hashed(plan.to_hash, pool.hashes(plan.to_hash), shas)
        progress.phase("read", len(plan.work))
        driver.expect(plan.work)
        for chunk in pool.chunk_outcomes(plan.work):
            progress.advance(len(chunk.outcomes), Path(chunk.outcomes[-1].path).name)
            driver.take_chunk(chunk)
    driver.flush()
    driver.copy_duplicates()
    shas.update(driver.shas)
    if drift:
        driver.store_drift({model_id_for(p): s for p, s in shas.items()}, final=True)
        db.release_memory()  # DuckDB's cache of the drift rows
    if prune:
        report.pruned = prune_gone(db, lake, roots, urls, {key_of(f) for f in files})
    else:  # said, not done: the paths as the run began (known) spare a query
        gone = is_gone(roots, urls, {key_of(f) for f in files})
        report.missing = sum(1 for path in known if gone(path))
    finish(db, lake, driver, tag_pattern, drift, progress, [*roots, *urls])
    # what workers stopped by --file-timeout or killed had written, and files this run's
    # commits replaced: every worker is stopped and the lock is held (a run that read and
    # committed nothing wrote nothing: the sweep at the start was enough)
    if plan.work or plan.to_hash or report.pruned:
        lake.sweep(0.0 if local_lake else SWEEP_REMOTE_AGE)
    if (
        report.ingested
        or report.pruned
        or any(o.error != "unchanged-failure" for o in report.failed)
    ):
        release(db)
        sync.push_shared(db, lake)  # drift, errors, names: for `wpipe sync` elsewhere
    report.seconds = time.perf_counter() - started
    return report
