"""Ingest: find model files (`walk`), decide what to read (`plan`), map each through
`filemap.process_file` (in a process pool), commit the results to the lake in batches and load
each batch into DuckDB.

Workers are run by `wpipe.workers.map_files` (each file under a time limit, a hung or dead
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
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from wpipe import compare, dblock, memory, remote, schema, store, workers
from wpipe.analysis import StatsOptions
from wpipe.filemap import (
    ChunkOutcome,
    FileJob,
    Outcome,
    Settings,
    TableSink,
    hash_files,
    process_chunk,
    process_file,
)
from wpipe.plan import (
    Report,
    chunked,
    fingerprint_or_none,
    key_of,
    make_plan,
    record_skipped,
    series_order,
)
from wpipe.spectra import SpectraOptions
from wpipe.spectra_tables import CACHE_FOLDER
from wpipe.store import space, sync
from wpipe.store.lake import DataFile, Lake, write_data_file
from wpipe.store.space import StoreFailed
from wpipe.tables import ValuesMode, file_stem, model_id_for
from wpipe.textsafe import to_os
from wpipe.walk import walk

# A batch is committed and loaded when it holds this many models, this many bytes of small
# tables, or is this old: few commits, bounded driver memory, little lost to a kill. A
# batch's fixed cost (nine commits, versions recorded, served views re-pointed over a growing
# list of files) was ~0.3 ms a small checkpoint at 256 models (~10 s of driver at 10,000).
BATCH_MODELS = 2048
BATCH_BYTES = 64 << 20
BATCH_SECONDS = 30.0
# Drift rows the driver converts to Arrow at a time (a few hundred KB of dicts at most).
DRIFT_ROWS_HELD = 4096
# Tables with more files than this are compacted (small files merged) at the end of a run.
COMPACT_FILES = 64
SWEEP_REMOTE_AGE = 86400.0  # seconds: uncommitted files of a lake on object storage kept so long

__all__ = [
    "Outcome", "Report", "StoreFailed", "commit_batch", "discover", "ingest", "ingest_options",
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
    driver = _Driver(db, lake, report, on_done, progress, current, known)

    with _Pool(jobs, file_timeout, dask) as pool:
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
        report.pruned = _prune(db, lake, roots, urls, {key_of(f) for f in files})
    else:  # said, not done: the paths as the run began (known) spare a query
        gone = _is_gone(roots, urls, {key_of(f) for f in files})
        report.missing = sum(1 for path in known if gone(path))
    _finish(db, lake, driver, tag_pattern, drift, progress, [*roots, *urls])
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
        _release(db)
        sync.push_shared(db, lake)  # drift, errors, names: for `wpipe sync` elsewhere
    report.seconds = time.perf_counter() - started
    return report


class _Pool:
    """The map's two phases (hash, read) through wpipe.workers, small files a chunk per task:
    each task in a replaceable worker under the per-file time limit, or on Dask (`dask`:
    `local` or an address; a task's key follows its files' content and the settings, so a
    retried or duplicated task is one result). A chunk that is stopped or whose worker dies
    is read again one file per task, so only the culprit fails. Files on object storage are
    one task each (each is fetched to a temporary copy by the worker that reads it)."""

    def __init__(self, jobs: int, file_timeout: workers.TimeLimit, dask: str | None = None) -> None:
        self.jobs, self.timeout, self.dask = jobs, file_timeout, dask
        self.stack = ExitStack()
        self.client = None  # one Dask client (and LocalCluster) for both phases

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _map(self, function: Callable, items: list, name: Callable, sizes: Callable) -> Iterator:
        """`sizes(item)`: the bytes of the item's files (for the default time limit)."""
        if self.dask is None:
            limit = self.timeout
            if limit == workers.AUTO:
                limit = lambda item: workers.scaled_limit(sizes(item))  # noqa: E731
            return workers.map_files(function, items, self.jobs, limit, name=name,
                                     preload=[__name__])  # fmt: skip
        if self.client is None and items:
            self.client = self.stack.enter_context(
                workers.dask_client(self.dask, self.jobs, preload=[__name__]))  # fmt: skip
        keys = [workers.task_key((function.__name__, _identity(item))) for item in items]
        return workers.map_files_on_dask(function, items, self.client, self.jobs, keys, name)

    def hashes(self, jobs: list[FileJob]) -> Iterator[tuple[str, str | None, str | None]]:
        chunks = chunked([j.path for j in jobs], [j.size for j in jobs], self.jobs)
        size = {j.path: j.size for j in jobs}
        sizes = lambda chunk: [size[p] for p in chunk]  # noqa: E731
        for chunk, result in self._map(hash_files, chunks, lambda c: c[0], sizes):
            if isinstance(result, workers.WorkerFailure):
                for path in chunk:
                    yield path, None, result.message
            else:
                yield from result

    def chunk_outcomes(self, jobs: list[FileJob]) -> Iterator[ChunkOutcome]:
        if any(j.remote is not None for j in jobs):
            for outcome in self.outcomes(jobs):
                yield ChunkOutcome([outcome], [])
            return
        jobs = series_order(jobs)
        chunks = chunked(jobs, [j.size for j in jobs], self.jobs)
        again: list[FileJob] = []
        sizes = lambda chunk: [j.size for j in chunk]  # noqa: E731
        for chunk, result in self._map(process_chunk, chunks, lambda c: c[0].path, sizes):
            if not isinstance(result, workers.WorkerFailure):
                yield result
            elif len(chunk) > 1:
                again += chunk  # what the stopped task had written is never committed
            else:
                yield ChunkOutcome([_failure(chunk[0], result)], [])
        for outcome in self.outcomes(again):
            yield ChunkOutcome([outcome], [])

    def outcomes(self, jobs: list[FileJob]) -> Iterator[Outcome]:
        for job, result in self._map(process_file, jobs, lambda job: job.path,
                                     lambda job: [job.size]):  # fmt: skip
            if isinstance(result, workers.WorkerFailure):
                result = _failure(job, result)
            yield result


