"""`wpipe ingest`: read model files into the lake and the database (the one writer)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from wpipe.cli.common import EXIT_FAILED_FILES, DbOption, console, fail, say, waiting
from wpipe.core.extras import MissingExtra
from wpipe.core.tags import check_pattern
from wpipe.core.textsafe import first_line

if TYPE_CHECKING:  # the pipeline (numpy, Arrow, DuckDB, deltalake) loads when a command runs
    import duckdb
    from rich.progress import Progress

    from wpipe import store
    from wpipe.ingest.driver import Outcome, Report

DEFAULT_VALUES = "auto"  # tables.DEFAULT_VALUES, without loading the pipeline (a test checks)

LakeOption = typer.Option(
    None, help=r"Delta lake folder or s3:// URL \[default: the database path with suffix .lake]"
)


def ingest_command(
    paths: list[str] = typer.Argument(
        ..., help="Model files or folders (searched recursively), or s3:// prefixes."
    ),
    db: str | None = DbOption,
    lake: str | None = LakeOption,
    jobs: int = typer.Option(os.cpu_count() or 1, "--jobs", "-j", min=1, help="Worker processes."),
    values: str = typer.Option(
        DEFAULT_VALUES,
        help="Per-value rows in weight_values: sample:N per tensor (every value of a tensor "
        "of up to N elements, a uniform sample of N from a larger one), auto (sample:1024 and "
        "at most 32,768 a model), all or none.",
    ),
    near_zero: float = typer.Option(
        1e-3, min=0.0, help="|w| below this counts as near zero (near_zero_frac in weights)."
    ),
    bins: int = typer.Option(64, min=1, max=65536, help="Histogram bins per tensor."),
    prune: bool = typer.Option(False, help="Drop models whose files were deleted."),
    tag_pattern: str | None = typer.Option(
        None, help="Regex with groups key and value for tags in names (docs: comparing)."
    ),
    drift: bool = typer.Option(True, help="Compute drift between consecutive checkpoints."),
    spectra: str = typer.Option(
        "auto",
        help="Spectral metrics per weight matrix: auto (matrices up to the size limit in "
        "docs: spectral), all, or none.",
    ),
    file_timeout: float | None = typer.Option(
        None,
        min=0.0,
        help="Seconds one file may take before it is stopped and recorded as `timeout` "
        "(0: no limit; default: scaled with the file's size, 11 s for a small file, ~9 min "
        "a GB).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    dask: str | None = typer.Option(
        None, help="Run the per-file map on Dask: local, or a scheduler address (tcp://…)."
    ),
) -> None:
    """Read every Keras model file under PATHS into the Delta lake and the database."""
    from wpipe import api

    if (
        reads_every_file(db or api.default_db(), lake)
        and dask is None
        and (jobs > 1 or file_timeout != 0)
    ):
        start_readers()  # by a pool: its server starts now
    import duckdb

    from wpipe import store
    from wpipe.analyse.spectra import SpectraOptions
    from wpipe.analyse.stats import StatsOptions
    from wpipe.analyse.tables import ValuesMode
    from wpipe.cli.hints import ingest_hints
    from wpipe.ingest import workers
    from wpipe.ingest.driver import StoreFailed, ingest
    from wpipe.store import remote
    from wpipe.store.owned import LakeNotOwned
    from wpipe.store.sync import LakeMismatch

    try:
        mode = ValuesMode.parse(values)
        spectra_options = SpectraOptions.parse(spectra)
        if tag_pattern is not None:
            check_pattern(tag_pattern)
    except ValueError as exc:
        fail(str(exc))
    missing = [p for p in paths if not remote.is_url(p) and not Path(p).exists()]
    if missing:
        fail(f"no such file or folder: {', '.join(missing)}")
    db_path = db or api.default_db()
    database = open_for_writing(Path(db_path), "wpipe ingest")
    lake_path = lake or database.lake_beside() or store.default_lake(db_path)
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.fields[phase]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=True,
    )
    sink = IngestProgress(progress)

    def done(outcome: Outcome) -> None:
        if outcome.status == "failed":
            progress.console.print(
                f"[red]failed:[/red] {escape(outcome.message)}",
                markup=True,
                highlight=False,
                soft_wrap=True,
            )

    try:
        with progress:
            report = ingest(
                paths,
                database,
                lake_path,
                options=StatsOptions(near_zero=near_zero, bins=bins),
                values=mode,
                jobs=jobs,
                prune=prune,
                tag_pattern=tag_pattern,
                drift=drift,
                on_done=done,
                progress=sink,
                spectra=spectra_options,
                file_timeout=workers.AUTO if file_timeout is None else file_timeout or None,
                dask=dask,
            )
    except (LakeMismatch, LakeNotOwned, MissingExtra, remote.StorageError, ConnectionError) as exc:
        fail(str(exc))
    except StoreFailed as exc:
        fail(
            f"{db_path}: the run stopped, the disk is full ({exc}); the models loaded before "
            "are kept, and what this run wrote is removed (at the latest by the next run) — free "
            "space and run again",
            EXIT_FAILED_FILES,
        )
    except OSError as exc:  # the lake: a read-only disk, a file where a folder goes
        fail(f"cannot write the lake {lake_path}: {exc.strerror or first_line(exc)}")
    finally:
        with contextlib.suppress(duckdb.Error):  # a connection a full disk invalidated
            database.close()
    _summary(report, quiet, prune, db_path)
    for hint in ingest_hints(paths, report):
        say(f"hint: {hint}")
    raise typer.Exit(EXIT_FAILED_FILES if report.failed else 0)


def reads_every_file(db: str, lake: str | None) -> bool:
    """A new database with no lake yet, on this machine (the lake's default place is
    store.default_lake's): every model file will be read."""
    lake = lake or str(Path(db).with_suffix(".lake"))
    return not Path(db).exists() and "://" not in lake and not Path(lake).exists()


def start_readers() -> None:
    """The worker pool's server, started before this process loads the pipeline, so the two
    load theirs at once (on a 2-core machine an ingest into a new database answered ~0.5 s
    sooner); the malloc settings first, which the server and its workers inherit."""
    from wpipe.ingest import memory, workers

    memory.tune_malloc()
    workers.start_server(workers.READER_MODULES)


def open_for_writing(path: Path, what: str) -> store.Database:
    """The database for ingest; a folder, another program's file, another wpipe writer (the
    writer lock, refused at once) or a lock held by another process (waited for up to
    WPIPE_WAIT seconds) is one line. The writer lock comes first: nothing touches the
    database, its WAL or the lake before it is held."""
    import duckdb

    from wpipe import store
    from wpipe.core import dblock
    from wpipe.store import space

    if path.is_dir():
        fail(f"{path}: is a folder, not a database file")
    if not path.exists() and not path.parent.is_dir():
        fail(f"{path}: its folder {path.parent} does not exist")
    try:
        lock = dblock.WriterLock(path, what)
    except dblock.DatabaseBusy as exc:
        fail(f"{path}: cannot open for writing ({first_line(exc)})")
    except OSError as exc:
        fail(f"{path}: cannot open for writing ({exc.strerror or first_line(exc)})")
    try:
        con = None
        if path.exists():
            try:
                con = _check_ours(path)
            except BaseException:  # not a wpipe database: no lock file left beside it
                lock.discard()
                raise
        return store.Database(path, lock=lock, con=con)
    except duckdb.Error as exc:
        lock.release()
        if space.is_full(exc):  # opening writes (the schema, the WAL): as a full run says
            fail(f"{path}: cannot open for writing, the disk is full ({first_line(exc)}); "
                 "nothing was changed — free space and run again", EXIT_FAILED_FILES)  # fmt: skip
        fail(f"{path}: cannot open for writing ({first_line(exc)})")
    except OSError as exc:
        lock.release()
        fail(f"{path}: cannot open for writing ({exc.strerror or first_line(exc)})")
    except BaseException:
        lock.release()
        raise


def _check_ours(path: Path) -> duckdb.DuckDBPyConnection:
    """Refuse another program's DuckDB file; wait (WPIPE_WAIT) while another process has it.
    Returns the file open for writing (the writer's connection: opened once)."""
    from wpipe import api

    try:
        con = api.open_waiting(path, False, api.default_wait(), waiting)
    except api.DatabaseError as exc:
        fail(str(exc))
    try:
        tables = con.execute(
            "SELECT list(table_name ORDER BY table_name) FROM duckdb_tables() "
            "WHERE schema_name = 'main'"
        ).fetchone()[0]
    except BaseException:
        con.close()
        raise
    if not tables or "models" in tables:
        return con
    con.close()
    fail(
        f"{path}: a DuckDB database of another program (tables "
        f"{', '.join(tables[:5])}); give wpipe its own --db file"
    )


def _summary(report: Report, quiet: bool, prune: bool, db_path: str) -> None:
    for warning in report.warnings:
        say(f"warning: {warning}")
    if quiet:
        return
    for outcome in report.failed:
        if outcome.error == "unchanged-failure":
            say(f"failed earlier, unchanged: {outcome.message}")
    mb = report.bytes_read / 1e6
    rate = f", {mb / report.seconds:.1f} MB/s" if report.seconds and mb else ""
    say(
        f"{report.files} file{'' if report.files == 1 else 's'}: {report.ingested} ingested"
        + (f" ({report.copied} identical to another, read once)" if report.copied else "")
        + f", {report.unchanged} unchanged, {len(report.failed)} failed"
        + (f", {report.pruned} pruned" if prune else "")
        + (f", {report.drift_pairs} drift pairs" if report.drift_pairs else "")
        + f" — {report.n_tensors:,} tensors, {report.n_params:,} parameters, "
        f"{mb:.1f} MB read in {report.seconds:.1f} s{rate} → {db_path}"
    )


class IngestProgress:
    """One bar that follows the ingest's phases (scan, hash, read, load, drift, compact)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("", total=None, phase="ingest")
        self.name = ""
        self.counts: dict[str, list] = {}  # phase -> [total, done]: a phase returned to

    def phase(self, name: str, total: int) -> None:
        """Enter phase `name`; one entered before (read between loads) keeps its count."""
        if name == self.name and not total:
            return
        self.name = name
        count = self.counts.setdefault(name, [None, 0])
        count[0] = total or count[0]
        self.progress.reset(self.task, total=count[0], completed=count[1], phase=name,
                            description="")  # fmt: skip

    def advance(self, n: int = 1, item: str = "") -> None:
        self.counts.setdefault(self.name, [None, 0])[1] += n
        self.progress.update(self.task, advance=n, description=item)


def compact_command(db: str | None = DbOption, lake: str | None = LakeOption) -> None:
    """Merge the lake's small data files and delete the merged ones (only files wpipe wrote)."""
    from wpipe import api, store
    from wpipe.store import remote, sync
    from wpipe.store.owned import LakeNotOwned

    db_path = db or api.default_db()
    database = open_for_writing(Path(db_path), "wpipe compact")
    lake_path = lake or database.lake_beside() or store.default_lake(db_path)
    try:
        handle = remote.open_lake(lake_path)
        handle.claim()  # before file_count creates tables in a folder that is not a lake
        before = sum(handle.file_count().values())
        after = sync.compact(database, handle)
    except LakeNotOwned as exc:
        fail(str(exc))
    finally:
        database.close()
    say(
        f"{lake_path}: {before} data files → {sum(after.values())} "
        f"({', '.join(f'{t} {n}' for t, n in after.items())})"
    )


def sync_command(
    lake: str = typer.Option(..., help="The lake to follow: a folder or an s3:// URL."),
    db: str | None = DbOption,
) -> None:
    """Bring the database up to date from a lake other runs wrote: only what changed."""
    from deltalake.exceptions import DeltaError

    from wpipe import api
    from wpipe.compare import suggestions
    from wpipe.store import remote, sync

    db_path = db or api.default_db()
    database = open_for_writing(Path(db_path), "wpipe sync")
    try:
        pulled = sync.pull(database, remote.open_lake(lake))
        if pulled.models or pulled.removed:  # the suggested bases are this database's own
            suggestions.refresh(database.con)
    except (LookupError, MissingExtra, OSError, DeltaError) as exc:
        fail(f"{lake}: {first_line(exc)}")
    finally:
        database.close()
    if pulled.up_to_date:
        say(f"{db_path} is up to date with {lake}")
        return
    say(
        f"{lake} → {db_path}: {pulled.models} models loaded, {pulled.removed} removed, "
        f"{pulled.shared} shared tables refreshed (drift, ingest_errors, model_names)"
    )
