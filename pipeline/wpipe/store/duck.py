"""store stage: the DuckDB database — contract tables, views, and loads from the lake.

Model tables are loaded from the lake's committed data files (a pyarrow dataset DuckDB scans
natively: no extension, works offline), except the tables of a row per unit, value, bin, tile
or eigenvalue (SERVED): with a lake on the local disk those are views over its current data
files (read_parquet of their paths), not copies — a copy took 3-5x the Parquet bytes again.
Derived tables (drift, tags, metrics) and ingest_errors live here only. `lake_versions`
records which lake version each model table holds, so a run killed between a lake commit
and its load is rolled back on the next run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from wpipe import views
from wpipe.core import dblock, schema
from wpipe.core.tags import parse_tags
from wpipe.store import naming

if TYPE_CHECKING:  # a reader (`wpipe models`) never loads Arrow, the lake's datasets or Delta
    import pyarrow as pa
    import pyarrow.dataset as pads

    from wpipe.store.lake import Lake

# DuckDB's type for each Arrow type name of the contract (schema.Column.type_name)
_DUCK_TYPES = {
    "string": "VARCHAR",
    "int64": "BIGINT",
    "int32": "INTEGER",
    "double": "DOUBLE",
    "float": "FLOAT",
    "bool": "BOOLEAN",
    "timestamp[us, tz=UTC]": "TIMESTAMPTZ",
    "list<item: int64>": "BIGINT[]",
    "list<item: double>": "DOUBLE[]",
    "list<item: string>": "VARCHAR[]",
}


# Which lake version each model table was loaded at: a run killed between a lake commit and
# its load leaves the lake ahead, and the next run rolls those commits back.
LAKE_VERSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS lake_versions "
    "(lake VARCHAR, table_name VARCHAR, version BIGINT, PRIMARY KEY (lake, table_name))"
)

# Facts about the database's state. `drift-pending`: set in the transaction that loads models,
# cleared once series drift is complete; a run killed in between (or run with --no-drift)
# leaves it, and the next run completes drift although every file is unchanged.
STATE_DDL = "CREATE TABLE IF NOT EXISTS ingest_state (name VARCHAR PRIMARY KEY, value VARCHAR)"
DRIFT_PENDING = "drift-pending"
VIEWS_SHA = "views-sha256"  # the fingerprint of the SQL files the stored views were made from


# Tables a database with a local lake reads from the lake's files in place.
SERVED = (schema.HISTOGRAMS, schema.WEIGHT_VALUES, schema.UNITS, schema.EIGENVALUES,
          schema.WEIGHT_TILES)  # fmt: skip


def table_ddl(table: schema.Table) -> str:
    columns = ", ".join(f'"{c.name}" {_DUCK_TYPES[c.type_name]}' for c in table.columns)
    return f"CREATE TABLE IF NOT EXISTS {table.name} ({columns})"


def default_lake(db_path: str | os.PathLike) -> Path:
    return Path(db_path).with_suffix(".lake")


def insert_arrow(
    con: duckdb.DuckDBPyConnection, table: schema.Table, rows: pa.Table | pads.Dataset
) -> None:
    """Append Arrow rows (a table, or a lake dataset DuckDB scans natively: no extension) to
    a contract table in one scan (not one statement per row)."""
    columns = ", ".join(f'"{c}"' for c in table.column_names)
    con.register("incoming_rows", rows)
    try:
        con.execute(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")


def refresh_tags(con: duckdb.DuckDBPyConnection, pattern: str | None = None) -> None:
    """Re-derive model_tags for every model from its path (docs: comparing)."""
    rows = con.execute("SELECT model_id, path FROM models").fetchall()
    tags = [
        {"model_id": mid, "key": k, "value": v}
        for mid, path in rows
        for k, v in parse_tags(path, pattern).items()
    ]
    import pyarrow as pa

    con.execute("BEGIN TRANSACTION")
    con.execute("DELETE FROM model_tags")
    insert_arrow(con, schema.MODEL_TAGS, pa.Table.from_pylist(tags, schema.MODEL_TAGS.arrow_schema))
    con.execute("COMMIT")


# DuckDB's own memory, spilled to disk past it: with Python and Arrow around it, keeps a
# report or chart on any database within 1 GB.
MEMORY_LIMIT = "512MB"
# A writer's (ingest, sync, compact): its work is appends and small lookups, and a batch's
# insert held up to ~100 MB above the driver's floor at 512 MB (10,000 small checkpoints:
# peak 355-365 MB at 512 MB, 332-333 at 64 MB, 319 at 32 MB for 40 % more driver CPU).
WRITER_MEMORY_LIMIT = "64MB"
# A batch that does not fit the writer's limit is loaded again under this one: a model's
# largest text (its config, a layer's config: within jsonsafe's 32 MB) needs about four times
# its size while it is inserted (a 20 MB config failed at 64 MB).
LOAD_RETRY_LIMIT = "512MB"
STREAM_ROWS = 1 << 16  # rows a batch (a data file's row group) when a table is read out whole


def configure(
    con: duckdb.DuckDBPyConnection, memory_limit: str = MEMORY_LIMIT
) -> duckdb.DuckDBPyConnection:
    con.execute(f"SET memory_limit = '{memory_limit}'")
    return con


def ensure_schema(con: duckdb.DuckDBPyConnection) -> bool:
    """Create every contract table that is missing (a database from an older wpipe gains the
    tables added since), then the views. False: a served table's lake files are gone (the
    lake was moved or deleted) and the views were left as they were (sync.reconcile)."""
    had_names = _has_table(con, schema.MODEL_NAMES.name)
    served = _served_views(con)  # views: their columns are the contract's when re-pointed
    present = _stored_columns(con)
    for table in schema.ALL_TABLES:
        if table.name in served:
            continue
        if table.name not in present:
            con.execute(table_ddl(table))
        else:
            _add_missing_columns(con, table, present[table.name])
    con.execute(LAKE_VERSIONS_DDL)
    con.execute(STATE_DDL)
    if not had_names:
        naming.adopt(con)  # a database from before model_names keeps the names it had
    if not _lake_files_present(con, served):
        return False
    if not _views_current(con):
        views.apply(con)
        con.execute("INSERT OR REPLACE INTO ingest_state VALUES (?, ?)",
                    [VIEWS_SHA, views.fingerprint()])  # fmt: skip
    return True


def _views_current(con: duckdb.DuckDBPyConnection) -> bool:
    """The views were made from this package's SQL files (their fingerprint is recorded) and
    are all there: applying them again (every writer did, ~0.1 s of CPU and a WAL's writes)
    would change nothing."""
    query = "SELECT value FROM ingest_state WHERE name = ?"
    recorded = con.execute(query, [VIEWS_SHA]).fetchall()
    if not recorded or recorded[0][0] != views.fingerprint():
        return False
    return views.missing_objects(con) == set()


def stored_views_current(con: duckdb.DuckDBPyConnection, stored: set[str]) -> bool:
    """For a reader: the database's own views are this package's (a writer of the same SQL
    made them, and none is missing) and the lake files they read are there, so TEMP copies
    of them would change nothing (making them took ~0.06 s of CPU). `stored`:
    views.stored_names."""
    return (
        "ingest_state" in stored
        and _views_current(con)
        and _lake_files_present(con, _served_views(con))
    )


def _lake_files_present(con: duckdb.DuckDBPyConnection, served: set[str]) -> bool:
    """Every file the `served` views read exists (binding a view opens each of them)."""
    try:
        for name in served:
            con.execute(f"SELECT * FROM {name} LIMIT 0")
    except duckdb.IOException:
        return False
    return True


def _stored_columns(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """table -> its column names, for every table of the database's main schema."""
    query = "SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main'"
    present: dict[str, set[str]] = {}
    for table, column in con.execute(query).fetchall():
        present.setdefault(table, set()).add(column)
    return present


def _add_missing_columns(
    con: duckdb.DuckDBPyConnection, table: schema.Table, present: set[str]
) -> None:
    """Columns added to the contract since an older wpipe made the table (NULL in old rows)."""
    for column in table.columns:
        if column.name not in present:
            kind = _DUCK_TYPES[column.type_name]
            con.execute(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')


def _served_views(con: duckdb.DuckDBPyConnection) -> set[str]:
    names = {t.name for t in SERVED}
    query = "SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT temporary"
    return {name for (name,) in con.execute(query).fetchall() if name in names}


def _select_files(table: schema.Table, files: list[str]) -> str:
    """SELECT of `table`'s columns from Parquet `files` (none: no rows, the same columns);
    by name, so a file from before a column was added reads it as NULL."""
    if not files:
        nulls = [f'NULL::{_DUCK_TYPES[c.type_name]} AS "{c.name}"' for c in table.columns]
        columns = ", ".join(nulls)
        return f"SELECT {columns} LIMIT 0"
    columns = ", ".join(f'"{c}"' for c in table.column_names)
    quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return f"SELECT {columns} FROM read_parquet([{quoted}], union_by_name = true)"


def serve_moved(con: duckdb.DuckDBPyConnection, db_path: str | os.PathLike) -> str | None:
    """For a reader of a database whose lake's files are gone from the recorded place: the
    lake moved with the database (beside it under the same name, or `<db>.lake`) and still at
    the versions the database loaded serves the SERVED tables through TEMP views (nothing is
    written; the next ingest re-points the stored ones). Returns that lake's folder, or None."""
    try:
        recorded = con.execute("SELECT lake, table_name, version FROM lake_versions").fetchall()
    except duckdb.CatalogException:  # a database of an older wpipe
        return None
    if not recorded or "://" in recorded[0][0]:
        return None
    db = Path(os.path.abspath(db_path))
    versions = {t: v for _, t, v in recorded}
    for folder in dict.fromkeys([db.parent / Path(recorded[0][0]).name, default_lake(db)]):
        if str(folder) == recorded[0][0] or not all(
            (folder / t / "_delta_log").is_dir() for t in versions
        ):
            continue  # reading a table that is not there would create it
        from wpipe.store.lake import Lake

        lake = Lake.open(str(folder))
        if {t: lake.table(t).version() for t in versions} != versions:
            continue
        for table in SERVED:
            select = _select_files(table, lake.current_local_paths(table.name))
            con.execute(f"CREATE OR REPLACE TEMP VIEW {table.name} AS {select}")
        return str(folder)
    return None


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    query = "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'"
    return bool(con.execute(query, [name]).fetchone()[0])


class Database:
    """The DuckDB file: contract tables, views, and per-model replace/remove."""

    def __init__(
        self,
        path: str | os.PathLike,
        read_only: bool = False,
        lock: dblock.WriterLock | None = None,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        """A writer first takes the writer lock (`lock`, or a new one: DatabaseBusy when
        another wpipe writer has it), before DuckDB touches the file. `con`: the file already
        open (a caller that checked it first), used rather than opened a second time."""
        self.path = str(path)
        self._lock = None if read_only else (lock or dblock.WriterLock(self.path))
        self.memory_limit = MEMORY_LIMIT if read_only else WRITER_MEMORY_LIMIT
        try:
            opened = con or duckdb.connect(self.path, read_only=read_only)
            self.con = configure(opened, self.memory_limit)
            self.lost_lake = not read_only and not ensure_schema(self.con)
            self.served = _served_views(self.con)
        except BaseException:
            opened = getattr(self, "con", None) is not None
            if opened:
                self.con.close()
            # DuckDB would not open it (a model file given as the database): no lock file
            # is left beside it
            self._release(discard=not opened)
            raise

    def close(self) -> None:
        try:
            self.con.close()
        finally:  # the lock goes last, whatever closing the connection met
            self._release()

    def _release(self, discard: bool = False) -> None:
        if self._lock is not None:
            if discard:
                self._lock.discard()
            else:
                self._lock.release()
            self._lock = None

    def release_memory(self) -> None:
        """Evict DuckDB's cache of the database's blocks (lowering the limit evicts, then it is
        restored). Each batch an ingest loads stays cached up to the limit otherwise: the
        driver's RSS grew ~17 MB a batch, 449 MB at 2,000 small models and 972 MB at 10,000,
        and the next batch reads the few blocks it needs back from the OS's page cache."""
        try:
            self.con.execute("SET memory_limit = '1MB'")
        except duckdb.Error:  # blocks still pinned (never here between batches): keep them
            pass
        finally:
            self.con.execute(f"SET memory_limit = '{self.memory_limit}'")

    def known_files(self) -> dict[str, tuple[int, float, str, str | None]]:
        """path -> (file_bytes, mtime, sha256, ingest_options) of every ingested model."""
        rows = self.con.execute(
            "SELECT path, file_bytes, mtime, sha256, ingest_options FROM models"
        ).fetchall()
        return {p: (b, m, s, o) for p, b, m, s, o in rows}

    def known_files_by_id(self) -> dict[str, tuple[str, int, float]]:
        """model_id -> (path, file_bytes, mtime)."""
        rows = self.con.execute("SELECT model_id, path, file_bytes, mtime FROM models")
        return {mid: (p, b, m) for mid, p, b, m in rows.fetchall()}

    def known_failures(self) -> dict[str, tuple[int, float, str]]:
        """path -> (file_bytes, mtime, message) of every recorded failure."""
        rows = self.con.execute("SELECT path, file_bytes, mtime, message FROM ingest_errors")
        return {p: (b, m, msg) for p, b, m, msg in rows.fetchall()}

    def load_batch(
        self,
        lake: Lake,
        files: dict[str, list[str]],
        model_ids: Iterable[str],
        versions: dict[str, int],
        replaced: Iterable[str] | None = None,
    ) -> None:
        """Swap the rows of `model_ids` for those of the just committed lake `files` (table ->
        file names), and record the lake versions now loaded, all in one transaction.
        `replaced`: the ids that may have rows here already (None: any of them); the others
        cost no delete (a scan of every table per batch, the bulk of a large first ingest).
        A batch that runs out of the writer's memory is loaded again under LOAD_RETRY_LIMIT."""
        model_ids = list(model_ids)
        replaced = None if replaced is None else list(replaced)
        try:
            self._load_batch(lake, files, model_ids, versions, replaced)
        except duckdb.OutOfMemoryException:
            self.con.execute(f"SET memory_limit = '{LOAD_RETRY_LIMIT}'")
            try:
                self._load_batch(lake, files, model_ids, versions, replaced)
            finally:
                self.con.execute(f"SET memory_limit = '{self.memory_limit}'")

    def _load_batch(self, lake, files, ids: list[str], versions, replaced) -> None:
        import pyarrow as pa

        gone = pa.table({"model_id": pa.array(ids if replaced is None else replaced,
                                              pa.string())})  # fmt: skip
        self.con.execute("BEGIN TRANSACTION")
        self.con.register("batch_ids", pa.table({"model_id": pa.array(ids, pa.string())}))
        self.con.register("replaced_ids", gone)
        try:
            for table in self.copied():
                if gone.num_rows:
                    self.con.execute(
                        f"DELETE FROM {table.name} "
                        "WHERE model_id IN (SELECT model_id FROM replaced_ids)"
                    )
                if files.get(table.name):
                    self._insert_files(lake, table, files[table.name])
            self.con.execute(  # the batch's models are loaded: their paths' old errors go
                "DELETE FROM ingest_errors WHERE path IN (SELECT path FROM models "
                "WHERE model_id IN (SELECT model_id FROM batch_ids))"
            )
            self._record_versions(lake, versions)
            self._set_drift_pending()
            self.con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        finally:
            self.con.unregister("batch_ids")
            self.con.unregister("replaced_ids")

    def _insert_files(self, lake: Lake, table: schema.Table, files: list[str]) -> None:
        """Rows of committed data files: a local lake through DuckDB's own Parquet reader
        (built in, ~2x the Arrow scan), any other through the Arrow dataset (no extension)."""
        local = lake.local_paths(table.name, files)
        if local is None:
            insert_arrow(self.con, table, lake.dataset(table.name, files))
            return
        columns = ", ".join(f'"{c}"' for c in table.column_names)
        self.con.execute(
            f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM read_parquet(?)", [local]
        )

    def _rollback(self) -> None:
        """ROLLBACK after a failed statement; a connection a full disk invalidated has no
        transaction left to roll back, and the first error is the one to report."""
        with contextlib.suppress(duckdb.Error):
            self.con.execute("ROLLBACK")

    def load_lake(self, lake: Lake) -> None:
        """Replace every model table's rows by the lake's (a lake without its database)."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            for table in self.copied():
                self.con.execute(f"DELETE FROM {table.name}")
                insert_arrow(self.con, table, lake.dataset(table.name))
            self._record_versions(lake, lake.versions())
            self._set_drift_pending()
            self.con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def export_to_lake(self, lake: Lake) -> None:
        """Write every model table into the lake (a database without its lake, or a lake of
        an older wpipe being migrated)."""
        versions = {}
        for table in schema.MODEL_TABLES:
            versions[table.name] = lake.overwrite(table.name, self.stream(table))
        self.con.execute("BEGIN TRANSACTION")
        self._record_versions(lake, versions)
        self.con.execute("COMMIT")

    def forget_models(self, lake: Lake) -> None:
        """Drop every model (the next ingest reads each file again; names stay) and serve the
        lake's rows: for a database whose lake is gone."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            for table in self.copied():
                self.con.execute(f"DELETE FROM {table.name}")
            self._record_versions(lake, lake.versions())
            self.con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def copied(self) -> list[schema.Table]:
        """The model tables this database holds rows of (the others it serves from the lake)."""
        return [t for t in schema.MODEL_TABLES if t.name not in self.served]

    def serve_from(self, lake: Lake) -> None:
        """Make the SERVED tables views over `lake`'s files if it is on the local disk, and
        copies if not (DuckDB reads object storage only through an extension it downloads).
        The database must hold what the lake holds (sync.reconcile)."""
        local = lake.local
        for table in SERVED:
            if local == (table.name in self.served):
                continue
            self.con.execute("BEGIN TRANSACTION")
            try:
                if local:
                    self.con.execute(f"DROP TABLE {table.name}")
                    self.served.add(table.name)
                    self._point(lake, table)
                else:
                    self.con.execute(f"CREATE TABLE wpipe_copy AS SELECT * FROM {table.name}")
                    self.con.execute(f"DROP VIEW {table.name}")
                    self.con.execute(f"ALTER TABLE wpipe_copy RENAME TO {table.name}")
                    self.served.discard(table.name)
                self.con.execute("COMMIT")
            except BaseException:
                self._rollback()
                self.served = _served_views(self.con)
                raise

    def _point(self, lake: Lake, table: schema.Table) -> None:
        """(Re)define the view of served `table` over the lake's current files of it."""
        files = lake.current_local_paths(table.name)
        self.con.execute(f"CREATE OR REPLACE VIEW {table.name} AS {_select_files(table, files)}")

    def stream(self, table: schema.Table, rows: int = STREAM_ROWS) -> pa.RecordBatchReader:
        """The rows of `table` in batches of `rows`, in the contract's Arrow schema."""
        import pyarrow as pa

        columns = ", ".join(f'"{c}"' for c in table.column_names)
        reader = self.con.sql(f"SELECT {columns} FROM {table.name}").to_arrow_reader(rows)
        return pa.RecordBatchReader.from_batches(
            table.arrow_schema, (b.cast(table.arrow_schema) for b in reader)
        )

    def lake_beside(self) -> str | None:
        """The lake this database recorded, found beside it under the same name (a project
        folder moved or copied whole, its lake not named `<db>.lake`); None when there is
        no wpipe lake there (the default then applies)."""
        rows = self.con.execute("SELECT DISTINCT lake FROM lake_versions").fetchall()
        if len(rows) != 1 or "://" in rows[0][0]:
            return None
        folder = Path(os.path.abspath(self.path)).parent / Path(rows[0][0]).name
        return str(folder) if (folder / "models" / "_delta_log").is_dir() else None

    def lake_versions(self, lake: Lake) -> dict[str, int]:
        """table -> lake version this database holds (empty: never loaded from this lake)."""
        rows = self.con.execute(
            "SELECT table_name, version FROM lake_versions WHERE lake = ?", [lake.location.root]
        ).fetchall()
        return dict(rows)

    def record_versions(self, lake: Lake, versions: dict[str, int]) -> None:
        self.con.execute("BEGIN TRANSACTION")
        self._record_versions(lake, versions)
        self.con.execute("COMMIT")

    def _record_versions(self, lake: Lake, versions: dict[str, int]) -> None:
        """Record `versions` (the lake's current ones) as loaded; served views follow them."""
        for table in SERVED:
            if table.name in versions and table.name in self.served:
                self._point(lake, table)
        root = lake.location.root
        self.con.execute("DELETE FROM lake_versions WHERE lake <> ?", [root])
        if versions:  # one statement: one per table costs a quarter second on a busy machine
            import pyarrow as pa

            rows = pa.table({"lake": [root] * len(versions), "table_name": list(versions),
                             "version": pa.array(list(versions.values()), pa.int64())})  # fmt: skip
            self.con.register("loaded_versions", rows)
            try:
                self.con.execute(
                    "INSERT OR REPLACE INTO lake_versions SELECT * FROM loaded_versions"
                )
            finally:
                self.con.unregister("loaded_versions")

    def _set_drift_pending(self) -> None:
        self.con.execute("INSERT OR REPLACE INTO ingest_state VALUES (?, 'yes')", [DRIFT_PENDING])

    def drift_pending(self) -> bool:
        """Models were loaded since series drift was last completed (`drift_done`)."""
        query = "SELECT count(*) FROM ingest_state WHERE name = ?"
        return bool(self.con.execute(query, [DRIFT_PENDING]).fetchone()[0])

    def drift_done(self) -> None:
        self.con.execute("DELETE FROM ingest_state WHERE name = ?", [DRIFT_PENDING])

    def touch_model(self, path: str, mtime: float) -> None:
        self.con.execute("UPDATE models SET mtime = ? WHERE path = ?", [mtime, path])

    def record_error(self, path: str, code: str, message: str, size: int, mtime: float) -> None:
        self.con.execute("BEGIN TRANSACTION")
        self.con.execute("DELETE FROM ingest_errors WHERE path = ?", [path])
        self.con.execute(
            'INSERT INTO ingest_errors (path, error, message, "at", file_bytes, mtime) '
            "VALUES (?, ?, ?, ?, ?, ?)",
            [path, code, message, datetime.now(timezone.utc), size, mtime],
        )
        self.con.execute("COMMIT")

    def clear_errors(self, paths: Iterable[str]) -> None:
        for path in paths:
            self.con.execute("DELETE FROM ingest_errors WHERE path = ?", [path])

    def refresh_names(self, roots: Iterable[str | os.PathLike] = ()) -> int:
        """Name the models ingested from `roots` that have no name yet (docs:
        model-names); the names of the others never change."""
        return naming.refresh(self.con, roots)