def _failure(job: FileJob, failure: workers.WorkerFailure) -> Outcome:
    # what a killed worker had written is never committed (vacuumed later)
    return Outcome(job.path, model_id_for(job.path), "failed", error=failure.code,
                   message=failure.message, bytes_read=job.size)  # fmt: skip


def _identity(item: FileJob | str | list) -> tuple:
    """What a task's result depends on: the files, their content tags and the settings."""
    if isinstance(item, list):  # a chunk: its files, in order
        return tuple(_identity(i) for i in item)
    if isinstance(item, str):
        return (item,)
    tag = item.remote.tag if item.remote else ""
    return (item.path, item.size, item.mtime, tag, item.sha256, item.previous,
            item.settings.text, item.lake.root)  # fmt: skip


class _Driver:
    """Collects outcomes, commits them in batches, loads each batch, remembers drift."""

    def __init__(
        self, db, lake, report, on_done, progress, current: dict[str, str], known: dict
    ) -> None:
        """`current`: path -> sha256 of the models whose rows have this run's settings."""
        self.db, self.lake, self.report = db, lake, report
        self.on_done, self.progress = on_done, progress
        # sha256 -> model_id of content already in (or bound for) the lake
        self.by_sha = {sha: model_id_for(p) for p, sha in current.items()}
        self.known_ids = {model_id_for(p) for p in known}  # models the database holds
        self.pending: list[Outcome] = []
        self.shared: list[DataFile] = []  # data files of the pending chunks' small tables
        self.to_load = 0  # models the run may load (the load phase's total)
        self.held = 0  # bytes of the pending outcomes' in-memory tables
        self.since = time.monotonic()
        self.copies: list[tuple[FileJob, str]] = []  # (job, model_id whose rows it copies)
        # drift rows as Arrow a few thousand at a time: as dicts, 10,000 small checkpoints'
        # ~70,000 rows held ~150 MB of the driver until the end of the run
        self.drift: list[pa.Table] = []
        self.drift_rows: list[dict] = []
        self.shas: dict[str, str] = {}
        # model_id -> sha256 of the content its rows hold once this run is over, where known
        # already: a held drift row is stored once its previous checkpoint's is
        self.sha_by_id = {model_id_for(p): sha for p, sha in current.items()}
        self.touched: list[tuple[str, float]] = []
        self.jobs: dict[str, FileJob] = {}  # path -> job of the files being read

    def sort_hashed(self, jobs: list[FileJob], hashed: Iterable, shas: dict) -> list[FileJob]:
        """After the hash phase: unchanged content is touched, copies of known or earlier
        content are copied, the rest is read (with its hash, not hashed again)."""
        by_path = {j.path: j for j in jobs}
        results = {}
        for path, sha, error in hashed:
            self.progress.advance(1, Path(path).name)
            results[path] = (sha, error)
        work = []
        for job in jobs:  # in walk order, so the first of identical files is the one read
            sha, error = results[job.path]
            if shas.get(job.path) != sha:  # its rows change (or go): its sha is not known yet
                self.sha_by_id.pop(model_id_for(job.path), None)
            if error is not None:
                self._failed(Outcome(job.path, model_id_for(job.path), "failed",
                                     error="io-error", message=error), job)  # fmt: skip
            elif shas.get(job.path) == sha:
                self.db.touch_model(job.path, job.mtime)
                self.touched.append((job.path, job.mtime))
                self.report.unchanged += 1
            elif sha in self.by_sha:
                self.copies.append((replace(by_path[job.path], sha256=sha), self.by_sha[sha]))
            else:
                self.by_sha[sha] = model_id_for(job.path)
                work.append(replace(job, sha256=sha))
        return work

    def expect(self, work: list[FileJob]) -> None:
        """The files to be read: their rows, and so their hashes, are not known until then."""
        self.jobs = {job.path: job for job in work}
        self.to_load = len(work) + len(self.copies)
        for job in work:
            self.sha_by_id.pop(model_id_for(job.path), None)

    def take_chunk(self, chunk: ChunkOutcome) -> None:
        """A chunk's outcomes, committed in one batch (they share its data files)."""
        self.shared += chunk.files
        for outcome in chunk.outcomes:
            self.take(outcome, flush=False)
        self._maybe_flush()

    def take(self, outcome: Outcome, flush: bool = True) -> None:
        if outcome.error == "disk-full":  # every file after it would fail alike: stop here
            self.discard_pending()
            raise StoreFailed(outcome.message)
        if outcome.status == "failed":
            self._failed(outcome, self.jobs.get(outcome.path))
            return
        self.report.ingested += 1
        self.report.n_tensors += outcome.n_tensors
        self.report.n_params += outcome.n_params
        self.report.bytes_read += outcome.bytes_read
        self.shas[outcome.path] = outcome.sha256
        self.sha_by_id[outcome.model_id] = outcome.sha256
        self.by_sha.setdefault(outcome.sha256, outcome.model_id)
        self.drift_rows += outcome.drift
        outcome.drift = []
        if len(self.drift_rows) >= DRIFT_ROWS_HELD:
            self._hold_drift()
        self.pending.append(outcome)
        if self.on_done:
            self.on_done(outcome)
        self.held += outcome.held_bytes()
        if flush:
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (len(self.pending) >= BATCH_MODELS or self.held >= BATCH_BYTES
                or time.monotonic() - self.since >= BATCH_SECONDS):  # fmt: skip
            self.flush()

    def _failed(self, outcome: Outcome, job: FileJob | None) -> None:
        size, mtime = (job.size, job.mtime) if job else fingerprint_or_none(outcome.path)
        self.db.record_error(outcome.path, outcome.error, outcome.message, size, mtime)
        self.report.failed.append(outcome)
        if self.on_done:
            self.on_done(outcome)

    def discard_pending(self) -> None:
        """The data files of outcomes not committed yet (the run is stopping)."""
        self.lake.delete_uncommitted([*(f for o in self.pending for f in o.files), *self.shared])
        self.pending, self.shared = [], []

    def flush(self) -> None:
        if self.pending:
            self.progress.phase("load", max(self.to_load, len(self.pending)))
            ids = [o.model_id for o in self.pending]
            try:
                files, versions = commit_batch(self.lake, self.pending, self.known_ids,
                                               self.shared)  # fmt: skip
                self.db.load_batch(self.lake, files, ids, versions,
                                   self.known_ids.intersection(ids))  # fmt: skip
                _release(self.db)  # bounded whatever the number of batches
            except Exception as exc:
                if space.is_full(exc):
                    # commits the database did not load are rolled back by the next run
                    self.discard_pending()
                    raise StoreFailed(space.full_reason(exc)) from None
                if not isinstance(exc, duckdb.Error):
                    raise
                self._unloadable(exc)
                return
            self.known_ids.update(ids)
            self.store_drift(self.sha_by_id)
            self.progress.advance(len(self.pending))
            self.pending, self.shared = [], []
            self.held = 0
            self.progress.phase("read", 0)  # back to the read phase, its count kept
        self.since = time.monotonic()

    def _unloadable(self, exc: duckdb.Error) -> None:
        """The database refused the batch (after its retry under a higher memory limit): its
        lake commits are rolled back and each of its files is recorded as `load-failed`, so
        the run goes on and the next one neither meets a lake ahead of its database nor takes
        the batch for ingested. A batch of several files is read again next time (which one
        was at fault is not known); a file alone in its batch is a failure until it changes."""
        sync.reconcile(self.db, self.lake)  # restores the versions the database holds
        failed = {o.model_id for o in self.pending}
        alone = len(self.pending) == 1
        for outcome in self.pending:
            self.report.ingested -= 1
            self.report.copied -= outcome.status == "copied"
            self.shas.pop(outcome.path, None)
            self.sha_by_id.pop(outcome.model_id, None)
            job = self.jobs.get(outcome.path)
            size, mtime = (job.size, job.mtime) if job and alone else (-1, 0.0)
            message = (f"{outcome.path}: its rows could not be loaded into the database "
                       f"({type(exc).__name__}: {space.first_line(exc)}); not stored")  # fmt: skip
            self.db.record_error(outcome.path, "load-failed", message, size, mtime)
            failure = Outcome(outcome.path, outcome.model_id, "failed", error="load-failed",
                              message=message)  # fmt: skip
            self.report.failed.append(failure)
            if self.on_done:
                self.on_done(failure)
        self.by_sha = {sha: m for sha, m in self.by_sha.items() if m not in failed}
        self._hold_drift()
        self.drift = [t.filter(pc.invert(pc.is_in(t.column("model_b"), pa.array(list(failed)))))
                      for t in self.drift]  # fmt: skip
        self.pending, self.shared, self.held = [], [], 0
        self.since = time.monotonic()
        self.progress.phase("read", 0)

    def copy_duplicates(self) -> None:
        """Files identical to another model: that model's rows under their own id and path."""
        if not self.copies:
            return
        self.progress.phase("copy", len(self.copies))
        for job, source in self.copies:
            if source not in self.known_ids:  # the file it is identical to failed
                self._failed(Outcome(job.path, model_id_for(job.path), "failed",
                                     error="copy-of-failed", message=f"{job.path}: identical "
                                     "to a file that failed (see its error)"), job)  # fmt: skip
                continue
            outcome = copy_rows(self.lake, job, source)
            self.report.ingested += 1
            self.report.copied += 1
            self.shas[job.path] = job.sha256
            self.pending.append(outcome)
            self.progress.advance(1, Path(job.path).name)
            if len(self.pending) >= BATCH_MODELS:
                self.flush()
        self.flush()

    def _hold_drift(self) -> None:
        if self.drift_rows:
            self.drift.append(pa.Table.from_pylist(self.drift_rows, schema.DRIFT.arrow_schema))
            self.drift_rows = []

    def store_drift(self, by_id: dict[str, str], final: bool = False) -> None:
        """Held drift rows whose previous checkpoint's hash is known (`by_id`: model_id ->
        sha256), stored a held table at a time (a pair's rows are in one: an outcome's are
        held together), at each batch: held to the end, 10,000 small checkpoints' drift kept
        ~17 MB of the driver and their store took ~60 MB more. The rest stay held; `final`:
        they are dropped (their previous checkpoint failed or is gone)."""
        self._hold_drift()
        ids, id_shas = pa.array(list(by_id), pa.string()), pa.array(list(by_id.values()))
        held = []
        for rows in self.drift:
            found = pc.index_in(rows.column("model_a"), value_set=ids)
            known = pc.is_valid(found)
            if not final:
                waiting = rows.filter(pc.invert(known))
                if waiting.num_rows:
                    held.append(waiting)
            rows = rows.filter(known)
            if not rows.num_rows:
                continue
            sha_a = id_shas.take(found.drop_null())
            rows = rows.set_column(rows.schema.get_field_index("sha256_a"), "sha256_a", sha_a)
            pairs = rows.group_by(["model_a", "model_b"]).aggregate([])
            pairs = sorted(zip(pairs.column("model_a").to_pylist(),
                               pairs.column("model_b").to_pylist(), strict=True))  # fmt: skip
            compare.replace_drift(self.db.con, pairs, rows)
            self.report.drift_pairs += len(pairs)
        self.drift = held


