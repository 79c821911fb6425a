"""views stage: the SQL files of the package's `wpipe/sql/` resources (the repository's
top-level `sql/` folder, shipped inside the package), applied in name order."""

from __future__ import annotations

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


def apply(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create every view; each file is plain SQL a user can read and run by hand."""
    for path in sql_files():
        con.execute(path.read_text(encoding="utf-8"))
