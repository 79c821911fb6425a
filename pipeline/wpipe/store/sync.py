"""Keeping the lake and the database in step: before an ingest (a killed run, a lost database
or lake, a lake of an older wpipe), after it (names and times), and around compaction."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from wpipe import schema
from wpipe.store.duck import Database
from wpipe.store.lake import TABLES, Lake

_OLD_PARTITION = re.compile(r"^[0-9a-f]{16}$")


class LakeMismatch(Exception):
    """The database and the lake hold different models and neither says which is right."""


def reconcile(db: Database, lake: Lake) -> list[str]:
    """Make the lake and the database hold the same models; returns notes for the user.

    - a lake of wpipe <= 0.1 (a folder per model) is migrated into Delta tables;
    - lake commits the database never loaded (a run killed in between) are rolled back;
    - a lake without its database loads the database; a database without its lake writes it.
    """
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


def migrate_partitions(db: Database, lake: Lake) -> bool:
    """A lake of the older layout (`<lake>/<model_id>/<table>.parquet`) becomes Delta tables
    holding the same rows; the old folders are removed afterwards."""
    root = Path(lake.location.root)
    if "://" in lake.location.root or not root.is_dir():
        return False
    old = [p for p in root.iterdir() if p.is_dir() and _OLD_PARTITION.match(p.name)]
    if not old:
        return False
    versions = {}
    for name, table in TABLES.items():
        files = [str(p / f"{name}.parquet") for p in old if (p / f"{name}.parquet").is_file()]
        rows = pads.dataset(files, schema=table.arrow_schema, format="parquet")
        reader = pa.RecordBatchReader.from_batches(table.arrow_schema, rows.to_batches())
        versions[name] = lake.overwrite(name, reader)
    db.record_versions(lake, versions)
    for p in old:
        shutil.rmtree(p)
    shutil.rmtree(root / ".tmp", ignore_errors=True)
    return True


def push_models(db: Database, lake: Lake) -> None:
    """Give the lake's `models` table the database's rows (names widened, mtimes touched)."""
    columns = ", ".join(f'"{c}"' for c in schema.MODELS.column_names)
    rows = db.con.sql(f"SELECT {columns} FROM models ORDER BY model_id").to_arrow_table()
    version = lake.overwrite("models", rows.cast(schema.MODELS.arrow_schema))
    db.record_versions(lake, {"models": version})


def compact(db: Database, lake: Lake) -> dict[str, int]:
    """Merge the lake's small files and delete unreferenced ones; the database records the
    new versions before any file is deleted (a kill in between leaves nothing to restore)."""
    lake.compact()
    db.record_versions(lake, lake.versions())
    lake.vacuum()
    return lake.file_count()
