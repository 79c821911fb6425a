"""Ingest: find model files, read and analyse each (in worker processes), store the results.

Reading a file is a pure map (file -> Parquet partition), so workers never touch DuckDB; the
parent swaps each finished partition into the lake and loads it in one transaction. Workers are
run by `wpipe.workers.map_files`: each file under a time limit (`file_timeout`), a hung or
dead worker replaced, its file recorded as `timeout` / `worker-died`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import pyarrow as pa

from wpipe import compare, dblock, store, workers
from wpipe.analysis import StatsOptions
from wpipe.readers import ModelReadError, model_files, open_model
from wpipe.spectra import SpectraOptions
from wpipe.spectra_tables import CACHE_FOLDER
from wpipe.tables import FileInfo, ValuesMode, build_tables, model_id_for
from wpipe.textsafe import display, to_os
from wpipe.walk import Skipped, discover

# Models loaded into DuckDB per transaction: one transaction per model costs more than reading
# a small checkpoint. A crash loses at most the batch, whose files are then re-read next run.
LOAD_BATCH = 64


@dataclass(frozen=True)
class Job:
    path: str
    lake: str
    size: int
    mtime: float
    known_sha: str | None
    options: StatsOptions
    values: ValuesMode
    spectra: SpectraOptions = field(default_factory=SpectraOptions)
    settings: str = ""  # ingest_options(...) of this run


@dataclass
class Outcome:
    path: str
    model_id: str
    status: str  # "ingested" | "unchanged" | "failed"
    partition: str | None = None
    sha256: str | None = None
    error: str | None = None
    message: str | None = None
    n_tensors: int = 0
    n_params: int = 0
    bytes_read: int = 0
    tables: dict[str, pa.Table] | None = None  # the partition's small tables, for loading


@dataclass
class Report:
    files: int = 0
    ingested: int = 0
    unchanged: int = 0
    failed: list[Outcome] = field(default_factory=list)
    pruned: int = 0
    n_tensors: int = 0
    n_params: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    drift_pairs: int = 0
    warnings: list[str] = field(default_factory=list)


def ingest_options(options: StatsOptions, values: ValuesMode, spectra: SpectraOptions) -> str:
    """The options that change a model's rows, as stored in models.ingest_options."""
    sample = f":{values.n}" if values.kind == "sample" else ""
    return (
        f"values={values.kind}{sample} near_zero={options.near_zero:g} bins={options.bins} "
        f"spectra={spectra.mode} pool={spectra.pool} conv_rescale={spectra.conv_rescale}"
    )


def fingerprint(path: Path) -> tuple[int, float]:
    """(total bytes, newest mtime) of the files a save consists of."""
    stats = [p.stat() for p in model_files(path)]
    return sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0)


def sha256_of(path: str) -> str:
    """SHA-256 of a file's bytes; for a multi-file save, over each file's name and bytes."""
    files = model_files(Path(path))
    digest = hashlib.sha256()
    for file in files:
        if len(files) > 1:
            digest.update(f"{file.relative_to(Path(path).parent)}\0".encode())
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def run_job(job: Job) -> Outcome:
    """Read, analyse and write one model's partition; never raises."""
    model_id = model_id_for(job.path)
    outcome = Outcome(display(job.path), model_id, "failed", bytes_read=job.size)
    partition = None
    try:
        sha = sha256_of(job.path)
        outcome.sha256 = sha
        if sha == job.known_sha:
            outcome.status = "unchanged"
            return outcome
        info = FileInfo(model_id, display(job.path), sha, job.size, job.mtime, job.settings)
        with open_model(job.path) as model:
            partition = store.Partition(Path(job.lake), model_id)
            tables = build_tables(
                model, info, job.options, job.values, partition.write_values, job.spectra
            )
            partition.finish(tables)
        row = tables["models"].to_pylist()[0]
        outcome.status = "ingested"
        outcome.partition = str(partition.tmp)
        outcome.tables = tables
        outcome.n_tensors, outcome.n_params = row["n_tensors"], row["n_params"]
    except ModelReadError as exc:
        outcome.error, outcome.message = exc.code, exc.message
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a damaged member, read lazily
        outcome.error, outcome.message = "bad-zip", f"{job.path}: damaged zip archive ({exc})"
    except MemoryError:
        outcome.error, outcome.message = "out-of-memory", f"{job.path}: not enough memory"
    except OSError as exc:
        full = exc.errno == errno.ENOSPC or "No space left" in str(exc)  # pyarrow sets no errno
        outcome.error = "disk-full" if full else "io-error"
        outcome.message = f"{job.path}: {exc.strerror or exc}"
    except Exception as exc:  # a bug must not stop the other files; the message says so
        outcome.error = "internal-error"
        outcome.message = f"{job.path}: wpipe failed on this file ({type(exc).__name__}: {exc})"
    if outcome.status == "failed" and partition is not None:
        partition.abort()
    if outcome.message:
        outcome.message = display(outcome.message)
    return outcome


