"""Keeping the lake and the database in step: before an ingest (a killed run, a lost database
or lake, a lake of an older wpipe), after it (names and times, the shared tables), around
compaction, and for a database that follows a lake other runs write (`pull`, `wpipe sync`).

`pull` is incremental. The database records the lake version of each table it loaded
(`lake_versions`); a lake still at those versions costs one look at each table's log. Else
the lake's `models` table (one small row per model) says which models are new, changed
(another sha256, options or ingest time) or gone, and only their rows are read — from the
data files whose model_id statistics can hold them. A database that never saw the lake loads
it whole. Drift, ingest_errors and model_names, which an ingest derives in its database, are
shared as three more Delta tables (`<lake>/drift`, …) that the ingest overwrites when they
change; tags are re-derived from the paths; training-log metrics stay with the database that
read the logs.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from wpipe import views
from wpipe.core import schema
from wpipe.store.duck import Database, insert_arrow, refresh_tags
from wpipe.store.lake import TABLES, Lake

_OLD_PARTITION = re.compile(r"^[0-9a-f]{16}$")


class LakeMismatch(Exception):
    """The database and the lake hold different models and neither says which is right."""


def reconcile(db: Database, lake: Lake) -> list[str]:
    """Make the lake and the database hold the same models; returns notes for the user.

    - a lake of wpipe <= 0.1 (a folder per model) is migrated into Delta tables;
    - lake commits the database never loaded (a run killed in between) are rolled back;
    - a lake without its database loads the database; a database without its lake writes it;
    - the database serves the tables of many rows a model from a local lake's files, and
      holds copies of them for a lake elsewhere (Database.serve_from).
    The lake's folder is claimed first (owned.claim: a folder holding files wpipe did not
    write is refused, LakeNotOwned).
    """
    lake.claim()
    if not lake.local:  # copies, before anything loads them
        db.serve_from(lake)
    notes = _find_lake(db, lake) if db.lost_lake else []
    notes += _reconcile(db, lake)
    db.serve_from(lake)
    return notes


def _find_lake(db: Database, lake: Lake) -> list[str]:
    """A database whose served tables' files are gone: its lake moved (`lake` holds its
    models: the views now read it there), or is lost (every model is read again)."""
    identity = pa.schema([schema.MODELS.arrow_schema.field(c) for c in IDENTITY])
    theirs = lake.dataset("models").to_table(columns=list(IDENTITY)).cast(identity)
    changed, gone = _model_changes(db, theirs)
    if theirs.num_rows and not changed and not gone:
        db.record_versions(lake, lake.versions())  # re-points the views
        notes = [f"{db.path}: its lake is now read at {lake.location.root}"]
    else:
        db.forget_models(lake)
        notes = [
            f"{db.path}: the lake it read units, values, histograms, tiles and eigenvalues "
            "from is gone; every model file is read again"
        ]
    views.apply(db.con)
    db.lost_lake = False
    return notes


def _reconcile(db: Database, lake: Lake) -> list[str]:
    notes = []
    if migrate_partitions(db, lake):
        notes.append(f"{lake.location.root}: lake migrated to Delta tables (one per table)")
    recorded = db.lake_versions(lake)
    current = lake.versions()
    if recorded and recorded == current:
        return notes  # the usual case: one query and a look at each table's log
    db_models = db.con.execute("SELECT count(*) FROM models").fetchall()[0][0]
    if not recorded:
        lake_models = lake.dataset("models").count_rows()
        if db_models and lake_models and _copied_here(db, lake, current):
            db.record_versions(lake, current)  # re-points the views at this copy
            notes.append(f"{db.path}: its lake is now read at {lake.location.root}")
            return notes
        if db_models and lake_models:
            raise LakeMismatch(
                f"{lake.location.root} and {db.path} hold different ingests; "
                "give a new --lake or a new --db"
            )
        if lake_models:
            db.load_lake(lake)
            notes.append(f"{db.path}: loaded {lake_models} models from {lake.location.root}")
        elif db_models:
            db.export_to_lake(lake)
            notes.append(f"{lake.location.root}: written from {db.path} ({db_models} models)")
        else:
            db.record_versions(lake, current)
        return notes
    if any(current[t] < recorded.get(t, -1) for t in current):
        # the lake was deleted or replaced: the database is the surviving copy
        db.export_to_lake(lake)
        notes.append(f"{lake.location.root}: rewritten from {db.path}")
        return notes
    ahead = {t: v for t, v in recorded.items() if current.get(t, -1) > v}
    if ahead:
        db.record_versions(lake, {t: lake.restore(t, v) for t, v in ahead.items()})
    return notes


def _copied_here(db: Database, lake: Lake, current: dict[str, int]) -> bool:
    """The database recorded its lake at another path, and `lake` is that lake moved or
    copied with it (a project folder copied whole): at the versions the database loaded,
    with the same models."""
    elsewhere = db.con.execute(
        "SELECT table_name, version FROM lake_versions WHERE lake <> ?", [lake.location.root]
    ).fetchall()
    if not elsewhere or dict(elsewhere) != current:
        return False
    identity = pa.schema([schema.MODELS.arrow_schema.field(c) for c in IDENTITY])
    theirs = lake.dataset("models").to_table(columns=list(IDENTITY)).cast(identity)
    return _model_changes(db, theirs) == (set(), set())


def migrate_partitions(db: Database, lake: Lake) -> bool:
    """A lake of the older layout (`<lake>/<model_id>/<table>.parquet`) becomes Delta tables
    holding the same rows; the old files are removed afterwards (only those: a folder left
    with anything else in it stays)."""
    root = Path(lake.location.root)
    if "://" in lake.location.root or not root.is_dir():
        return False
    old = [p for p in root.iterdir() if p.is_dir() and _OLD_PARTITION.match(p.name)]
    if not old:
        return False
    versions, migrated = {}, []
    for name, table in TABLES.items():
        files = [str(p / f"{name}.parquet") for p in old if (p / f"{name}.parquet").is_file()]
        migrated += files
        import pyarrow.dataset as pads  # a lake of an old layout only

        rows = pads.dataset(files, schema=table.arrow_schema, format="parquet")
        reader = pa.RecordBatchReader.from_batches(table.arrow_schema, rows.to_batches())
        versions[name] = lake.overwrite(name, reader)
    db.record_versions(lake, versions)
    for file in migrated:
        Path(file).unlink(missing_ok=True)
    for folder in [*old, root / ".tmp"]:
        with contextlib.suppress(OSError):  # not empty: what is left is not wpipe's
            folder.rmdir()
    return True


def push_models(db: Database, lake: Lake) -> None:
    """Give the lake's `models` table the database's rows (names widened, mtimes touched)."""
    # streamed, unsorted (one file: its model_id range is all of them): the configs' text is
    # ~60 MB at 10,000 small models, and a sort holds it all
    version = lake.overwrite("models", db.stream(schema.MODELS, MODELS_BATCH))
    db.record_versions(lake, {"models": version})


MODELS_BATCH = 1024  # models a batch (a row group) when `models` is written whole


def compact(db: Database, lake: Lake) -> dict[str, int]:
    """Merge the lake's small files and delete the merged ones (and any other data file wpipe
    wrote that no commit names: Lake.sweep); the database records the new versions before
    any file is deleted (a kill in between leaves nothing to restore)."""
    lake.claim()
    db.release_memory()  # DuckDB's cache of the drift and tag queries, not needed meanwhile
    lake.compact()
    db.record_versions(lake, lake.versions())
    lake.sweep()
    return lake.file_count()


# Derived tables an ingest shares through the lake, for `wpipe sync` elsewhere.
SHARED = (schema.DRIFT, schema.INGEST_ERRORS, schema.MODEL_NAMES)
# the versions of the shared tables a database holds (lake_versions keeps the model tables')
SHARED_DDL = (
    "CREATE TABLE IF NOT EXISTS lake_shared_versions "
    "(lake VARCHAR, table_name VARCHAR, version BIGINT, PRIMARY KEY (lake, table_name))"
)
IDENTITY = ("model_id", "sha256", "ingest_options", "ingested_at")  # a model's rows changed


@dataclass
class Pulled:
    models: int = 0  # models whose rows were (re)loaded
    removed: int = 0
    shared: int = 0  # shared tables reloaded
    up_to_date: bool = False


def push_shared(db: Database, lake: Lake) -> None:
    """Give the lake the database's shared tables (whole: they are small)."""
    for table in SHARED:
        lake.overwrite(table.name, db.stream(table))
        # one file per shared table: the overwritten ones are deleted at once (as compaction
        # does for the model tables)
        lake.sweep(tables=[table.name])


