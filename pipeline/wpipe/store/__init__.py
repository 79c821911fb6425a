"""store stage: the Delta lake (`lake`), the DuckDB database (`duck`), and moving rows
between them (`sync`: killed runs, lakes of older wpipe versions)."""

from wpipe.store.duck import (
    Database,
    configure,
    default_lake,
    ensure_schema,
    insert_arrow,
)
from wpipe.store.lake import DataFile, DataFileWriter, Lake, LakeLocation, write_data_file

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
    "write_data_file",
]