def commit_batch(
    lake: Lake, outcomes: list[Outcome], in_lake: set[str], shared: Iterable[DataFile] = ()
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Commit the outcomes' rows to the lake: per table, the workers' data files (`shared`:
    files holding rows of several of these outcomes) plus one file of the small tables still
    in memory, replacing the older rows of models in `in_lake` in the same commit; `models`
    last, so its rows never name a model whose other rows are missing.
    Returns (table -> new files to load, table -> version committed)."""
    replaced = {o.model_id for o in outcomes} & in_lake
    files: dict[str, list[str]] = {}
    versions: dict[str, int] = {}
    shared = list(shared)
    for table in (*schema.MODEL_TABLES[1:], schema.MODELS):
        adds: list[DataFile] = [f for o in outcomes for f in o.files if f.table == table.name]
        adds += [f for f in shared if f.table == table.name]
        held = [o.tables[table.name] for o in outcomes if table.name in o.tables]
        if held:
            adds.append(write_data_file(lake.location, table.name, pa.concat_tables(held)))
        versions[table.name] = lake.replace(table.name, replaced, adds)
        files[table.name] = [f.name for f in adds]
    return files, versions


def copy_rows(lake: Lake, job: FileJob, source: str) -> Outcome:
    """An outcome for `job`'s file holding the committed rows of model `source` (the same
    content) under the file's own model_id, path and times."""
    model_id = model_id_for(job.path)
    outcome = Outcome(job.path, model_id, "copied", sha256=job.sha256)
    for table in schema.MODEL_TABLES:
        rows = lake.rows_of(table.name, {source})
        if not rows.num_rows:
            continue
        rows = rows.set_column(0, "model_id", pa.array([model_id] * rows.num_rows))
        if table is schema.MODELS:
            now = datetime.now(timezone.utc)
            for name, value in (("name", file_stem(job.path)), ("path", job.path),
                                ("mtime", job.mtime), ("ingested_at", now)):  # fmt: skip
                i = rows.schema.get_field_index(name)
                rows = rows.set_column(i, name, pa.array([value], rows.schema.field(i).type))
        sink = TableSink(job.lake, table)
        sink.write(rows)
        held, written = sink.finish()
        if held is not None:
            outcome.tables[table.name] = held
        if written is not None:
            outcome.files.append(written)
    return outcome


