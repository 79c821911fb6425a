"""The Python API for notebooks and scripts; the CLI is a thin layer over it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from wpipe import store
from wpipe.dblock import DatabaseBusy

__all__ = ["DatabaseBusy", "connect", "default_db", "resolve_model"]

DEFAULT_DB = "wpipe.duckdb"


def default_db() -> str:
    return os.environ.get("WPIPE_DB", DEFAULT_DB)


def connect(
    db: str | os.PathLike | None = None,
    wait: float = 0.0,
    on_wait: Callable[[], None] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open an ingested database with the views of `sql/` (re)applied.

    While another process writes it (an ingest holds DuckDB's lock for its whole run), retry
    for up to `wait` seconds, calling `on_wait` once when the waiting starts; then raise
    DatabaseBusy."""
    path = Path(db or default_db())
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such database; run `wpipe ingest` first")
    deadline = time.monotonic() + wait
    while True:
        try:
            return _open(path)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise DatabaseBusy(
                    f"{path}: another process (a `wpipe ingest`?) is writing it; waited "
                    f"{wait:g} s — try again when it has finished (WPIPE_WAIT sets the wait)"
                ) from None
        if on_wait is not None:
            on_wait()
            on_wait = None
        time.sleep(0.5)


def _open(path: Path) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException:
        # locked for writing elsewhere: a read-only open works where the platform allows it
        return duckdb.connect(str(path), read_only=True)
    store.ensure_schema(con)
    return con


def resolve_model(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """model_id of the model named `ref` by name, path, or unique model_id prefix."""
    absolute = str(Path(ref).resolve())
    rows = con.execute(
        "SELECT model_id FROM models WHERE name = ? OR path = ? OR path = ?",
        [ref, ref, absolute],
    ).fetchall()
    if not rows:
        rows = con.execute(
            "SELECT model_id FROM models WHERE starts_with(model_id, ?)", [ref.lower()]
        ).fetchall()
    if len(rows) == 1:
        return rows[0][0]
    if not rows:
        raise LookupError(f"no model is named {ref!r} (try `wpipe models`)")
    raise LookupError(f"{ref!r} names {len(rows)} models; use a longer name or the path")
