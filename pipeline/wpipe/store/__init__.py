"""store stage: the Delta lake (`lake`), the DuckDB database (`duck`), and moving rows
between them (`sync`: killed runs, lakes of older wpipe versions)."""

from typing import TYPE_CHECKING, Any

from wpipe.store.duck import (
    Database,
    configure,
    default_lake,
    ensure_schema,
    insert_arrow,
    stored_views_current,
)

if TYPE_CHECKING:
    from wpipe.store.lake import DataFile, DataFileWriter, Lake, LakeLocation, write_data_file

_LAKE_NAMES = {"DataFile", "DataFileWriter", "Lake", "LakeLocation", "write_data_file"}

__all__ = [
    "DataFile",
    "DataFileWriter",
    "Database",
    "Lake",
    "LakeLocation",
    "configure",
    "default_lake",
    "ensure_schema",
    "insert_arrow",
    "stored_views_current",
    "write_data_file",
]


def __getattr__(name: str) -> Any:
    # the lake (Arrow datasets, deltalake) loads on first use: a reader of the database alone
    # (`wpipe models`, `wpipe query`) never needs it
    if name in _LAKE_NAMES:
        from wpipe.store import lake

        return getattr(lake, name)
    raise AttributeError(f"module 'wpipe.store' has no attribute {name!r}")