def _prune(
    db: store.Database, lake: Lake, roots: list[Path], urls: list[str], present: set[str]
) -> int:
    """Drop models (and recorded failures) whose files under `roots` no longer exist, or that
    were not listed under `urls` this time."""
    gone = _is_gone(roots, urls, present)
    stale = {model_id for model_id, (path, *_) in db.known_files_by_id().items() if gone(path)}
    if stale:
        versions = {t.name: lake.replace(t.name, stale, [])
                    for t in (*schema.MODEL_TABLES[1:], schema.MODELS)}  # fmt: skip
        db.load_batch(lake, {}, stale, versions)
    db.clear_errors(p for p in db.known_failures() if gone(p))
    return len(stale)


def _is_gone(roots: list[Path], urls: list[str], present: set[str]) -> Callable[[str], bool]:
    """Whether a stored path's file is gone: under `roots` and no longer there, or under
    `urls` and not listed this time."""
    prefixes = [u.rstrip("/") for u in urls]

    def gone(path: str) -> bool:
        if remote.is_url(path):
            under = any(path == u or path.startswith(f"{u}/") for u in prefixes)
            return under and path not in present
        p = Path(to_os(path))  # as stored (textsafe): the roots are names on disk
        return any(p == r or r in p.parents for r in roots) and not os.path.lexists(p)

    return gone


