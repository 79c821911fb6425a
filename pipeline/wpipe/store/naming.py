"""Model names: given once, when a model is first ingested, and never changed by other models.

The rule (docs: model-names): a model's name is its path relative to the folder named on the
`wpipe ingest` command line, without the Keras suffix (`wpipe ingest runs/` names
`runs/lr1e-2/e05.h5` `lr1e-2/e05`; a file named on the command line is its own stem). Where
that name is taken, the newcomer alone is widened with its parent folders, one at a time, until
it is free; where a same-named file with another suffix sits in the same folder (`m.h5` beside
`m.keras`), the file name keeps its suffix. Names are kept in the `model_names` table, so
re-reading a changed file keeps its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePath

import duckdb

from wpipe.core.tags import strip_model_suffix
from wpipe.core.textsafe import stored


def _root_of(path: PurePath, roots: Iterable[PurePath]) -> PurePath | None:
    """The deepest command-line root that is the model itself or one of its folders (its
    parts a prefix of the path's: `path.parents` builds a path per folder, for every model)."""
    parts = path.parts
    holding = [r for r in roots if parts[: len(r.parts)] == r.parts]
    return max(holding, key=lambda r: len(r.parts), default=None)


def _stem(path: PurePath) -> str:
    return strip_model_suffix(path.name) or path.name


def candidates(path: PurePath, root: PurePath | None, keep_suffix: bool) -> list[str]:
    """The names a model may get, preferred first: relative to its root, then widened by one
    parent folder at a time up to its whole path."""
    leaf = path.name if keep_suffix else _stem(path)
    folders = [p for p in path.parent.parts if p != path.anchor]
    start = 0 if root is None or root == path else len(path.parts) - len(root.parts) - 1
    return ["/".join([*folders[len(folders) - k :], leaf]) for k in range(start, len(folders) + 1)]


def assign_names(
    taken: Mapping[str, str], newcomers: Mapping[str, str], roots: Iterable[str | Path] = ()
) -> dict[str, str]:
    """key -> name for each newcomer (key -> absolute path), given the names already taken
    (name -> path). Newcomers that want the same name all widen; a taken name never moves."""
    # a Path is a name on disk, spelled here as the paths are stored (textsafe); a str is
    # stored already (or a URL)
    roots = [PurePath(stored(str(r)) if isinstance(r, Path) else r) for r in roots]
    paths = {k: PurePath(p) for k, p in newcomers.items()}
    siblings: dict[tuple[PurePath, str], int] = {}
    for p in [*paths.values(), *(PurePath(p) for p in taken.values())]:
        siblings[(p.parent, _stem(p))] = siblings.get((p.parent, _stem(p)), 0) + 1
    options = {
        k: candidates(p, _root_of(p, roots), siblings[(p.parent, _stem(p))] > 1)
        for k, p in paths.items()
    }
    level = dict.fromkeys(paths, 0)
    while True:
        names = {k: _pick(options[k], level[k]) for k in paths}
        claimed: dict[str, list[str]] = {}
        for k, name in names.items():
            claimed.setdefault(name, []).append(k)
        clashing = [
            k for name, ks in claimed.items() if name in taken or len(ks) > 1 for k in ks
        ]  # fmt: skip
        if not clashing:
            return names
        for k in clashing:
            level[k] += 1


def _pick(options: list[str], level: int) -> str:
    """options[level], or past the whole path (only a name someone else took by hand or a
    second save at one path can get there) the whole path with a counter."""
    if level < len(options):
        return options[level]
    return f"{options[-1]}~{level - len(options) + 2}"


def adopt(con: duckdb.DuckDBPyConnection) -> None:
    """Keep the names models already have (a database made before names were kept)."""
    con.execute(
        "INSERT INTO model_names (model_id, name, path, named_at) "
        "SELECT model_id, name, path, ingested_at FROM models "
        "WHERE model_id NOT IN (SELECT model_id FROM model_names)"
    )


def refresh(con: duckdb.DuckDBPyConnection, roots: Iterable[str | Path] = ()) -> int:
    """Name every model that has no name yet (newcomers from the ingest of `roots`), forget the
    names of models that are gone, and set models.name from model_names. Returns how many
    models were named."""
    con.execute("DELETE FROM model_names WHERE model_id NOT IN (SELECT model_id FROM models)")
    taken = dict(con.execute("SELECT name, path FROM model_names").fetchall())
    new = dict(
        con.execute(
            "SELECT model_id, path FROM models "
            "WHERE model_id NOT IN (SELECT model_id FROM model_names)"
        ).fetchall()
    )
    names = assign_names(taken, new, roots)
    now = datetime.now(timezone.utc)
    if names:  # one Arrow insert: executemany costs milliseconds a row
        import pyarrow as pa

        rows = pa.table({
            "model_id": list(names), "name": list(names.values()),
            "path": [new[k] for k in names], "named_at": [now] * len(names),
        })  # fmt: skip
        con.register("new_names", rows)
        try:
            con.execute("INSERT INTO model_names (model_id, name, path, named_at) "
                        "SELECT model_id, name, path, named_at FROM new_names")  # fmt: skip
        finally:
            con.unregister("new_names")
    con.execute(
        "UPDATE models SET name = n.name FROM model_names AS n "
        "WHERE models.model_id = n.model_id AND models.name IS DISTINCT FROM n.name"
    )
    return len(names)
