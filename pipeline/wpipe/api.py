"""The Python API for notebooks and scripts; the CLI is a thin layer over it.

DuckDB lets one process write a database file, or any number of processes read it (docs:
conventions, One writer). `connect()` opens read-only by default, so a notebook holding a
connection never locks `wpipe models` out; ingest and `wpipe metrics add` are the writers.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from wpipe import store, views
from wpipe.core import dblock, schema
from wpipe.core.suggest import did_you_mean
from wpipe.store.duck import serve_moved, table_ddl

DEFAULT_DB = "wpipe.duckdb"


class DatabaseError(Exception):
    """A database that cannot be opened as a wpipe database (one line says why)."""


class DatabaseLocked(DatabaseError):
    """Another process writes the database (an ingest holds it for its whole run)."""


# Seconds a command waits for a database another process is writing (WPIPE_WAIT overrides).
DEFAULT_WAIT = 30.0
WAIT_ENV = "WPIPE_WAIT"


def default_wait() -> float:
    """WPIPE_WAIT seconds (`inf` waits for as long as it takes), else DEFAULT_WAIT."""
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_WAIT
    try:
        wait = float(text)
    except ValueError:
        raise DatabaseError(f"{WAIT_ENV}={text!r}: not a number of seconds") from None
    if wait != wait or wait < 0:
        raise DatabaseError(f"{WAIT_ENV}={text!r}: not a number of seconds")
    return wait


def default_db() -> str:
    return os.environ.get("WPIPE_DB", DEFAULT_DB)


def connect(
    db: str | os.PathLike | None = None,
    read_only: bool = True,
    wait: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open an ingested database with this wpipe's views. Read-only by default: readers in any
    number of processes, never blocking one another; `read_only=False` for a writer (it also
    upgrades a database made by an older wpipe).

    While another process writes the file (an ingest holds it for its whole run), retry for
    up to `wait` seconds, calling `on_wait(why)` once when the waiting starts; then raise
    DatabaseLocked."""
    path = Path(db or default_db())
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such database; run `wpipe ingest` first")
    con = open_waiting(path, read_only, wait, on_wait)
    try:
        if not views.stored_table(con, "models"):
            raise DatabaseError(f"{path}: not a wpipe database (it has no models table)")
        if read_only:
            _temporary_schema(con, path)
        elif not store.ensure_schema(con):
            raise DatabaseError(_LAKE_MISSING.format(path=path))
    except BaseException:
        con.close()
        raise
    return con


def open_waiting(
    path: Path, read_only: bool, wait: float, on_wait: Callable[[str], None] | None = None
) -> duckdb.DuckDBPyConnection:
    """`open_duckdb`, retried while the file is locked, for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return open_duckdb(path, read_only)
        except DatabaseLocked as exc:
            if time.monotonic() >= deadline:
                if wait:
                    raise DatabaseLocked(
                        f"{exc} (waited {wait:g} s; {WAIT_ENV} sets the wait)"
                    ) from None
                raise
            if on_wait is not None:
                on_wait(str(exc).split(";")[0])
                on_wait = None
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def open_duckdb(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """duckdb.connect with errors a user can act on: a folder, another kind of file, a lock."""
    if path.is_dir():
        raise DatabaseError(f"{path}: is a folder, not a database file")
    try:
        return store.configure(duckdb.connect(str(path), read_only=read_only))
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise DatabaseLocked(lock_message(path, text, read_only)) from None
        raise DatabaseError(f"{path}: not a DuckDB database ({_first_line(text)})") from None
    except duckdb.Error as exc:
        raise DatabaseError(f"{path}: cannot open ({_first_line(str(exc))})") from None


def lock_message(path: Path, duckdb_text: str, read_only: bool) -> str:
    """Who holds the lock and what to do, from DuckDB's 'held in <program> (PID n)'."""
    held = re.search(r"held in (.+?) \(PID (\d+)\)", duckdb_text)
    who = f"process {held.group(2)} ({held.group(1)})" if held else "another process"
    holder = dblock.holder(path)  # a wpipe writer says what it is in <db>.lock
    if held and holder and f"(PID {held.group(2)}," in holder:
        who = f"process {held.group(2)} ({holder.split(' (PID')[0]})"
    if read_only:
        return (
            f"{path}: locked for writing by {who} (an ingest, or a Python connection opened "
            "with read_only=False); wait for it to finish or close that connection"
        )
    return (
        f"{path}: locked, open in {who}; DuckDB lets one process write a database only while "
        "no other has it open: close that connection (a notebook's `con.close()`) or wait for "
        "it, then run this again"
    )