def ingest(
    paths: Iterable[str | os.PathLike],
    db: store.Database,
    lake: Path,
    options: StatsOptions | None = None,
    values: ValuesMode | None = None,
    jobs: int = 1,
    prune: bool = False,
    tag_pattern: str | None = None,
    drift: bool = True,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    spectra: SpectraOptions | None = None,
    file_timeout: float | None = workers.DEFAULT_FILE_TIMEOUT,
) -> Report:
    """Bring the database up to date with the model files under `paths`, then re-derive tags,
    attach training logs found next to checkpoints, and compute new series drift.

    Each file is read in a worker process and stopped after `file_timeout` seconds (None: no
    limit, and with jobs=1 the files are read in this process)."""
    started = time.perf_counter()
    options = options or StatsOptions()
    values = values or ValuesMode("all")
    spectra = spectra or SpectraOptions()
    roots = [Path(os.path.realpath(p)) for p in paths]
    lake = Path(os.path.realpath(lake))
    if spectra.cache_dir is None:
        spectra = replace(spectra, cache_dir=str(lake / CACHE_FOLDER))
    # `db` holds the writer lock (store.Database), so no other run uses the lake: clean out
    # the half-written partitions of a run that was killed
    shutil.rmtree(lake / ".tmp", ignore_errors=True)
    store.sweep_orphans(lake, db.known_files_by_id())  # left by a run that hit a full disk
    protected = dblock.Protected(dblock.protected_paths(db.path, lake))
    files, skipped = discover(paths, protected)
    known, failures = db.known_files(), db.known_failures()
    report = Report(files=len(files) + len(skipped))
    for entry in skipped:
        _record_skipped(entry, db, report, on_done)
    work: list[Job] = []
    settings = ingest_options(options, values, spectra)
    for path in files:
        try:
            size, mtime = fingerprint(path)
        except (OSError, ModelReadError) as exc:  # vanished or changed kind since the walk
            if not isinstance(exc, ModelReadError):
                exc = ModelReadError("io-error", f"{path}: {exc}")
            _record_skipped(Skipped(path, exc.code, exc.message, 0, 0.0), db, report, on_done)
            continue
        key = display(str(path))
        if key in known and known[key][3] != settings:
            known.pop(key)  # rows computed with other options: read the file again
        previous = known.get(key) or failures.get(key)
        if previous and previous[0] == size and previous[1] == mtime:
            if key in known:
                report.unchanged += 1
            else:  # failed before and unchanged since: still a failure, not retried
                report.failed.append(
                    Outcome(key, model_id_for(key), "failed", error="unchanged-failure",
                            message=previous[2])
                )  # fmt: skip
            continue
        known_sha = known[key][2] if key in known else None
        raw = str(path)  # the name as the OS gave it: `key` is how it is stored and printed
        work.append(Job(raw, str(lake), size, mtime, known_sha, options, values, spectra, settings))

    if on_start:
        on_start(len(work))
    _load_all(work, jobs, file_timeout, lake, db, report, on_done)
    if prune:
        report.pruned = _prune(db, lake, roots)
    db.refresh_names(roots)
    compare.refresh_tags(db.con, tag_pattern)
    report.warnings += compare.attach_training_logs(db.con)
    if drift:
        report.drift_pairs, problems = compare.series_drift(db.con)
        report.warnings += problems
    report.seconds = time.perf_counter() - started
    return report


class StoreFailed(Exception):
    """The lake or the database could not be written (a full disk): the run stopped; the
    models loaded before are kept, the partitions not yet loaded are removed."""