def _release(db: store.Database) -> None:
    """Before a step that allocates afresh: DuckDB's cache evicted, and what the allocators
    hold freed given back."""
    db.release_memory()
    memory.give_back()


def _finish(db, lake: Lake, driver: _Driver, tag_pattern, drift: bool, progress, roots) -> None:
    """Derived tables, the lake's copy of names and times, compaction. A run that changed no
    model skips what only a change of the model set can change (names, tags, logs, series)."""
    report = driver.report
    changed = report.ingested or report.pruned
    renamed = db.refresh_names(roots) if changed else 0  # names kept in model_names
    if changed or tag_pattern is not None:
        compare.refresh_tags(db.con, tag_pattern)
    if changed:
        report.warnings += compare.attach_training_logs(db.con)
    no_drift = db.con.execute("SELECT count(*) = 0 FROM drift").fetchall()[0][0]
    # pending: models were loaded by a run killed before this point, or run with --no-drift
    if drift and (changed or no_drift or db.drift_pending()):
        progress.phase("drift", 0)
        pairs, problems = compare.series_drift(db.con, progress.advance)
        report.drift_pairs += pairs
        report.warnings += problems
        db.drift_done()
    if renamed or changed or driver.touched:  # names are given (and mtimes touched) here
        _release(db)
        sync.push_models(db, lake)
    if changed and any(n > COMPACT_FILES for n in lake.file_count().values()):
        progress.phase("compact", 0)
        sync.compact(db, lake)
