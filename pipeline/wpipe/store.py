"""store stage: the Parquet lake (one folder per model, swapped in atomically) and DuckDB.

Lake layout: `<lake>/<model_id>/<table>.parquet`, one file per non-empty table of the model
(models, layers, weights, histograms, weight_values, units, spectra, eigenvalues). A partition
is written under `<lake>/.tmp/` and renamed into place, so a reader never sees half a model.
The DuckDB file holds the same tables plus the derived ones and ingest_errors; models are
replaced in batches, each batch inside one transaction.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from wpipe import dblock, naming, schema, views

_DUCK_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.float32(): "FLOAT",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.list_(pa.int64()): "BIGINT[]",
}


_SMALL_FILE: dict = {"write_statistics": False, "use_dictionary": False}
_TILE_FILE: dict = {
    "write_statistics": False,
    "use_dictionary": ["model_id", "layer_path", "weight_name"],
    "compression": "zstd",
    "column_encoding": {
        **{c: "DELTA_BINARY_PACKED" for c in ("rows", "cols", "tile_row", "tile_col",
                                               "row_start", "row_end", "col_start", "col_end")},
        "mean": "BYTE_STREAM_SPLIT",
        "peak": "BYTE_STREAM_SPLIT",
    },
}  # fmt: skip


def _ddl(table: schema.Table) -> str:
    columns = ", ".join(f'"{c.name}" {_DUCK_TYPES[c.type]}' for c in table.columns)
    return f"CREATE TABLE IF NOT EXISTS {table.name} ({columns})"


_MODEL_ID = re.compile(r"^[0-9a-f]{16}$")


def default_lake(db_path: str | os.PathLike) -> Path:
    return Path(db_path).with_suffix(".lake")


class Partition:
    """A model's Parquet files being written; `commit()` swaps them into the lake."""

    def __init__(self, lake: Path, model_id: str) -> None:
        self.tmp = lake / ".tmp" / f"{model_id}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self._values: pq.ParquetWriter | None = None

    def write_values(self, batch: pa.RecordBatch) -> None:
        if self._values is None:
            # delta-coded indices and byte-split floats: ~3.9 bytes a value instead of ~8.9
            self._values = pq.ParquetWriter(
                self.tmp / "weight_values.parquet",
                batch.schema,
                use_dictionary=["model_id", "layer_path", "weight_name"],
                column_encoding={"flat_index": "DELTA_BINARY_PACKED", "value": "BYTE_STREAM_SPLIT"},
            )
        self._values.write_batch(batch)

    def finish(self, tables: dict[str, pa.Table]) -> None:
        """Write the model's tables; an empty table gets no file (readers glob the lake)."""
        if self._values is not None:
            self._values.close()
        for name, table in tables.items():
            if table.num_rows:
                # a few rows each: column statistics and dictionaries cost more than they save
                # (weight_tiles has thousands: encoded like weight_values, ~3.6x smaller)
                options = _TILE_FILE if name == "weight_tiles" else _SMALL_FILE
                pq.write_table(table, self.tmp / f"{name}.parquet", **options)

    def abort(self) -> None:
        if self._values is not None:
            self._values.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def commit_partition(lake: Path, model_id: str, tmp: Path) -> Path:
    """Swap a finished partition into the lake (renames: atomic on one filesystem)."""
    final = lake / model_id
    trash = None
    if final.exists():
        trash = lake / ".tmp" / f"trash-{model_id}-{uuid.uuid4().hex[:8]}"
        final.rename(trash)
    tmp.rename(final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return final


def discard_partials(lake: Path, model_id: str) -> None:
    """Remove a model's half-written partitions (its worker was stopped or died)."""
    for partial in (lake / ".tmp").glob(f"{model_id}-*"):
        shutil.rmtree(partial, ignore_errors=True)


def sweep_orphans(lake: Path, model_ids: Iterable[str]) -> None:
    """Remove lake partitions of models the database does not hold (a run stopped between
    committing a partition and loading it, e.g. by a full disk)."""
    if not lake.is_dir():
        return
    keep = set(model_ids)
    for entry in lake.iterdir():
        if _MODEL_ID.match(entry.name) and entry.name not in keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def remove_partition(lake: Path, model_id: str) -> None:
    shutil.rmtree(lake / model_id, ignore_errors=True)


def insert_arrow(con: duckdb.DuckDBPyConnection, table: schema.Table, rows: pa.Table) -> None:
    """Append Arrow rows to a contract table in one scan (not one statement per row)."""
    columns = ", ".join(f'"{c}"' for c in table.column_names)
    con.register("incoming_rows", rows)
    try:
        con.execute(f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every contract table and column that is missing (a database from an older wpipe
    gains the tables and columns added since), then the views."""
    had_names = _has_table(con, schema.MODEL_NAMES.name)
    for table in schema.ALL_TABLES:
        con.execute(_ddl(table))
        for c in table.columns:  # columns added since the database was made (weights.status)
            kind = _DUCK_TYPES[c.type]
            con.execute(f'ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS "{c.name}" {kind}')
    if not had_names:
        naming.adopt(con)  # a database from before model_names keeps the names it had
    views.apply(con)


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    query = "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'"
    return bool(con.execute(query, [name]).fetchone()[0])


class Database:
    """The DuckDB file: contract tables, views, and per-model replace/remove."""

    def __init__(self, path: str | os.PathLike, read_only: bool = False) -> None:
        self.path = str(path)
        self.con = duckdb.connect(self.path, read_only=read_only)
        self._lock: dblock.WriterLock | None = None
        if not read_only:
            try:  # before anything is changed: a second writer is refused here
                self._lock = dblock.WriterLock(self.path)
            except dblock.DatabaseBusy:
                self.con.close()
                raise
            ensure_schema(self.con)

    def close(self) -> None:
        self.con.close()
        if self._lock is not None:  # only now: closing it earlier drops DuckDB's lock too
            self._lock.release()
            self._lock = None

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

    def replace_models(
        self, partitions: dict[str, Path], tables: dict[str, dict[str, pa.Table]] | None = None
    ) -> None:
        """Swap each model's rows for those in its lake partition, all in one transaction.

        `tables` (model_id -> table name -> rows) are the partition's small tables already in
        memory; they are inserted from Arrow instead of being read back from Parquet."""
        if not partitions:
            return
        ids = list(partitions)
        tables = tables or {}
        self.con.execute("BEGIN TRANSACTION")
        try:
            for table in schema.MODEL_TABLES:
                self.con.execute(
                    f"DELETE FROM {table.name} WHERE list_contains(?, model_id)", [ids]
                )
                columns = ", ".join(f'"{c}"' for c in table.column_names)
                held = [tables.get(i, {}).get(table.name) for i in ids]
                if all(t is not None for t in held):
                    insert_arrow(self.con, table, pa.concat_tables(held))
                    continue
                files = [p / f"{table.name}.parquet" for p in partitions.values()]
                sources = [str(f) for f in files if f.exists()]
                if sources:
                    self.con.execute(
                        f"INSERT INTO {table.name} ({columns}) "
                        f"SELECT {columns} FROM read_parquet(?)",
                        [sources],
                    )
            self.con.execute(
                "DELETE FROM ingest_errors WHERE path IN "
                "(SELECT path FROM models WHERE list_contains(?, model_id))",
                [ids],
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def touch_model(self, path: str, mtime: float) -> None:
        self.con.execute("UPDATE models SET mtime = ? WHERE path = ?", [mtime, path])

    def remove_models(self, model_ids: Iterable[str]) -> None:
        ids = list(model_ids)
        if not ids:
            return
        self.con.execute("BEGIN TRANSACTION")
        for table in schema.MODEL_TABLES:
            self.con.execute(f"DELETE FROM {table.name} WHERE list_contains(?, model_id)", [ids])
        self.con.execute("COMMIT")

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
        """Name the models ingested from `roots` that have no name yet (README: Model
        names); the names of the others never change."""
        return naming.refresh(self.con, roots)