def _temporary_schema(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Views as TEMP objects; contract tables an older wpipe did not make, as empty TEMP
    tables (an ingest adds them for good)."""
    stored = views.stored_names(con)
    for table in schema.ALL_TABLES:
        if table.name.lower() not in stored:
            con.execute(table_ddl(table).replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
    if store.stored_views_current(con, stored):
        return
    try:
        views.apply(con, temporary=True)
    except (duckdb.BinderException, duckdb.CatalogException) as exc:
        raise DatabaseError(
            f"{path}: made by another wpipe version ({_first_line(str(exc))}); run "
            "`wpipe ingest` on it once to upgrade it"
        ) from None
    except duckdb.IOException:  # a served table's lake files (store.SERVED)
        if serve_moved(con, path) is None:  # moved with the database: read it there
            raise DatabaseError(_LAKE_MISSING.format(path=path)) from None
        views.apply(con, temporary=True)


_LAKE_MISSING = (
    "{path}: files of its lake are missing (moved or deleted); run `wpipe ingest` on it, with "
    "--lake if the lake moved elsewhere than next to it"
)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def resolve_model(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    """model_id of the one model `ref` names: by name, path, unique model_id prefix, or a
    glob over names and paths that matches one model (resolve_models' rules)."""
    found = resolve_models(con, [ref])
    if len(found) > 1:
        raise LookupError(f"{ref!r} names {len(found)} models; use a longer name or the path")
    return found[0]


def resolve_models(con: duckdb.DuckDBPyConnection, refs: list[str]) -> list[str]:
    """model_ids of models named by name, path, model_id prefix or a glob over names and
    paths (`cnn_lr1e-2/*`, `*/e05`); in the order given, each once. A model's exact name or
    path comes first, so a name holding `*?[` is found as itself; then a glob; then a
    model_id prefix. A ref matching nothing is an error that suggests the closest names."""
    out: list[str] = []
    for ref in refs:
        found = _exact(con, ref)
        if not found and any(c in ref for c in "*?["):
            found = _glob(con, ref)
            if not found:
                raise LookupError(
                    f"no model matches {ref!r}{_suggest(con, ref)}; `wpipe models` lists them"
                )
        elif not found:
            found = _by_id_prefix(con, ref)
        out += [m for m in found if m not in out]
    return out


def _exact(con: duckdb.DuckDBPyConnection, ref: str) -> list[str]:
    """The model whose name or path is `ref` (a relative path too); a name wins over another
    model's path."""
    try:
        absolute = str(Path(ref).resolve())
    except (OSError, ValueError):  # a NUL byte, a loop of symlinks: no file of ours
        absolute = ref
    rows = con.execute(
        "SELECT model_id FROM models WHERE name = $ref OR path = $ref OR path = $absolute "
        "ORDER BY name = $ref DESC LIMIT 1",
        {"ref": ref, "absolute": absolute},
    ).fetchall()
    return [rows[0][0]] if rows else []


def _by_id_prefix(con: duckdb.DuckDBPyConnection, ref: str) -> list[str]:
    rows = con.execute(
        "SELECT model_id FROM models WHERE starts_with(model_id, ?)", [ref.lower()]
    ).fetchall()
    if not rows:
        raise LookupError(
            f"no model is named {ref!r}{_suggest(con, ref)}; `wpipe models` lists them"
        )
    if len(rows) > 1:
        raise LookupError(f"{ref!r} names {len(rows)} models; use a longer name or the path")
    return [rows[0][0]]


def _suggest(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    names = [name for (name,) in con.execute("SELECT name FROM models").fetchall()]
    return did_you_mean(ref, names)


def _glob(con: duckdb.DuckDBPyConnection, pattern: str) -> list[str]:
    rows = con.execute("SELECT model_id, name, path FROM models ORDER BY name").fetchall()
    return [
        model_id
        for model_id, name, path in rows
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(path, pattern)
    ]


def connect_lake(lake: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """Query a lake in place — a folder or an `s3://` URL (standard AWS settings) — with
    DuckDB: an in-memory connection whose contract tables scan the lake's Delta tables
    through their Arrow datasets (no copy, no DuckDB extension to download)."""
    from wpipe.store.remote import open_lake
    from wpipe.store.sync import lake_connection

    return lake_connection(open_lake(lake))