def _load_all(
    work: list[Job],
    jobs: int,
    file_timeout: float | None,
    lake: Path,
    db: store.Database,
    report: Report,
    on_done: Callable[[Outcome], None] | None,
) -> None:
    """Read every job in workers; commit and load the results in batches of LOAD_BATCH."""
    by_path = {display(job.path): job for job in work}
    pending: dict[str, Path] = {}  # committed to the lake, not yet loaded into DuckDB
    loaded: dict[str, dict[str, pa.Table]] = {}
    results = _map(work, jobs, file_timeout, lake)
    try:
        for outcome in results:
            if outcome.error == "disk-full":  # every file after it would fail alike
                report.failed.append(outcome)
                raise StoreFailed(outcome.message)
            _store(outcome, by_path[outcome.path], db, lake, report, pending)
            if outcome.tables is not None:
                loaded[outcome.model_id] = outcome.tables
                outcome.tables = None
            if len(pending) >= LOAD_BATCH:
                db.replace_models(pending, loaded)
                pending.clear()
                loaded.clear()
            if on_done:
                on_done(outcome)
        db.replace_models(pending, loaded)
    except (duckdb.Error, OSError) as exc:
        _discard(results, pending, lake)
        raise StoreFailed(f"{db.path}: cannot write ({str(exc).splitlines()[0]})") from None
    except StoreFailed:
        _discard(results, pending, lake)
        raise


def _discard(results: Iterator[Outcome], pending: dict[str, Path], lake: Path) -> None:
    """After a failed store: stop the workers, then remove what they and this run wrote."""
    results.close()  # stops the pool: no worker writes into .tmp any more
    shutil.rmtree(lake / ".tmp", ignore_errors=True)
    for partition in pending.values():
        shutil.rmtree(partition, ignore_errors=True)


def _record_skipped(
    entry: Skipped, db: store.Database, report: Report, on_done: Callable[[Outcome], None] | None
) -> None:
    key = display(str(entry.path))
    message = display(entry.message)
    outcome = Outcome(key, model_id_for(key), "failed", error=entry.code, message=message)
    db.record_error(key, entry.code, message, entry.size, entry.mtime)
    report.failed.append(outcome)
    if on_done:
        on_done(outcome)


def _map(work: list[Job], jobs: int, file_timeout: float | None, lake: Path) -> Iterator[Outcome]:
    results = workers.map_files(
        run_job, work, jobs, file_timeout, name=lambda job: job.path, preload=[__name__]
    )
    for job, result in results:
        if isinstance(result, workers.WorkerFailure):
            # a killed worker cannot clean up after itself: drop what it had written
            store.discard_partials(lake, model_id_for(job.path))
            result = Outcome(display(job.path), model_id_for(job.path), "failed",
                             error=result.code, message=display(result.message),
                             bytes_read=job.size)  # fmt: skip
        yield result


def _store(
    outcome: Outcome,
    job: Job,
    db: store.Database,
    lake: Path,
    report: Report,
    pending: dict[str, Path],
) -> None:
    if outcome.status == "unchanged":
        db.touch_model(outcome.path, job.mtime)
        report.unchanged += 1
    elif outcome.status == "ingested":
        pending[outcome.model_id] = store.commit_partition(
            lake, outcome.model_id, Path(outcome.partition)
        )
        report.ingested += 1
        report.n_tensors += outcome.n_tensors
        report.n_params += outcome.n_params
        report.bytes_read += outcome.bytes_read
    else:
        db.record_error(outcome.path, outcome.error, outcome.message, job.size, job.mtime)
        report.failed.append(outcome)


def _prune(db: store.Database, lake: Path, roots: list[Path]) -> int:
    """Drop models (and recorded failures) whose files under `roots` no longer exist."""

    def gone(path: str) -> bool:
        p = Path(path)
        here = any(p == r or r in p.parents for r in roots)
        return here and not p.exists() and not Path(to_os(path)).exists()

    stale = {model_id for model_id, (path, *_) in db.known_files_by_id().items() if gone(path)}
    db.remove_models(stale)
    for model_id in stale:
        store.remove_partition(lake, model_id)
    db.clear_errors(p for p in db.known_failures() if gone(p))
    return len(stale)