def _shared_table(lake: Lake, table: schema.Table) -> DeltaTable | None:
    try:
        uri = lake.location.table_uri(table.name)
        return DeltaTable(uri, storage_options=lake.location.storage_options)
    except TableNotFoundError:
        return None


def pull(db: Database, lake: Lake) -> Pulled:
    """Load what the lake has and the database does not (see the module's doc)."""
    if _shared_table(lake, schema.MODELS) is None:
        raise LookupError(f"{lake.location.root}: no wpipe lake here (no models table)")
    db.con.execute(SHARED_DDL)
    recorded, current = db.lake_versions(lake), lake.versions()
    out = Pulled()
    if recorded != current:
        if recorded:
            out.models, out.removed = _pull_models(db, lake, current)
        else:
            db.load_lake(lake)
            out.models = db.con.execute("SELECT count(*) FROM models").fetchone()[0]
        refresh_tags(db.con, None)
    out.shared = _pull_shared(db, lake)
    out.up_to_date = not (out.models or out.removed or out.shared) and recorded == current
    return out


def _pull_models(db: Database, lake: Lake, versions: dict[str, int]) -> tuple[int, int]:
    """Reload the rows of models that are new or changed in the lake; drop the gone ones."""
    theirs = lake.dataset("models").to_table().cast(schema.MODELS.arrow_schema)
    changed, gone = _model_changes(db, theirs)
    drop = sorted(changed | gone)
    db.con.execute("BEGIN TRANSACTION")
    try:
        for table in db.copied():
            if table is schema.MODELS:
                db.con.execute("DELETE FROM models")  # names and mtimes change without rows
                insert_arrow(db.con, table, theirs)
                continue
            db.con.execute(f"DELETE FROM {table.name} WHERE list_contains(?, model_id)", [drop])
            if changed:
                insert_arrow(db.con, table, lake.rows_of(table.name, changed))
        db._record_versions(lake, versions)
        db.con.execute("COMMIT")
    except BaseException:
        db.con.execute("ROLLBACK")
        raise
    return len(changed), len(gone)


