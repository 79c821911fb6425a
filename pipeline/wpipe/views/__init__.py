"""views stage: the SQL files of the package's `wpipe/sql/` resources (the repository's
top-level `sql/` folder, shipped inside the package), applied in name order."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from importlib.resources.abc import Traversable

import duckdb

# The views every database gets; a file missing from an install is an error, never zero views.
VIEW_FILES = (
    "00_settings.sql",
    "10_layer_weights.sql",
    "20_model_summary.sql",
    "25_activation_health.sql",
    "30_weight_health.sql",
    "40_model_spectral_summary.sql",
    "50_compare.sql",
    "55_identity.sql",
    "60_lineage.sql",
)


class ViewsMissing(RuntimeError):
    """The installed package lacks SQL view files (a broken install, not a user error)."""


def sql_dir() -> Traversable:
    return resources.files("wpipe.sql")


def sql_files() -> list[Traversable]:
    """Every view file in name order; raises ViewsMissing when one of VIEW_FILES is absent."""
    try:
        found = {f.name: f for f in sql_dir().iterdir() if f.name.endswith(".sql")}
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError) as exc:
        raise ViewsMissing(f"wpipe is installed without its SQL views ({exc}); reinstall") from None
    missing = [name for name in VIEW_FILES if name not in found]
    if missing:
        raise ViewsMissing(
            f"wpipe is installed without the SQL view files {', '.join(missing)} "
            f"(looked in {sql_dir()}); reinstall wpipe"
        )
    return [found[name] for name in sorted(found)]


def fingerprint() -> str:
    """SHA-256 of every view file's name and text: what a database records of its views."""
    digest = hashlib.sha256()
    for path in sql_files():
        digest.update(f"{path.name}\n{path.read_text(encoding='utf-8')}\n".encode())
    return digest.hexdigest()


_NAMED = re.compile(r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(VIEW|MACRO)\s+(\w+)", re.I | re.M)


def missing_objects(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The views and macros of the view files that the database does not hold (lower case)."""
    wanted = {m.group(2).lower() for path in sql_files()
              for m in _NAMED.finditer(path.read_text(encoding="utf-8"))}  # fmt: skip
    query = (
        "SELECT lower(view_name) FROM duckdb_views() WHERE NOT temporary AND NOT internal "
        "UNION ALL SELECT lower(function_name) FROM duckdb_functions() "
        "WHERE function_type IN ('macro', 'table_macro') AND NOT internal"
    )
    return wanted - {name for (name,) in con.execute(query).fetchall()}


def apply(con: duckdb.DuckDBPyConnection, temporary: bool = False) -> None:
    """(Re)create every view; each file is plain SQL a user can read and run by hand.

    `temporary` is for a read-only connection: views and macros are made TEMP (they shadow
    the stored ones, so a reader always gets this package's definitions) and a table the file
    would create is made TEMP only where the database lacks it (a stored `settings` keeps the
    user's thresholds)."""
    stored = stored_names(con) if temporary else set()
    for path in sql_files():
        text = path.read_text(encoding="utf-8")
        if not temporary:
            con.execute(text)
            continue
        made: set[str] = set()
        for statement in con.extract_statements(text):
            query = _temporary(stored, statement.query, made)
            if query:
                con.execute(query)


_CREATE = re.compile(r"^\s*CREATE\s+(OR\s+REPLACE\s+)?(VIEW|MACRO)\b", re.IGNORECASE)
_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.IGNORECASE)


def _temporary(stored: set[str], query: str, made: set[str]) -> str | None:
    """The statement as a read-only connection can run it, or None to skip it (`stored`:
    `stored_names`; the TEMP objects made here are not among them)."""
    body = _strip_comments(query)
    if _CREATE.match(body):
        return _CREATE.sub(lambda m: f"CREATE OR REPLACE TEMP {m.group(2)}", body, count=1)
    if table := _TABLE.match(body):
        if table.group(1).lower() in stored:
            return None
        made.add(table.group(1).lower())
        return _TABLE.sub(f"CREATE TEMP TABLE IF NOT EXISTS {table.group(1)}", body, count=1)
    if (insert := _INSERT.match(body)) and insert.group(1).lower() not in made:
        return None
    return body


def _strip_comments(query: str) -> str:
    lines = [line for line in query.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines)


def stored_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """The database file (not the temp catalog) has a table `name`, or a view of that name
    standing for one (a table served from the lake)."""
    return name.lower() in stored_names(con)


def stored_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The names (lower case) of the tables and views the database file holds: one query
    for a reader's every check (each took ~7 ms)."""
    query = (
        "SELECT lower(table_name) FROM duckdb_tables() WHERE NOT temporary "
        "UNION ALL SELECT lower(view_name) FROM duckdb_views() WHERE NOT temporary"
    )
    return {name for (name,) in con.execute(query).fetchall()}
