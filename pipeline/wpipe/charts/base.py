"""Shared by every chart: model selection, the row budget, queries, titles and colours."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import altair as alt
import duckdb

from wpipe import api

ROW_BUDGET = 5000  # most data rows one chart may carry
MAX_SERIES = 12  # models overlaid or set side by side in one panel (more is unreadable)
MAX_FACETS = 6  # models drawn as separate panels (filter norms)
MAX_PANELS = 32  # tensors drawn as separate panels (distribution boxes)
DEFAULT_BINS = 40
MAX_BINS = 1000


class NoData(LookupError):
    """The filters select nothing this chart can draw."""


@dataclass(frozen=True)
class Selection:
    """The models a chart draws: ids in drawing order, and how many qualified."""

    ids: list[str]
    total: int

    @property
    def note(self) -> str:
        if len(self.ids) == self.total:
            return ""
        return (
            f"{len(self.ids)} of {self.total} models, evenly spaced in name order "
            "(or the order given; pass models= / --model to choose)"
        )


def model_ids(con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None) -> list[str]:
    """model_ids in drawing order: as given (names, paths, id prefixes), else by name."""
    if models:
        refs = list(models)
        # Exact names and full ids in one query (a report passes whole groups of ids);
        # anything else goes through the CLI's resolution, one by one.
        exact: dict[str, str] = {}
        for model_id, name in con.execute(  # semi-joins: a list of 10,000 refs stays fast
            "SELECT model_id, name FROM models WHERE name IN (SELECT unnest($refs)) "
            "UNION ALL SELECT model_id, name FROM models "
            "WHERE model_id IN (SELECT unnest($refs))",
            {"refs": refs},
        ).fetchall():
            exact.setdefault(model_id, model_id)
            exact[name] = model_id
        return list(dict.fromkeys(exact.get(ref) or api.resolve_model(con, ref) for ref in refs))
    return [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY name").fetchall()]


def keep(ids: list[str], qualifying: set[str], limit: int) -> Selection:
    """The qualifying ids, thinned to `limit` evenly spaced ones."""
    kept = [i for i in ids if i in qualifying]
    return Selection(thin(kept, limit), len(kept))


def thin(items: list, limit: int) -> list:
    if len(items) <= limit:
        return list(items)
    if limit <= 1:
        return items[:1]
    step = (len(items) - 1) / (limit - 1)
    return [items[round(k * step)] for k in range(limit)]


def records(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Rows as dicts, refusing more than ROW_BUDGET (the queries are built to stay under it)."""
    cursor = con.execute(sql, bound(sql, params))
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchmany(ROW_BUDGET + 1)
    if len(rows) > ROW_BUDGET:
        raise RuntimeError(f"chart data exceeds the row budget of {ROW_BUDGET} rows")
    return [{c: json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows]


def bound(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters `sql` uses (DuckDB refuses named parameters a query does not use)."""
    return {k: v for k, v in params.items() if re.search(rf"\${re.escape(k)}\b", sql)}


def run(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
) -> duckdb.DuckDBPyConnection:
    return con.execute(sql, bound(sql, params))


def json_value(value: Any) -> Any:
    # NaN and inf are not JSON; Vega-Lite treats null as missing.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def layer_filter(layers: Sequence[str] | None, column: str = "layer_path") -> str:
    if not layers:
        return "TRUE"
    return "(" + " OR ".join(f"{column} GLOB $layer{k}" for k in range(len(layers))) + ")"


def layer_params(layers: Sequence[str] | None) -> dict[str, str]:
    return {f"layer{k}": pattern for k, pattern in enumerate(layers or ())}


def model_names(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[str]:
    rows = dict(
        con.execute(
            "SELECT model_id, name FROM models WHERE list_contains($ids, model_id)", {"ids": ids}
        ).fetchall()
    )
    return [rows[i] for i in ids]


def model_color(names: list[str], selection: alt.Parameter | None = None) -> alt.Color:
    scheme = "tableau10" if len(names) <= 10 else "tableau20"
    return alt.Color(
        "model:N",
        sort=names,
        scale=alt.Scale(domain=names, scheme=scheme),
        legend=alt.Legend(title="model (click to pick)" if selection is not None else "model"),
    )


def title(text: str, *notes: str) -> alt.TitleParams:
    subtitle = [n for n in notes if n]
    return alt.TitleParams(text=text, subtitle=subtitle or alt.Undefined, anchor="start")


def step(n: int, largest: int = 18, room: int = 900) -> int:
    """Band size so that n bands fit in about `room` pixels."""
    return max(2, min(largest, room // max(n, 1)))


def one_architecture(arch_of: dict[str, str], explicit: bool) -> tuple[set[str], str]:
    """The models to overlay, from {model_id: arch_id} of those holding the tensor, and a note.

    Models the caller named are all kept. Otherwise only the largest architecture group (same
    `arch_id`; on a tie the smallest arch_id, so the choice is stable): the same layer name in
    unrelated architectures is not the same tensor.
    """
    if explicit or len(set(arch_of.values())) <= 1:
        return set(arch_of), ""
    sizes: dict[str, int] = {}
    for arch in arch_of.values():
        sizes[arch] = sizes.get(arch, 0) + 1
    largest = max(sorted(sizes), key=lambda a: sizes[a])
    left = len(arch_of) - sizes[largest]
    return {m for m, a in arch_of.items() if a == largest}, (
        f"{sizes[largest]} models of one architecture (the largest group with this tensor); "
        f"{left} of other architectures left out"
    )


def ids_names(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[tuple[str, str]]:
    """(model_id, name) pairs, in the order of `ids`."""
    return list(zip(ids, model_names(con, ids), strict=True))


# Layers of one arch_id named by the first model's layer in the same place (compare.
# paired_paths): a fine-tune whose layers Keras named otherwise (`conv1d` for `conv1d_1`)
# lands on the row, panel or histogram of the layer it is paired with. Inside
# `paired_layers(con, ids)`, on a relation aliased `w`: join PAIRED_JOIN and label with
# PAIRED_LAYER; AT_PAIRED_LAYER keeps the rows (model_id, layer_path) paired with `$layer`.
PAIRED_JOIN = (
    "LEFT JOIN _paired_layers AS p ON p.model_id = w.model_id AND p.layer_path = w.layer_path"
)
PAIRED_LAYER = "coalesce(p.ref_path, w.layer_path)"
AT_PAIRED_LAYER = (
    "(model_id, layer_path) IN (SELECT (model_id, layer_path) FROM _paired_layers "
    "WHERE ref_path = $layer)"
)


@contextmanager
def paired_layers(con: duckdb.DuckDBPyConnection, ids: list[str]) -> Iterator[None]:
    """`_paired_layers` registered while the block runs (the first of `ids` is the reference)."""
    from wpipe.compare import paired_paths

    con.register("_paired_layers", paired_paths(con, ids))
    try:
        yield
    finally:
        # a result left half-read (fetchone) holds the connection: close it before the
        # view goes, or DuckDB refuses to unregister ("unfinished result")
        con.execute("SELECT 1").fetchall()
        con.unregister("_paired_layers")