def _model_changes(db: Database, theirs: pa.Table) -> tuple[set[str], set[str]]:
    """(models new or changed in the lake's `models` rows `theirs` (at least the IDENTITY
    columns), models gone from them), against the database's."""
    columns = ", ".join(IDENTITY)
    db.con.register("lake_models", theirs)
    try:
        changed = _ids(db.con, f"SELECT {columns} FROM lake_models EXCEPT SELECT {columns} "
                               "FROM models")  # fmt: skip
        gone = _ids(db.con, "SELECT model_id FROM models EXCEPT SELECT model_id FROM lake_models")
    finally:
        db.con.unregister("lake_models")
    return changed, gone


def _ids(con: duckdb.DuckDBPyConnection, sql: str) -> set[str]:
    return {row[0] for row in con.execute(sql).fetchall()}


def _pull_shared(db: Database, lake: Lake) -> int:
    """Replace the database's shared tables by the lake's where they changed."""
    root = lake.location.root
    held = dict(
        db.con.execute(
            "SELECT table_name, version FROM lake_shared_versions WHERE lake = ?", [root]
        ).fetchall()
    )
    pulled = 0
    for table in SHARED:
        dt = _shared_table(lake, table)
        if dt is None or held.get(table.name) == dt.version():
            continue
        rows = dt.to_pyarrow_table().cast(table.arrow_schema)
        db.con.execute("BEGIN TRANSACTION")
        try:
            db.con.execute(f"DELETE FROM {table.name}")
            insert_arrow(db.con, table, rows)
            db.con.execute(
                "INSERT OR REPLACE INTO lake_shared_versions VALUES (?, ?, ?)",
                [root, table.name, dt.version()],
            )
            db.con.execute("COMMIT")
        except BaseException:
            db.con.execute("ROLLBACK")
            raise
        pulled += 1
    return pulled


def lake_connection(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose contract tables are the lake's Delta tables,
    scanned in place through their Arrow datasets: no copy, no DuckDB extension. A folder
    that is no wpipe lake is LookupError (reading it would create tables there)."""
    if _shared_table(lake, schema.MODELS) is None:
        raise LookupError(f"{lake.location.root}: no wpipe lake here (no models table)")
    con = duckdb.connect()
    for table in schema.MODEL_TABLES:
        con.register(table.name, lake.dataset(table.name))
    for table in SHARED:
        if (dt := _shared_table(lake, table)) is not None:
            con.register(table.name, dt.to_pyarrow_dataset())
    return con
