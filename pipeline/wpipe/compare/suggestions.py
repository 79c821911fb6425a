"""The suggested bases stored in `suggested_bases` (the `lineage_suggestions` view names them):
`lineage.suggest_among` for each architecture whose models or named bases changed since its
rows were computed, by `wpipe lineage suggest` and at the end of an ingest that changed models.

An architecture's state is a fingerprint of its models (id, file hash, when read) and of the
bases named among them, kept in `ingest_state`: an unchanged architecture costs one grouped
query, not its SVDs (a few seconds for some hundred models).
"""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from wpipe.compare.lineage import architectures, named_bases, suggest_among
from wpipe.core import schema
from wpipe.store import insert_arrow

STATE_PREFIX = "suggested-bases:"  # ingest_state name of an architecture's fingerprint
# Raised when the method changes, so that stored suggestions are computed again.
METHOD_VERSION = "1"
# An ingest computes an architecture's suggestions only up to this many models: the method
# holds an n x n distance matrix (8 MB at 1,000 models, 800 MB at 10,000), so a larger
# architecture waits for `wpipe lineage suggest`, which asks for it.
AT_INGEST_MAX_MODELS = 1000


def refresh(con: duckdb.DuckDBPyConnection, max_models: int | None = None) -> int:
    """Bring `suggested_bases` up to date: the rows of architectures that changed computed
    again (those with at most `max_models` models, when given), those of models no longer
    stored (or no longer sharing an architecture) dropped. The number of architectures
    computed."""
    groups = architectures(con)
    current = _fingerprints(con)
    stored = dict(con.execute(
        "SELECT name, value FROM ingest_state WHERE starts_with(name, ?)", [STATE_PREFIX]
    ).fetchall())  # fmt: skip
    changed = [arch for arch in groups if stored.get(_key(arch)) != current.get(arch)
               and (max_models is None or len(groups[arch]) <= max_models)]  # fmt: skip
    keys = [_key(arch) for arch in groups]
    if not changed and set(stored) <= set(keys):
        return 0  # an architecture gone, or left with one model, has rows to drop
    named, now = named_bases(con), datetime.now(timezone.utc)
    rows = [{**row, "computed_at": now}
            for arch in changed for row in suggest_among(con, groups[arch], named)]  # fmt: skip
    redo = [m for arch in changed for m in groups[arch]]
    shared = [m for ids in groups.values() for m in ids]
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "DELETE FROM suggested_bases WHERE list_contains(?, child_id) "
            "OR NOT list_contains(?, child_id) OR base_id NOT IN (SELECT model_id FROM models)",
            [redo, shared],
        )
        table = schema.SUGGESTED_BASES
        insert_arrow(con, table, pa.Table.from_pylist(rows, schema=table.arrow_schema))
        con.execute("DELETE FROM ingest_state WHERE starts_with(name, ?) "
                    "AND NOT list_contains(?, name)", [STATE_PREFIX, keys])  # fmt: skip
        for arch in changed:
            con.execute("INSERT OR REPLACE INTO ingest_state VALUES (?, ?)",
                        [_key(arch), current[arch]])  # fmt: skip
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return len(changed)


def _key(arch: str | None) -> str:
    return f"{STATE_PREFIX}{arch}"


def _fingerprints(con: duckdb.DuckDBPyConnection) -> dict[str | None, str]:
    """arch_id -> a hash of what its suggestions are computed from: its models (id, file hash,
    when read: a re-read with other options changes the tile means) and the bases named."""
    return dict(con.execute(
        "SELECT m.arch_id, md5(? || string_agg(concat_ws(':', m.model_id, m.sha256, "
        "m.ingested_at, l.base_id), ',' ORDER BY m.model_id)) "
        "FROM models AS m LEFT JOIN lineage AS l ON l.child_id = m.model_id GROUP BY m.arch_id",
        [METHOD_VERSION],
    ).fetchall())  # fmt: skip
