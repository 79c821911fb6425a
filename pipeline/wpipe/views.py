"""views stage: the SQL files in `sql/`, applied in name order to a DuckDB connection."""

from __future__ import annotations

from pathlib import Path

import duckdb

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


def sql_files() -> list[Path]:
    return sorted(SQL_DIR.glob("*.sql"))


def apply(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create every view; each file is plain SQL a user can read and run by hand."""
    for path in sql_files():
        con.execute(path.read_text(encoding="utf-8"))
