"""charts stage: one function per figure, each a DuckDB query drawn as an Altair chart.

Every function takes a connection opened by `wpipe.connect()` plus a few filters and returns an
`alt.Chart` (or a layered/faceted chart). Aggregation happens in DuckDB SQL: a chart never
carries more than `ROW_BUDGET` data rows, whatever the number of models. Where a figure would
need more, it draws an evenly spaced subset of the models (in name order, or the order given)
and says so in its subtitle; pass `models=` to choose.

Model filters accept what the CLI accepts: a model's name, its path, or a unique model_id
prefix. Layer filters are `layer_path` values or glob patterns (`encoder/*`).
"""

from __future__ import annotations

import fnmatch
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import altair as alt
import duckdb

from wpipe import api
from wpipe.compare import SPEARMAN_SQL, correlate

ROW_BUDGET = 5000  # most data rows one chart may carry
MAX_SERIES = 12  # models overlaid or set side by side in one panel (more is unreadable)
MAX_FACETS = 6  # models drawn as separate panels (filter norms)
MAX_PANELS = 32  # tensors drawn as separate panels (distribution boxes)
DEFAULT_BINS = 40
MAX_BINS = 1000

#: Numeric columns of `weights` that `stat_heatmap` can draw.
STATS = (
    "mean", "std", "min", "max", "abs_mean", "l1", "l2", "max_abs", "zero_count",
    "near_zero_frac", "nan_count", "inf_count", "p01", "p05", "p25", "p50", "p75", "p95",
    "p99", "skew", "kurtosis", "size",
)  # fmt: skip
_SIGNED_STATS = {"mean", "min", "max", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "skew"}

# Gate blocks along the last axis, in Keras order (keras_formats.md §6).
LSTM_GATES = ("i", "f", "c", "o")
GRU_GATES = ("z", "r", "h")
GATE_TITLES = {
    "i": "i · input",
    "f": "f · forget",
    "c": "c · cell",
    "o": "o · output",
    "z": "z · update",
    "r": "r · reset",
    "h": "h · candidate",
}
_LSTM_CELLS = ("LSTM", "CuDNNLSTM", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
_GRU_CELLS = ("GRU", "CuDNNGRU")
# Conv layers whose kernel has the filters on its last axis, or, for transposed convolutions,
# on the one before (keras_formats.md §6). Depthwise kernels have no filter axis of their own.
_CONV_CLASSES = r"(Conv[123]D|Convolution[123]D|SeparableConv[12]D|Conv[123]DTranspose)"


class NoData(LookupError):
    """The filters select nothing this chart can draw."""


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Selection:
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
        for model_id, name in con.execute(
            "SELECT model_id, name FROM models "
            "WHERE list_contains($refs, name) OR list_contains($refs, model_id)",
            {"refs": refs},
        ).fetchall():
            exact.setdefault(model_id, model_id)
            exact[name] = model_id
        return list(dict.fromkeys(exact.get(ref) or api.resolve_model(con, ref) for ref in refs))
    return [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY name").fetchall()]


def _keep(ids: list[str], qualifying: set[str], limit: int) -> _Selection:
    """The qualifying ids, thinned to `limit` evenly spaced ones."""
    kept = [i for i in ids if i in qualifying]
    return _Selection(_thin(kept, limit), len(kept))


def _thin(items: list, limit: int) -> list:
    if len(items) <= limit:
        return list(items)
    if limit <= 1:
        return items[:1]
    step = (len(items) - 1) / (limit - 1)
    return [items[round(k * step)] for k in range(limit)]


def _records(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Rows as dicts, refusing more than ROW_BUDGET (the queries are built to stay under it)."""
    cursor = con.execute(sql, _bound(sql, params))
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchmany(ROW_BUDGET + 1)
    if len(rows) > ROW_BUDGET:
        raise RuntimeError(f"chart data exceeds the row budget of {ROW_BUDGET} rows")
    return [{c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows]


def _bound(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters `sql` uses (DuckDB refuses named parameters a query does not use)."""
    return {k: v for k, v in params.items() if re.search(rf"\${re.escape(k)}\b", sql)}


def _run(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]
) -> duckdb.DuckDBPyConnection:
    return con.execute(sql, _bound(sql, params))


def _json_value(value: Any) -> Any:
    # NaN and inf are not JSON; Vega-Lite treats null as missing.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _layer_filter(layers: Sequence[str] | None, column: str = "layer_path") -> str:
    if not layers:
        return "TRUE"
    return "(" + " OR ".join(f"{column} GLOB $layer{k}" for k in range(len(layers))) + ")"


def _layer_params(layers: Sequence[str] | None) -> dict[str, str]:
    return {f"layer{k}": pattern for k, pattern in enumerate(layers or ())}


def _names(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[str]:
    rows = dict(
        con.execute(
            "SELECT model_id, name FROM models WHERE list_contains($ids, model_id)", {"ids": ids}
        ).fetchall()
    )
    return [rows[i] for i in ids]


def _model_color(names: list[str], selection: alt.Parameter | None = None) -> alt.Color:
    scheme = "tableau10" if len(names) <= 10 else "tableau20"
    return alt.Color(
        "model:N",
        sort=names,
        scale=alt.Scale(domain=names, scheme=scheme),
        legend=alt.Legend(title="model (click to pick)" if selection is not None else "model"),
    )


def _title(text: str, *notes: str) -> alt.TitleParams:
    subtitle = [n for n in notes if n]
    return alt.TitleParams(text=text, subtitle=subtitle or alt.Undefined, anchor="start")


def _step(n: int, largest: int = 18, room: int = 900) -> int:
    """Band size so that n bands fit in about `room` pixels."""
    return max(2, min(largest, room // max(n, 1)))


# ----------------------------------------------------------------------------- histograms


def weight_histograms(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
    weight: str = "kernel",
    bins: int = DEFAULT_BINS,
    source: str = "auto",
) -> alt.Chart:
    """Histograms of one tensor (layer, weight) overlaid across models on common bins.

    `layer` defaults to the layer holding `weight` in the most models. `source` is `values`
    (bin `weight_values` exactly; a sample if ingested with --values sample:N), `histograms`
    (merge the stored per-tensor histograms onto the common bins, spreading each stored bin's
    count uniformly over its width) or `auto` (values when every value is stored).
    """
    if source not in ("auto", "values", "histograms"):
        raise ValueError("source must be auto, values or histograms")
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be between 1 and {MAX_BINS}")
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids, "weight": weight}
    if layer is None:
        found = con.execute(
            "SELECT layer_path FROM weights WHERE list_contains($ids, model_id) "
            "AND weight_name = $weight AND size > 0 GROUP BY layer_path "
            "ORDER BY count(*) DESC, avg(size) DESC, min(weight_index), layer_path LIMIT 1",
            params,
        ).fetchone()
        if found is None:
            raise NoData(f"no tensor named {weight!r} in the selected models")
        layer = found[0]
    params["layer"] = layer
    having = con.execute(
        "SELECT model_id FROM weights WHERE list_contains($ids, model_id) "
        "AND layer_path = $layer AND weight_name = $weight AND size > 0",
        params,
    ).fetchall()
    selection = _keep(ids, {r[0] for r in having}, min(MAX_SERIES, ROW_BUDGET // bins))
    if not selection.ids:
        raise NoData(f"no model has a tensor {layer!r} / {weight!r}")
    params["ids"] = selection.ids
    params["bins"] = bins
    stored, expected = con.execute(
        "SELECT (SELECT count(*) FROM weight_values WHERE list_contains($ids, model_id) "
        "AND layer_path = $layer AND weight_name = $weight), "
        "(SELECT sum(size) FROM weights WHERE list_contains($ids, model_id) "
        "AND layer_path = $layer AND weight_name = $weight)",
        {k: params[k] for k in ("ids", "layer", "weight")},
    ).fetchone()
    if source == "auto":
        source = "values" if stored and stored == expected else "histograms"
    if source == "values" and not stored:
        raise NoData(f"no weight_values stored for {layer!r} / {weight!r}")
    rows = _records(con, _HIST_FROM_VALUES if source == "values" else _HIST_MERGED, params)
    if not rows:
        raise NoData(f"no finite values in {layer!r} / {weight!r}")
    names = _names(con, selection.ids)
    if source == "histograms":
        how = f"{bins} common bins, merged from the stored per-tensor histograms"
    elif stored == expected:
        how = f"{bins} common bins, exact from weight_values"
    else:
        how = f"{bins} common bins, from a sample of {stored:,} of {expected:,} values"
    pick = alt.selection_point(fields=["model"], bind="legend")
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_line(interpolate="step", strokeWidth=1.6)
        .encode(
            x=alt.X("x:Q", title=f"{weight} value"),
            y=alt.Y("fraction:Q", title="fraction of values", axis=alt.Axis(format="%")),
            color=_model_color(names, pick),
            opacity=alt.condition(pick, alt.value(0.95), alt.value(0.12)),
            tooltip=[
                alt.Tooltip("model:N"),
                alt.Tooltip("lo:Q", format=".4g", title="from"),
                alt.Tooltip("hi:Q", format=".4g", title="to"),
                alt.Tooltip("count:Q", format=",.4~f"),
                alt.Tooltip("fraction:Q", format=".2%"),
            ],
        )
        .add_params(pick, zoom)
        .properties(
            width=560,
            height=280,
            title=_title(f"{layer} · {weight}: weights across models", how, selection.note),
        )
    )


# Bins: numpy.histogram's equal-width bins over [min, max] of all selected values, the last
# bin closed; (x - lo) * (bins / (hi - lo)) is numpy's own arithmetic for the bin number.
_HIST_FROM_VALUES = """
WITH v AS (
    SELECT model_id, value::DOUBLE AS x FROM weight_values
    WHERE list_contains($ids, model_id) AND layer_path = $layer AND weight_name = $weight
      AND isfinite(value)
),
r0 AS (SELECT min(x) AS lo, max(x) AS hi FROM v),
r AS (
    SELECT CASE WHEN hi > lo THEN lo ELSE lo - 0.5 END AS lo,
           CASE WHEN hi > lo THEN hi ELSE hi + 0.5 END AS hi
    FROM r0 WHERE lo IS NOT NULL
),
c AS (
    SELECT model_id,
           least(floor((x - r.lo) * ($bins / (r.hi - r.lo))), $bins - 1)::INTEGER AS bin,
           count(*) AS count
    FROM v, r GROUP BY ALL
),
t AS (SELECT model_id, count(*) AS total FROM v GROUP BY model_id),
grid AS (SELECT t.model_id, t.total, b.range::INTEGER AS bin FROM t, range($bins) AS b)
SELECT m.name AS model, g.bin,
       r.lo + g.bin * (r.hi - r.lo) / $bins AS lo,
       r.lo + (g.bin + 1) * (r.hi - r.lo) / $bins AS hi,
       r.lo + (g.bin + 0.5) * (r.hi - r.lo) / $bins AS x,
       coalesce(c.count, 0)::DOUBLE AS count,
       coalesce(c.count, 0) / g.total AS fraction
FROM grid AS g CROSS JOIN r
JOIN models AS m USING (model_id)
LEFT JOIN c USING (model_id, bin)
ORDER BY m.name, g.bin
"""

# Merge: each stored bin [lo, hi) gives its count to the common bins in proportion to overlap
# (values are taken as uniform within a stored bin). The common range is the union of the
# stored ranges, i.e. [min, max] of the tensors.
_HIST_MERGED = """
WITH h AS (
    SELECT model_id, lo, hi, count FROM histograms
    WHERE list_contains($ids, model_id) AND layer_path = $layer AND weight_name = $weight
      AND count > 0
),
r AS (SELECT min(lo) AS lo, max(hi) AS hi FROM h HAVING count(*) > 0),
t AS (SELECT model_id, sum(count) AS total FROM h GROUP BY model_id),
b AS (
    SELECT range::INTEGER AS bin,
           r.lo + range * (r.hi - r.lo) / $bins AS blo,
           r.lo + (range + 1) * (r.hi - r.lo) / $bins AS bhi
    FROM range($bins), r
),
c AS (
    SELECT h.model_id, b.bin,
           sum(h.count * (least(h.hi, b.bhi) - greatest(h.lo, b.blo)) / (h.hi - h.lo)) AS count
    FROM h JOIN b ON h.lo < b.bhi AND h.hi > b.blo
    GROUP BY ALL
)
SELECT m.name AS model, b.bin, b.blo AS lo, b.bhi AS hi, (b.blo + b.bhi) / 2 AS x,
       coalesce(c.count, 0)::DOUBLE AS count,
       coalesce(c.count, 0) / t.total AS fraction
FROM t CROSS JOIN b
JOIN models AS m USING (model_id)
LEFT JOIN c USING (model_id, bin)
ORDER BY m.name, b.bin
"""


# ----------------------------------------------------------------------------- heatmap


def _tensor_label(single_role: bool) -> str:
    # With one role the weight name adds nothing for plain layers ("conv1"), but tells the
    # halves of a Bidirectional or the projections of an attention layer apart.
    if single_role:
        return (
            "CASE WHEN w.weight_name = w.role THEN w.layer_path "
            "ELSE w.layer_path || ' · ' || w.weight_name END"
        )
    return "w.layer_path || ' · ' || w.weight_name"


def stat_heatmap(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    stat: str = "std",
    roles: Sequence[str] | None = ("kernel",),
    layers: Sequence[str] | None = None,
) -> alt.Chart:
    """Layer × model heatmap of one `weights` statistic (std, l2, near_zero_frac, max_abs, …)."""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {', '.join(STATS)}; not {stat!r}")
    roles = list(roles or ())
    ids = model_ids(con, models)
    label = _tensor_label(len(roles) == 1)
    where = (
        f"list_contains($ids, w.model_id) AND {_layer_filter(layers, 'w.layer_path')} "
        "AND (len($roles) = 0 OR list_contains($roles, w.role))"
    )
    params = {"ids": ids, "roles": roles, **_layer_params(layers)}
    tensors = con.execute(
        f"SELECT {label} AS tensor FROM weights AS w WHERE {where} "
        f"GROUP BY tensor ORDER BY avg(w.weight_index), tensor LIMIT {ROW_BUDGET}",
        params,
    ).fetchall()
    order = [t[0] for t in tensors]
    if not order:
        raise NoData("no weight tensor matches the filters")
    having = con.execute(f"SELECT DISTINCT w.model_id FROM weights AS w WHERE {where}", params)
    selection = _keep(ids, {r[0] for r in having.fetchall()}, ROW_BUDGET // len(order))
    params["ids"] = selection.ids
    params["tensors"] = order
    rows = _records(
        con,
        f"""
        SELECT m.name AS model, {label} AS tensor, w.layer_path AS layer, w.weight_name AS weight,
               l.class_name, w.shape::VARCHAR AS shape, w."{stat}"::DOUBLE AS value
        FROM weights AS w JOIN models AS m USING (model_id)
        LEFT JOIN layers AS l USING (model_id, layer_path)
        WHERE {where} AND list_contains($tensors, {label})
        ORDER BY m.name, w.weight_index
        """,
        params,
    )
    names = _names(con, selection.ids)
    scale = (
        alt.Scale(scheme="redblue", domainMid=0, reverse=True)
        if stat in _SIGNED_STATS
        else alt.Scale(scheme="viridis")
    )
    truncated = "" if len(order) < ROW_BUDGET else f"first {ROW_BUDGET} tensors"
    what = ", ".join(roles) if roles else "all"
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_rect()
        .encode(
            x=alt.X(
                "model:N",
                sort=names,
                title="model",
                axis=alt.Axis(labels=len(names) <= 150, labelAngle=-45, labelLimit=160),
            ),
            y=alt.Y("tensor:N", sort=order, title="layer"),
            color=alt.Color("value:Q", title=stat, scale=scale),
            tooltip=[
                alt.Tooltip("model:N"),
                alt.Tooltip("layer:N"),
                alt.Tooltip("weight:N"),
                alt.Tooltip("class_name:N", title="class"),
                alt.Tooltip("shape:N"),
                alt.Tooltip("value:Q", title=stat, format=".5g"),
            ],
        )
        .properties(
            width=alt.Step(_step(len(names))),
            height=alt.Step(_step(len(order), room=700)),
            title=_title(
                f"{stat} per layer and model", f"roles: {what}", selection.note, truncated
            ),
        )
    )


# ----------------------------------------------------------------------------- boxes


def distribution_boxes(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    roles: Sequence[str] | None = ("kernel",),
    layers: Sequence[str] | None = None,
) -> alt.FacetChart:
    """Per-layer weight distributions across models: boxes p25–p75, whiskers p05–p95 and p01–p99.

    One panel per tensor (own y scale), one box per model; the line across a box is the median.
    """
    roles = list(roles or ())
    ids = model_ids(con, models)
    label = _tensor_label(len(roles) == 1)
    where = (
        f"list_contains($ids, w.model_id) AND {_layer_filter(layers, 'w.layer_path')} "
        "AND (len($roles) = 0 OR list_contains($roles, w.role)) AND w.p50 IS NOT NULL"
    )
    params = {"ids": ids, "roles": roles, **_layer_params(layers)}
    tensors = con.execute(
        f"SELECT {label} AS tensor FROM weights AS w WHERE {where} "
        "GROUP BY tensor ORDER BY avg(w.weight_index), tensor",
        params,
    ).fetchall()
    order = [t[0] for t in tensors][:MAX_PANELS]
    if not order:
        raise NoData("no weight tensor matches the filters")
    having = con.execute(f"SELECT DISTINCT w.model_id FROM weights AS w WHERE {where}", params)
    limit = min(MAX_SERIES, ROW_BUDGET // len(order))
    selection = _keep(ids, {r[0] for r in having.fetchall()}, limit)
    params["ids"] = selection.ids
    params["tensors"] = order
    rows = _records(
        con,
        f"""
        SELECT m.name AS model, {label} AS tensor, w.shape::VARCHAR AS shape,
               w.p01, w.p05, w.p25, w.p50, w.p75, w.p95, w.p99
        FROM weights AS w JOIN models AS m USING (model_id)
        WHERE {where} AND list_contains($tensors, {label})
        ORDER BY m.name, w.weight_index
        """,
        params,
    )
    names = _names(con, selection.ids)
    pick = alt.selection_point(fields=["model"], bind="legend")
    tooltip = [alt.Tooltip("model:N"), alt.Tooltip("tensor:N", title="layer")] + [
        alt.Tooltip(f"{p}:Q", format=".4g") for p in ("p01", "p05", "p25", "p50", "p75", "p95")
    ]
    tooltip.append(alt.Tooltip("p99:Q", format=".4g"))
    color = _model_color(names, pick)
    base = alt.Chart().encode(
        x=alt.X("model:N", sort=names, axis=None),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
        tooltip=tooltip,
    )
    width = max(60, min(240, 18 * len(names)))
    box = max(4, min(14, width // max(len(names), 1) - 2))
    layered = alt.layer(
        base.mark_rule(strokeWidth=1).encode(
            y=alt.Y("p01:Q", title="weight value", scale=alt.Scale(zero=False)),
            y2="p99:Q",
            color=color,
        ),
        base.mark_rule(strokeWidth=3).encode(y="p05:Q", y2="p95:Q", color=color),
        base.mark_bar(size=box).encode(y="p25:Q", y2="p75:Q", color=color),
        base.mark_tick(color="black", thickness=2, size=box).encode(y="p50:Q"),
        data=alt.Data(values=rows),
    ).properties(width=width, height=160)
    shown = "" if len(order) == len(tensors) else f"first {len(order)} of {len(tensors)} tensors"
    return (
        layered.facet(facet=alt.Facet("tensor:N", sort=order, title=None), columns=4)
        .add_params(pick)
        .resolve_scale(x="independent", y="independent")
        .properties(
            title=_title(
                "Weight distributions per layer across models",
                "box p25–p75, thick whisker p05–p95, thin whisker p01–p99, line at the median",
                selection.note,
                shown,
            )
        )
    )


# ----------------------------------------------------------------------------- params


def param_counts(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
) -> alt.Chart:
    """Parameter count per model, stacked by layer class."""
    ids = model_ids(con, models)
    classes = con.execute(
        "SELECT DISTINCT coalesce(class_name, '(no architecture)') FROM layers "
        "WHERE list_contains($ids, model_id) AND n_params > 0",
        {"ids": ids},
    ).fetchall()
    if not classes:
        raise NoData("no layer with weights in the selected models")
    having = con.execute(
        "SELECT DISTINCT model_id FROM layers WHERE list_contains($ids, model_id) AND n_params > 0",
        {"ids": ids},
    ).fetchall()
    selection = _keep(ids, {r[0] for r in having}, ROW_BUDGET // len(classes))
    rows = _records(
        con,
        """
        SELECT m.name AS model, coalesce(l.class_name, '(no architecture)') AS class_name,
               sum(l.n_params)::BIGINT AS n_params, sum(l.n_trainable)::BIGINT AS n_trainable,
               count(*)::BIGINT AS n_layers, any_value(m.n_params) AS model_params
        FROM layers AS l JOIN models AS m USING (model_id)
        WHERE list_contains($ids, l.model_id) AND l.n_params > 0
        GROUP BY ALL ORDER BY m.name, class_name
        """,
        {"ids": selection.ids},
    )
    names = _names(con, selection.ids)
    pick = alt.selection_point(fields=["class_name"], bind="legend")
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            y=alt.Y(
                "model:N",
                sort=names,
                title=None,
                axis=alt.Axis(labels=len(names) <= 150, labelLimit=220),
            ),
            x=alt.X("sum(n_params):Q", title="parameters", stack="zero"),
            color=alt.Color(
                "class_name:N",
                title="layer class (click to pick)",
                scale=alt.Scale(scheme="tableau20"),
            ),
            opacity=alt.condition(pick, alt.value(1.0), alt.value(0.2)),
            tooltip=[
                alt.Tooltip("model:N"),
                alt.Tooltip("class_name:N", title="class"),
                alt.Tooltip("n_params:Q", format=",", title="parameters"),
                alt.Tooltip("n_trainable:Q", format=",", title="trainable"),
                alt.Tooltip("n_layers:Q", title="layers"),
                alt.Tooltip("model_params:Q", format=",", title="model total"),
            ],
        )
        .add_params(pick)
        .properties(
            width=520,
            height=alt.Step(_step(len(names), largest=16, room=1400)),
            title=_title("Parameters per model by layer class", selection.note),
        )
    )


# ----------------------------------------------------------------------------- gates


def gate_histograms(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
    bins: int = DEFAULT_BINS,
) -> alt.FacetChart:
    """LSTM/GRU weights split by gate (i,f,c,o / z,r,h) and kernel type, overlaid across models.

    A value at flat_index of a (rows, G·u) kernel belongs to gate (flat_index % G·u) // u,
    computed in SQL from `weight_values`. `layer` defaults to the recurrent layer found in most
    models; a Bidirectional layer's halves are separate rows (forward/kernel, …).
    """
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be between 1 and {MAX_BINS}")
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids}
    if layer is None:
        found = con.execute(
            f"SELECT layer_path FROM ({_RECURRENT}) GROUP BY layer_path "
            "ORDER BY count(DISTINCT model_id) DESC, min(layer_index), layer_path LIMIT 1",
            params,
        ).fetchone()
        if found is None:
            raise NoData("no LSTM or GRU kernel in the selected models")
        layer = found[0]
    params["layer"] = layer
    tensors = con.execute(
        f"SELECT model_id, weight_name, n_gates FROM ({_RECURRENT}) WHERE layer_path = $layer",
        params,
    ).fetchall()
    have_values = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT model_id FROM weight_values WHERE list_contains($ids, model_id) "
            "AND layer_path = $layer",
            params,
        ).fetchall()
    }
    qualifying = {t[0] for t in tensors} & have_values
    if not qualifying:
        raise NoData(f"no LSTM or GRU layer {layer!r} with weight_values in the selected models")
    selection = _keep(ids, qualifying, MAX_SERIES)
    kept = [t for t in tensors if t[0] in selection.ids]
    panels = len({t[1] for t in kept}) * len({t[2] for t in kept}) * max(t[2] for t in kept)
    bins = max(1, min(bins, ROW_BUDGET // (len(selection.ids) * panels)))
    params.update(ids=selection.ids, bins=bins)
    rows = _records(con, _GATES, params)
    if not rows:
        raise NoData(f"no finite values in the kernels of {layer!r}")
    stored, expected = con.execute(
        f"SELECT (SELECT count(*) FROM weight_values AS v JOIN ({_RECURRENT}) AS t "
        "USING (model_id, layer_path, weight_name) WHERE t.layer_path = $layer), "
        f"(SELECT sum(size) FROM ({_RECURRENT}) WHERE layer_path = $layer)",
        {"ids": selection.ids, "layer": layer},
    ).fetchone()
    names = _names(con, selection.ids)
    gate_order = [GATE_TITLES[g] for g in (*LSTM_GATES, *GRU_GATES)]
    sampled = "" if stored == expected else f"from a sample of {stored:,} of {expected:,} values"
    pick = alt.selection_point(fields=["model"], bind="legend")
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_line(interpolate="step", strokeWidth=1.4)
        .encode(
            x=alt.X("x:Q", title="weight value"),
            y=alt.Y("fraction:Q", title="fraction of the gate's values", axis=alt.Axis(format="%")),
            color=_model_color(names, pick),
            opacity=alt.condition(pick, alt.value(0.95), alt.value(0.12)),
            tooltip=[
                alt.Tooltip("model:N"),
                alt.Tooltip("weight:N", title="kernel"),
                alt.Tooltip("gate:N"),
                alt.Tooltip("lo:Q", format=".4g", title="from"),
                alt.Tooltip("hi:Q", format=".4g", title="to"),
                alt.Tooltip("count:Q"),
                alt.Tooltip("fraction:Q", format=".2%"),
            ],
        )
        .add_params(pick)
        .properties(width=150, height=110)
        .facet(
            row=alt.Row("weight:N", title="kernel"),
            column=alt.Column("gate:N", sort=gate_order, title="gate"),
        )
        .resolve_scale(y="independent")
        .properties(
            title=_title(
                f"{layer}: weights by gate",
                f"{bins} bins per kernel type over its range; LSTM gates i,f,c,o; GRU z,r,h",
                sampled,
                selection.note,
            )
        )
    )


# Recurrent kernels of the selected models: the cell class (a Bidirectional or TimeDistributed
# layer's own class is the wrapper's; the cell is in its config), gate count and units.
_RECURRENT = f"""
SELECT w.model_id, w.layer_path, w.weight_name, w.size, l.layer_index, g.n_gates,
       w.shape[-1] // g.n_gates AS units
FROM weights AS w JOIN layers AS l USING (model_id, layer_path),
LATERAL (
    SELECT CASE
        WHEN l.class_name IN ('Bidirectional', 'TimeDistributed')
        THEN json_extract_string(l.config, '$.layer.class_name')
        ELSE l.class_name END AS cell
) AS c,
LATERAL (
    SELECT CASE WHEN c.cell IN {_LSTM_CELLS} THEN 4 WHEN c.cell IN {_GRU_CELLS} THEN 3 END
        AS n_gates
) AS g
WHERE list_contains($ids, w.model_id) AND w.role IN ('kernel', 'recurrent_kernel')
  AND len(w.shape) >= 2 AND g.n_gates IS NOT NULL AND w.shape[-1] % g.n_gates = 0
"""

_GATES = f"""
WITH t AS (SELECT * FROM ({_RECURRENT}) WHERE layer_path = $layer),
v AS (
    SELECT t.model_id, t.weight_name, t.n_gates,
           ((v.flat_index % (t.n_gates * t.units)) // t.units)::INTEGER AS gate,
           v.value::DOUBLE AS x
    FROM weight_values AS v JOIN t USING (model_id, layer_path, weight_name)
    WHERE isfinite(v.value)
),
r0 AS (SELECT weight_name, min(x) AS lo, max(x) AS hi FROM v GROUP BY weight_name),
r AS (
    SELECT weight_name,
           CASE WHEN hi > lo THEN lo ELSE lo - 0.5 END AS lo,
           CASE WHEN hi > lo THEN hi ELSE hi + 0.5 END AS hi
    FROM r0
),
c AS (
    SELECT v.model_id, v.weight_name, v.gate,
           least(floor((v.x - r.lo) * ($bins / (r.hi - r.lo))), $bins - 1)::INTEGER AS bin,
           count(*) AS count
    FROM v JOIN r USING (weight_name) GROUP BY ALL
),
n AS (SELECT model_id, weight_name, gate, count(*) AS total FROM v GROUP BY ALL),
grid AS (
    SELECT t.model_id, t.weight_name, t.n_gates, k.range::INTEGER AS gate, b.range::INTEGER AS bin
    FROM t, range(4) AS k, range($bins) AS b WHERE k.range < t.n_gates
)
SELECT m.name AS model, g.weight_name AS weight,
       CASE WHEN g.n_gates = 4 THEN {list(GATE_TITLES[x] for x in LSTM_GATES)}[g.gate + 1]
            ELSE {list(GATE_TITLES[x] for x in GRU_GATES)}[g.gate + 1] END AS gate,
       g.bin,
       r.lo + g.bin * (r.hi - r.lo) / $bins AS lo,
       r.lo + (g.bin + 1) * (r.hi - r.lo) / $bins AS hi,
       r.lo + (g.bin + 0.5) * (r.hi - r.lo) / $bins AS x,
       coalesce(c.count, 0)::BIGINT AS count,
       coalesce(c.count, 0) / n.total AS fraction
FROM grid AS g JOIN r USING (weight_name)
JOIN n USING (model_id, weight_name, gate)
JOIN models AS m USING (model_id)
LEFT JOIN c USING (model_id, weight_name, gate, bin)
ORDER BY m.name, weight, g.gate, g.bin
"""


# ----------------------------------------------------------------------------- filter norms


def filter_norms(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
) -> alt.FacetChart:
    """L2 norm of every conv filter (filters × layers), one panel per model.

    For a kernel of shape (…, filters) the filter of flat_index is flat_index % filters (a
    transposed convolution's filters are on the axis before last). The norm is
    sqrt(Σw² · n / m) over the m stored values of a filter of n elements: exact when every
    value is stored, an estimate from a --values sample otherwise. When there are more filters
    than the row budget allows, neighbouring filters share a cell (mean norm; min/max in the
    tooltip).
    """
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids, **_layer_params(layers)}
    conv = f"SELECT * FROM ({_CONV}) WHERE {_layer_filter(layers)}"
    having = con.execute(
        f"SELECT DISTINCT model_id FROM ({conv}) WHERE model_id IN "
        "(SELECT DISTINCT model_id FROM weight_values WHERE list_contains($ids, model_id))",
        params,
    ).fetchall()
    selection = _keep(ids, {r[0] for r in having}, MAX_FACETS)
    if not selection.ids:
        raise NoData("no convolution kernel with weight_values in the selected models")
    params["ids"] = selection.ids
    n_filters, n_tensors = con.execute(
        f"SELECT sum(filters), count(*) FROM ({conv})", params
    ).fetchone()
    # Cells of `group` neighbouring filters; each tensor adds at most one partial cell.
    group = max(1, math.ceil(n_filters / max(1, ROW_BUDGET - n_tensors)))
    params["group"] = group
    rows = _records(
        con,
        f"""
        WITH t AS ({conv}),
        f AS (
            SELECT t.model_id, t.layer_path, t.weight_name, t.layer_index,
                   ((v.flat_index // t.stride) % t.filters)::INTEGER AS filter,
                   t.size // t.filters AS filter_size,
                   sqrt(sum(v.value::DOUBLE * v.value::DOUBLE) * filter_size / count(*)) AS norm,
                   count(*) AS n_values
            FROM weight_values AS v JOIN t USING (model_id, layer_path, weight_name)
            WHERE isfinite(v.value)
            GROUP BY t.model_id, t.layer_path, t.weight_name, t.layer_index, filter, filter_size
        )
        SELECT m.name AS model,
               CASE WHEN f.weight_name = 'kernel' THEN f.layer_path
                    ELSE f.layer_path || ' · ' || f.weight_name END AS layer,
               min(f.layer_index) AS layer_index,
               min(f.filter) AS first, max(f.filter) AS last, max(f.filter) + 1 AS "end",
               avg(f.norm) AS norm, min(f.norm) AS min_norm, max(f.norm) AS max_norm,
               sum(f.n_values) AS n_values, sum(f.filter_size) AS n_elements
        FROM f JOIN models AS m USING (model_id)
        GROUP BY m.name, f.layer_path, f.weight_name, f.filter // $group
        ORDER BY m.name, layer_index, first
        """,
        params,
    )
    names = _names(con, selection.ids)
    order = sorted({(r["layer_index"], r["layer"]) for r in rows})
    layer_order = list(dict.fromkeys(name for _, name in order))
    grouped = f"{group} neighbouring filters per cell (mean norm)" if group > 1 else ""
    sampled = any(r["n_values"] < r["n_elements"] for r in rows)
    tooltip = [
        alt.Tooltip("model:N"),
        alt.Tooltip("layer:N"),
        alt.Tooltip("first:Q", title="filter" if group == 1 else "first filter"),
    ]
    if group > 1:
        tooltip += [
            alt.Tooltip("last:Q", title="last filter"),
            alt.Tooltip("min_norm:Q", format=".4g", title="min norm"),
            alt.Tooltip("max_norm:Q", format=".4g", title="max norm"),
        ]
    tooltip.append(alt.Tooltip("norm:Q", format=".4g", title="L2 norm"))
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_rect()
        .encode(
            x=alt.X("first:Q", title="filter", scale=alt.Scale(nice=False)),
            x2="end:Q",
            y=alt.Y("layer:N", sort=layer_order, title="layer"),
            # symlog: exploding filters must not flatten the rest, and a dead (zero) one
            # must still show
            color=alt.Color(
                "norm:Q", title="L2 norm", scale=alt.Scale(scheme="viridis", type="symlog")
            ),
            tooltip=tooltip,
        )
        .properties(width=520, height=alt.Step(_step(len(layer_order), largest=22, room=300)))
        .facet(
            row=alt.Row(
                "model:N",
                sort=names,
                title=None,
                header=alt.Header(labelAngle=0, labelAlign="left", labelOrient="top"),
            )
        )
        .properties(
            title=_title(
                "Filter L2 norms per convolution layer",
                grouped,
                "estimated from sampled weight_values" if sampled else "",
                selection.note,
            )
        )
    )


_CONV = f"""
SELECT w.model_id, w.layer_path, w.weight_name, w.size, l.layer_index,
       CASE WHEN l.class_name LIKE '%Transpose' THEN w.shape[-2] ELSE w.shape[-1] END
           AS filters,
       CASE WHEN l.class_name LIKE '%Transpose' THEN w.shape[-1] ELSE 1 END AS stride
FROM weights AS w JOIN layers AS l USING (model_id, layer_path)
WHERE list_contains($ids, w.model_id)
  AND regexp_full_match(l.class_name, '{_CONV_CLASSES}')
  AND w.role IN ('kernel', 'pointwise_kernel') AND len(w.shape) >= 3 AND w.size > 0
  -- a layout we do not know (e.g. Keras 1 channels-first) would put the filters elsewhere
  AND (l.filters IS NULL OR l.filters =
       CASE WHEN l.class_name LIKE '%Transpose' THEN w.shape[-2] ELSE w.shape[-1] END)
"""


# ----------------------------------------------------------------------------- drift

MAX_LAYERS = 12  # layers drawn as lines of one panel (drift)


def drift_series(
    con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None
) -> list[tuple[str, str, int]]:
    """Checkpoint series with drift among the models: (series, short label, checkpoints),
    largest first. The label is the shortest tail of the series' folder that tells it apart."""
    rows = con.execute(
        "SELECT series, count(DISTINCT model_b) + 1 AS n FROM drift "
        "WHERE series IS NOT NULL AND list_contains($ids, model_a) "
        "AND list_contains($ids, model_b) GROUP BY series",
        {"ids": model_ids(con, models)},
    ).fetchall()
    labels = series_labels([s for s, _ in rows])
    return sorted(((s, labels[s], n) for s, n in rows), key=lambda r: (-r[2], r[1]))


def series_labels(names: Sequence[str]) -> dict[str, str]:
    """Short labels for series names (a folder, `folder#arch_id` when one folder holds two
    architectures): the fewest trailing folder names that keep the labels apart."""
    split = {}
    for name in names:
        folder, _, arch = name.partition("#")
        parts = [p for p in folder.replace("\\", "/").split("/") if p] or [folder]
        split[name] = (parts, f"#{arch[:8]}" if arch else "")
    depth = dict.fromkeys(names, 1)
    while True:
        labels = {n: "/".join(p[-depth[n] :]) + s for n, (p, s) in split.items()}
        seen: dict[str, list[str]] = {}
        for name, label in labels.items():
            seen.setdefault(label, []).append(name)
        clashes = [n for group in seen.values() if len(group) > 1 for n in group]
        grow = [n for n in clashes if depth[n] < len(split[n][0])]
        if not grow:
            return labels
        for name in grow:
            depth[name] += 1


def _pick_series(
    available: list[tuple[str, str, int]], wanted: Sequence[str] | None
) -> list[tuple[str, str, int]]:
    """The series named by `wanted` (full name, short label, or a glob on either), in the
    order of `available`."""
    if not wanted:
        return available
    picked = []
    for pattern in wanted:
        found = [
            s
            for s in available
            if pattern in (s[0], s[1])
            or fnmatch.fnmatchcase(s[0], pattern)
            or fnmatch.fnmatchcase(s[1], pattern)
        ]
        if not found:
            known = ", ".join(s[1] for s in available) or "none"
            raise LookupError(f"no checkpoint series is named {pattern!r}; known: {known}")
        picked += found
    chosen = {s[0] for s in picked}
    return [s for s in available if s[0] in chosen]


# Position of every checkpoint in its series: the drift pairs of a series form a chain
# (consecutive checkpoints, README: Series and drift); k = 0 is the first checkpoint.
_CHAIN = """
WITH RECURSIVE
pairs AS (
    SELECT DISTINCT series, model_a, model_b FROM drift WHERE list_contains($series, series)
),
chain(series, model_id, k) AS (
    SELECT p.series, p.model_a, 0 FROM pairs AS p
    WHERE NOT EXISTS (
        SELECT 1 FROM pairs AS q WHERE q.series = p.series AND q.model_b = p.model_a)
    UNION ALL
    SELECT p.series, p.model_b, c.k + 1 FROM chain AS c
    JOIN pairs AS p ON p.series = c.series AND p.model_a = c.model_id
    WHERE c.k < 1000000
),
pos AS (
    SELECT c.series, c.model_id, c.k, e.value AS epoch, s.value AS step,
           max(c.k) OVER (PARTITION BY c.series) AS last_k
    FROM chain AS c
    LEFT JOIN model_tags AS e ON e.model_id = c.model_id AND e.key = 'epoch'
    LEFT JOIN model_tags AS s ON s.model_id = c.model_id AND s.key = 'step'
)
"""


def checkpoint_drift(
    con: duckdb.DuckDBPyConnection,
    *,
    series: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
) -> alt.FacetChart:
    """Drift across checkpoint series: epoch vs each layer's relative change, a panel per series.

    One line per layer: ‖B−A‖/‖A‖ from the previous checkpoint of its series, from
    `layer_drift` (all tensors of a layer together). The x axis is the epoch tag when
    every checkpoint drawn has one, else the step tag, else the checkpoint's position in its
    series (1 = first). `series` takes full names (folders), short labels or globs; `models`
    keeps the pairs whose two checkpoints are both among them.
    """
    ids = model_ids(con, models)
    chosen = _pick_series(drift_series(con, ids), series)
    if not chosen:
        raise NoData("no checkpoint series with drift among the selected models")
    params: dict[str, Any] = {"ids": ids, "series": [s[0] for s in chosen]}
    params.update(_layer_params(layers))
    points = f"""
        SELECT ld.*, p.k, p.last_k, p.epoch, p.step, l.layer_index
        FROM layer_drift AS ld
        JOIN pos AS p ON p.series = ld.series AND p.model_id = ld.model_b
        LEFT JOIN layers AS l ON l.model_id = ld.model_b AND l.layer_path = ld.layer_path
        WHERE list_contains($series, ld.series) AND list_contains($ids, ld.model_a)
          AND list_contains($ids, ld.model_b) AND {_layer_filter(layers, "ld.layer_path")}
          AND ld.rel_l2 IS NOT NULL
    """
    found = _run(
        con,
        f"{_CHAIN} SELECT layer_path, min(layer_index) AS position FROM ({points}) "
        "GROUP BY layer_path ORDER BY position NULLS LAST, layer_path",
        params,
    ).fetchall()
    if not found:
        raise NoData("no layer with drift matches the filters")
    layer_order = _thin([r[0] for r in found], MAX_LAYERS)
    per_series = {
        name: (n_rows, n_layers)
        for name, n_rows, n_layers in _run(
            con,
            f"{_CHAIN} SELECT series, count(*), count(DISTINCT layer_path) FROM ({points}) "
            "WHERE list_contains($layers, layer_path) GROUP BY series",
            {**params, "layers": layer_order},
        ).fetchall()
    }
    chosen = [s for s in chosen if s[0] in per_series]
    shown = _thin(chosen, MAX_FACETS)
    params["series"] = [s[0] for s in shown]
    # Every `stride`-th checkpoint (and each series' last) when the rows overflow the budget;
    # rounding up and the last checkpoint add at most two checkpoints to each series.
    n_rows = sum(per_series[s[0]][0] for s in shown)
    room = max(1, ROW_BUDGET - 2 * sum(per_series[s[0]][1] for s in shown))
    stride = max(1, math.ceil(n_rows / room))
    kinds = _run(
        con,
        f"{_CHAIN} SELECT count(*), count(epoch), count(step) FROM pos "
        "WHERE k > 0 AND list_contains($ids, model_id)",
        params,
    ).fetchone()
    x_field, x_title = (
        ("epoch", "epoch")
        if kinds[1] == kinds[0]
        else ("step", "step")
        if kinds[2] == kinds[0]
        else ("checkpoint", "checkpoint (position in its series)")
    )
    labels = {s[0]: s[1] for s in shown}
    rows = _records(
        con,
        f"""
        {_CHAIN}
        SELECT series, name_a AS "from", name_b AS model, layer_path AS layer,
               epoch, step, k + 1 AS checkpoint, rel_l2, cosine, sign_flip_frac, max_abs_change
        FROM ({points})
        WHERE list_contains($layers, layer_path)
          AND ((k - 1) % $stride = 0 OR k = last_k)
        ORDER BY series, k, layer_index
        """,
        {**params, "layers": layer_order, "stride": stride},
    )
    for row in rows:
        row["series"] = labels[row["series"]]
    positive = [r["rel_l2"] for r in rows if r["rel_l2"]]
    if positive and len(positive) == len(rows):
        y_scale, y_axis = alt.Scale(type="log", nice=False, padding=8), alt.Axis()
    else:  # a stale layer (no change at all) must still show, at 0
        low, high = min(positive or [1e-3]), max(positive or [1e-3])
        y_scale = alt.Scale(type="symlog", constant=low / 2, domainMin=0)
        y_axis = alt.Axis(values=[0.0, *_log_ticks(low, high)], format="~g")
    pick = alt.selection_point(fields=["layer"], bind="legend")
    scheme = "tableau10" if len(layer_order) <= 10 else "tableau20"
    series_order = [s[1] for s in shown]
    line = (
        alt.Chart(alt.Data(values=rows))
        .mark_line(point=alt.OverlayMarkDef(size=28), strokeWidth=1.6)
        .encode(
            x=alt.X(f"{x_field}:Q", title=x_title, axis=alt.Axis(tickMinStep=1)),
            y=alt.Y(
                "rel_l2:Q",
                title="relative change ||B − A|| / ||A||",
                scale=y_scale,
                axis=y_axis,
            ),
            color=alt.Color(
                "layer:N",
                sort=layer_order,
                scale=alt.Scale(domain=layer_order, scheme=scheme),
                legend=alt.Legend(title="layer (click to pick)"),
            ),
            opacity=alt.condition(pick, alt.value(0.95), alt.value(0.12)),
            tooltip=[
                alt.Tooltip("series:N"),
                alt.Tooltip("layer:N"),
                alt.Tooltip("from:N"),
                alt.Tooltip("model:N", title="to"),
                alt.Tooltip(f"{x_field}:Q"),
                alt.Tooltip("rel_l2:Q", format=".4g", title="relative change"),
                alt.Tooltip("cosine:Q", format=".4f"),
                alt.Tooltip("sign_flip_frac:Q", format=".2%", title="signs flipped"),
                alt.Tooltip("max_abs_change:Q", format=".4g", title="max |B − A|"),
            ],
        )
        .add_params(pick)
        .properties(width=300, height=200)
    )
    thinned = "" if stride == 1 else f"every {stride}th checkpoint (and the last) of each series"
    layers_note = (
        ""
        if len(layer_order) == len(found)
        else f"{len(layer_order)} of {len(found)} layers, evenly spaced (pass --layer to choose)"
    )
    series_note = (
        ""
        if len(shown) == len(chosen)
        else f"{len(shown)} of {len(chosen)} series (pass --series to choose)"
    )
    return line.facet(
        facet=alt.Facet("series:N", sort=series_order, title=None),
        columns=min(3, len(shown)),
    ).properties(
        title=_title(
            "Drift from checkpoint to checkpoint",
            "relative change of each layer's weights (all its tensors together) from the "
            "previous checkpoint of its series",
            series_note,
            layers_note,
            thinned,
        )
    )


def _log_ticks(low: float, high: float) -> list[float]:
    """1, 2, 5 × powers of ten from about `low` to `high` (ticks for a symlog axis)."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for m in (1, 2, 5):
            value = float(f"{m}e{exponent}")
            if low / 2 <= value <= high * 1.2:
                ticks.append(value)
    return ticks


# ----------------------------------------------------------------------------- distances

MAX_DISTANCE_MODELS = 12  # distance_heatmap reads every model's file: keep it bounded


def distance_heatmap(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
) -> alt.Chart:
    """Model × model distance ‖A−B‖ / mean(‖A‖, ‖B‖) of one layer, for same-architecture models.

    Computed by `wpipe.compare.distance_matrix`, which reads the model files again (the
    database keeps statistics, not every pair's difference), so at most 12 models are drawn:
    those of the architecture most of the selected models share, evenly spaced beyond 12.
    `layer` defaults to the layer with the most parameters.
    """
    from wpipe import compare
    from wpipe.readers import ModelReadError

    ids = model_ids(con, models)
    arch = dict(
        con.execute(
            "SELECT model_id, arch_id FROM models WHERE list_contains($ids, model_id)",
            {"ids": ids},
        ).fetchall()
    )
    groups: dict[str, list[str]] = {}
    for model_id in ids:
        groups.setdefault(arch[model_id], []).append(model_id)
    same = max(groups.values(), key=len, default=[])
    if len(same) < 2:
        raise NoData("no two of the selected models share an architecture")
    selection = _keep(same, set(same), MAX_DISTANCE_MODELS)
    others = len(ids) - len(same)
    candidates = con.execute(
        "SELECT layer_path, n_params FROM layers WHERE model_id = $first AND n_tensors > 0 "
        "ORDER BY layer_index",
        {"first": selection.ids[0]},
    ).fetchall()
    if layer is None:
        layer = max(candidates, key=lambda r: r[1], default=(None, 0))[0]
    elif layer not in {r[0] for r in candidates}:
        raise NoData(f"no layer {layer!r} with weights in these models")
    if layer is None:
        raise NoData("these models have no layer with weights")
    try:
        found = compare.distance_matrix(con, selection.ids)
    except (ModelReadError, OSError) as exc:
        raise NoData(f"cannot read the model files again: {exc}") from None
    names = _names(con, selection.ids)
    name = dict(zip(selection.ids, names, strict=True))
    cells = {(a, b): d for path, a, b, d in found if path == layer}
    rows = []
    for a in selection.ids:
        for b in selection.ids:
            d = 0.0 if a == b else cells.get((a, b), cells.get((b, a)))
            rows.append({"a": name[a], "b": name[b], "distance": _json_value(d)})
    finite = [r["distance"] for r in rows if r["distance"] is not None]
    if len(finite) <= len(selection.ids):
        raise NoData(f"layer {layer!r}: no pair of models shares its tensors")
    high = max(finite)
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("b:N", sort=names, title=None, axis=alt.Axis(labelAngle=-40, labelLimit=160)),
        y=alt.Y("a:N", sort=names, title=None, axis=alt.Axis(labelLimit=200)),
        tooltip=[
            alt.Tooltip("a:N", title="model"),
            alt.Tooltip("b:N", title="other"),
            alt.Tooltip("distance:Q", format=".4g"),
        ],
    )
    heat = base.mark_rect().encode(
        color=alt.Color(
            "distance:Q", title="distance", scale=alt.Scale(scheme="viridis", domainMin=0)
        )
    )
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("distance:Q", format=".2f"),
        color=alt.condition(
            alt.datum.distance > high * 0.55, alt.value("black"), alt.value("white")
        ),
    )
    step = 40 if len(names) <= 8 else 30
    notes = [
        "||A − B|| / mean(||A||, ||B||) over the layer's tensors; 0 = equal weights",
        f"read from the model files (at most {MAX_DISTANCE_MODELS} models)",
        selection.note,
        f"{others} selected models of other architectures left out" if others else "",
    ]
    return (heat + text).properties(
        width=alt.Step(step),
        height=alt.Step(step),
        title=_title(f"{layer}: distance between models", *notes),
    )


# ----------------------------------------------------------------------------- metrics

#: Model-level statistics (`model_summary` columns) that `metric_scatter` can draw, the ones
#: `wpipe correlate` ranks.
MODEL_STATS = ("n_params", "max_abs", "zero_frac", "near_zero_frac", "nonfinite_count")

# y: one value per model (the mean, should two CSV files give a model the same metric).
_METRIC = """
SELECT model_id, avg(value) AS y FROM model_metrics
WHERE metric = $metric AND list_contains($ids, model_id) GROUP BY model_id
"""


def metrics(con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None) -> list[str]:
    """Metric names in `model_metrics` for the models: validation metrics first."""
    rows = con.execute(
        "SELECT DISTINCT metric FROM model_metrics WHERE list_contains($ids, model_id)",
        {"ids": model_ids(con, models)},
    ).fetchall()
    preferred = ("val_accuracy", "val_acc", "val_loss")
    return sorted(
        (r[0] for r in rows),
        key=lambda m: (
            m not in preferred,
            preferred.index(m) if m in preferred else 0,
            not m.startswith("val_"),
            m,
        ),
    )


def rank_correlations(
    con: duckdb.DuckDBPyConnection, metric: str, *, models: Sequence[str] | None = None
) -> list[tuple[str, int, float]]:
    """What `wpipe correlate` ranks, over the chosen models: (feature, n_models, rho)."""
    return correlate(con, metric, model_ids(con, models))


def _feature(
    con: duckdb.DuckDBPyConnection, stat: str, layer: str | None, weight: str
) -> tuple[str, str, dict[str, Any]]:
    """(label, SQL selecting model_id and x for $ids, its parameters) of a feature: a
    `model_summary` column, `<layer>/<weight>: <stat>` as `wpipe correlate` names it, or a
    weights column of the tensor (`layer`, `weight`)."""
    if layer is None and ": " in stat:
        target, _, stat = stat.rpartition(": ")
        if target != "model":
            found = con.execute(
                "SELECT DISTINCT layer_path, weight_name FROM weights "
                "WHERE layer_path || '/' || weight_name = $t",
                {"t": target},
            ).fetchall()
            if len(found) != 1:
                raise LookupError(f"no tensor {target!r} (a layer_path/weight_name)")
            layer, weight = found[0]
    if layer is None:
        if stat not in MODEL_STATS:
            raise ValueError(
                f"model statistic must be one of {', '.join(MODEL_STATS)} (or give --layer "
                f"for a tensor statistic); not {stat!r}"
            )
        sql = (
            f'SELECT model_id, "{stat}"::DOUBLE AS x FROM model_summary '
            "WHERE list_contains($ids, model_id)"
        )
        return f"model: {stat}", sql, {}
    if stat not in STATS:
        raise ValueError(f"stat must be one of {', '.join(STATS)}; not {stat!r}")
    sql = (
        f'SELECT model_id, "{stat}"::DOUBLE AS x FROM weights WHERE list_contains($ids, model_id) '
        "AND layer_path = $layer AND weight_name = $weight"
    )
    return f"{layer}/{weight}: {stat}", sql, {"layer": layer, "weight": weight}


def metric_scatter(
    con: duckdb.DuckDBPyConnection,
    *,
    metric: str | None = None,
    stat: str | None = None,
    layer: str | None = None,
    weight: str = "kernel",
    models: Sequence[str] | None = None,
) -> alt.Chart:
    """A weight statistic vs a validation metric, one point per model, Spearman ρ in the title.

    `stat` is a `model_summary` column (max_abs, near_zero_frac, …), a weights column of the
    tensor (`layer`, `weight`), or a feature as `wpipe correlate` prints it
    (`conv2/kernel: std`); by default the one with the largest |ρ|. `metric` defaults to a
    validation metric. ρ (average ranks for ties) is computed in DuckDB over every model with
    both values, whether or not the row budget lets each be drawn.
    """
    ids = model_ids(con, models)
    known = metrics(con, ids)
    if not known:
        raise NoData("no model_metrics for the selected models (`wpipe metrics add FILE.csv`)")
    metric = metric or known[0]
    if metric not in known:
        raise LookupError(f"no metric {metric!r}; known: {', '.join(known)}")
    if stat is None and layer is None:
        ranked = rank_correlations(con, metric, models=ids)
        if not ranked:
            raise NoData(f"fewer than 3 models have {metric!r} and a weight statistic")
        stat = ranked[0][0]
    label, feature_sql, extra = _feature(con, stat or "std", layer, weight)
    params = {"ids": ids, "metric": metric, **extra}
    joined = f"""
        WITH y AS ({_METRIC}), x AS ({feature_sql}),
        j AS (
            SELECT 'f' AS feature, model_id, x.x, y.y FROM x JOIN y USING (model_id)
            WHERE x.x IS NOT NULL AND isfinite(x.x) AND isfinite(y.y))
    """
    _, n, rho = _run(con, f"{joined}, {SPEARMAN_SQL}", params).fetchone() or ("", 0, None)
    if not n:
        raise NoData(f"no model has both {metric!r} and {label!r}")
    kept = {r[0] for r in _run(con, f"{joined} SELECT model_id FROM j", params).fetchall()}
    selection = _keep(ids, kept, ROW_BUDGET)
    rows = _records(
        con,
        f"""
        {joined}
        SELECT m.name AS model, regexp_extract(m.path, '([^/\\\\]+)[/\\\\][^/\\\\]+$', 1) AS folder,
               j.x, j.y
        FROM j JOIN models AS m USING (model_id)
        WHERE list_contains($kept, model_id) ORDER BY m.name
        """,
        {**params, "kept": selection.ids},
    )
    folders = sorted({r["folder"] for r in rows})
    pick = alt.selection_point(fields=["folder"], bind="legend")
    zoom = alt.selection_interval(bind="scales")
    encoding: dict[str, Any] = {}
    if 2 <= len(folders) <= 20:
        encoding["color"] = alt.Color(
            "folder:N",
            title="folder (click to pick)",
            scale=alt.Scale(scheme="tableau10" if len(folders) <= 10 else "tableau20"),
        )
        encoding["opacity"] = alt.condition(pick, alt.value(0.9), alt.value(0.12))
    rho_text = "undefined (a constant)" if rho is None else f"{rho:+.2f}"
    notes = [
        f"one point per model; Spearman ρ over all {n} models with both values "
        "(average ranks for ties)",
        "fewer than 8 models: rank correlations are mostly noise" if n < 8 else "",
        selection.note,
    ]
    chart = (
        alt.Chart(alt.Data(values=rows))
        .mark_circle(size=70)
        .encode(
            x=alt.X("x:Q", title=label, scale=alt.Scale(zero=False)),
            y=alt.Y("y:Q", title=metric, scale=alt.Scale(zero=False)),
            tooltip=[
                alt.Tooltip("model:N"),
                alt.Tooltip("folder:N"),
                alt.Tooltip("x:Q", title=label, format=".5g"),
                alt.Tooltip("y:Q", title=metric, format=".5g"),
            ],
            **encoding,
        )
        .add_params(zoom)
        .properties(
            width=420,
            height=300,
            title=_title(f"{metric} vs {label} · Spearman ρ = {rho_text} (n = {n})", *notes),
        )
    )
    return chart.add_params(pick) if "color" in encoding else chart


# ----------------------------------------------------------------------------- health

#: Health flags as `health_findings` names them, worst first, with the weight_health column
#: behind each and its severity (as in health_findings).
HEALTH_FLAGS = (
    ("nan_or_inf", "nan_or_inf", 4),
    ("exploding", "exploding", 3),
    ("dead_units", "has_dead_units", 2),
    ("saturating_forget_gate", "saturating_forget_gate", 1),
    ("sparse", "sparse", 1),
    ("stale", "stale", 1),
)


def health_overview(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
) -> alt.Chart:
    """Health findings as a model × flag heatmap: flagged tensors per model and flag.

    From `weight_health` (thresholds in the settings table; README: Weight health). Only models
    with a finding are drawn, worst first (by the summed severity of `health_findings`); when
    more than the row budget allows, the worst ones.
    """
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids, **_layer_params(layers)}
    where = f"list_contains($ids, model_id) AND {_layer_filter(layers)}"
    worst = _run(
        con,
        f"SELECT model_id, sum(severity) AS severity, count(*) AS n FROM health_findings "
        f"WHERE {where} GROUP BY model_id ORDER BY severity DESC, any_value(model)",
        params,
    ).fetchall()
    if not worst:
        raise NoData("no health findings in the selected models")
    limit = ROW_BUDGET // len(HEALTH_FLAGS)
    kept = [r[0] for r in worst[:limit]]
    flags = ", ".join(f"('{flag}', {k})" for k, (flag, _, _) in enumerate(HEALTH_FLAGS))
    test = " ".join(f"WHEN '{flag}' THEN h.{column}" for flag, column, _ in HEALTH_FLAGS)
    rows = _records(
        con,
        f"""
        WITH f(flag, position) AS (VALUES {flags}),
        h AS (SELECT * FROM weight_health WHERE {where} AND list_contains($kept, model_id)),
        hit AS (
            SELECT h.model_id, f.flag, count(*) AS tensors,
                   sum(h.dead_units) AS dead_units, sum(h.n_units) AS n_units,
                   list(h.layer_path || CASE WHEN h.weight_name = h.role THEN ''
                        ELSE ' · ' || h.weight_name END ORDER BY h.layer_path)[1:3] AS tensors_at
            FROM h CROSS JOIN f WHERE CASE f.flag {test} END
            GROUP BY ALL),
        m AS (SELECT model_id, name FROM models WHERE list_contains($kept, model_id))
        SELECT m.name AS model, f.flag, f.position, coalesce(hit.tensors, 0) AS tensors,
               CASE WHEN f.flag = 'dead_units' AND hit.tensors > 0
                    THEN hit.dead_units || ' of ' || hit.n_units END AS dead,
               array_to_string(hit.tensors_at, ', ')
                   || CASE WHEN hit.tensors > 3 THEN ', …' ELSE '' END AS "where"
        FROM m CROSS JOIN f LEFT JOIN hit USING (model_id, flag)
        ORDER BY m.name, f.position
        """,
        {**params, "kept": kept},
    )
    name = dict(_ids_names(con, kept))
    order = [name[i] for i in kept]
    flag_order = [flag for flag, _, _ in HEALTH_FLAGS]
    high = max(r["tensors"] for r in rows)
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X(
            "flag:N",
            sort=flag_order,
            title=None,
            axis=alt.Axis(orient="top", labelAngle=-30, labelAlign="left"),
        ),
        y=alt.Y(
            "model:N",
            sort=order,
            title=None,
            axis=alt.Axis(labels=len(order) <= 150, labelLimit=220),
        ),
        tooltip=[
            alt.Tooltip("model:N"),
            alt.Tooltip("flag:N"),
            alt.Tooltip("tensors:Q", title="flagged tensors"),
            alt.Tooltip("dead:N", title="dead units"),
            alt.Tooltip("where:N"),
        ],
    )
    heat = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.condition(
            alt.datum.tensors == 0,
            alt.value("#f2f2f2"),
            alt.Color(
                "tensors:Q",
                title="flagged tensors",
                scale=alt.Scale(scheme="orangered", domainMin=0),
            ),
        )
    )
    chart = heat
    if len(order) <= 60:
        chart = heat + base.transform_filter(alt.datum.tensors > 0).mark_text(fontSize=10).encode(
            text="tensors:Q",
            color=alt.condition(
                alt.datum.tensors > high * 0.6, alt.value("white"), alt.value("black")
            ),
        )
    shown = (
        ""
        if len(kept) == len(worst)
        else f"the {len(kept)} of {len(worst)} models with the most severe findings"
    )
    total = len(ids)
    return chart.properties(
        width=alt.Step(64),
        height=alt.Step(_step(len(order), largest=20, room=900)),
        title=_title(
            "Health findings per model",
            f"flagged tensors per flag (README: Weight health); {len(worst)} of {total} "
            "models have findings, the others are not drawn",
            shown,
        ),
    )


def _ids_names(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[tuple[str, str]]:
    return list(zip(ids, _names(con, ids), strict=True))


# ----------------------------------------------------------------------------- registry


CHARTS: dict[str, Callable[..., alt.TopLevelMixin]] = {
    "histogram": weight_histograms,
    "heatmap": stat_heatmap,
    "boxes": distribution_boxes,
    "params": param_counts,
    "gates": gate_histograms,
    "filter-norms": filter_norms,
    "drift": checkpoint_drift,
    "distance": distance_heatmap,
    "metric": metric_scatter,
    "health": health_overview,
}


def recurrent_layers(
    con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None
) -> list[str]:
    """Layer paths holding LSTM/GRU kernels that `gate_histograms` can split, most common first."""
    rows = con.execute(
        f"SELECT layer_path FROM ({_RECURRENT}) GROUP BY layer_path "
        "ORDER BY count(DISTINCT model_id) DESC, min(layer_index), layer_path",
        {"ids": model_ids(con, models)},
    ).fetchall()
    return [r[0] for r in rows]


def conv_models(con: duckdb.DuckDBPyConnection, models: Sequence[str] | None = None) -> list[str]:
    """Names of the models with convolution kernels that `filter_norms` can draw."""
    rows = con.execute(
        f"SELECT DISTINCT m.name FROM ({_CONV}) JOIN models AS m USING (model_id) ORDER BY m.name",
        {"ids": model_ids(con, models)},
    ).fetchall()
    return [r[0] for r in rows]


def summary(name: str) -> str:
    """The first line of a chart function's docstring."""
    return (CHARTS[name].__doc__ or "").strip().splitlines()[0]


# ----------------------------------------------------------------------------- saving


def vega_lite_version() -> str | None:
    """The Vega-Lite version Altair writes, as vl-convert names it (e.g. '6.4'), if it has it."""
    import vl_convert

    wanted = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return wanted if wanted in vl_convert.get_vegalite_versions() else None


@lru_cache(maxsize=1)
def javascript_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (from vl-convert; no network)."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=vega_lite_version())
    # The bundle goes inside <script>; "</script" anywhere in it would end the element early.
    return re.sub(r"</(script)", r"<\\/\1", bundle, flags=re.IGNORECASE)


def script_json(value: Any) -> str:
    """JSON that is safe inside an HTML <script> element: no '<', '>' or '&' characters."""
    text = json.dumps(value, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


EMBED_OPTIONS = {"actions": {"export": True, "source": True, "compiled": False, "editor": False}}


def chart_html(chart: alt.TopLevelMixin, title: str = "wpipe chart") -> str:
    """A self-contained HTML page drawing `chart` offline (the JavaScript is inlined)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<script>{javascript_bundle()}</script>
</head>
<body>
<div id="vis"></div>
<script type="application/json" id="spec">{script_json(chart.to_dict())}</script>
<script>
vegaEmbed("#vis", JSON.parse(document.getElementById("spec").textContent),
          {script_json(EMBED_OPTIONS)}).catch(function (e) {{
  document.getElementById("vis").textContent = "chart failed: " + e;
}});
</script>
</body>
</html>
"""


SAVE_FORMATS = (".vl.json", ".json", ".html", ".png", ".svg")


def save_chart(chart: alt.TopLevelMixin, path: str | Path, scale: float = 2.0) -> Path:
    """Write `chart` to `path`; the format comes from the suffix (.vl.json/.json, .html, .png,
    .svg). PNG and SVG are rendered by vl-convert, with no browser and no network."""
    path = Path(path)
    name = path.name.lower()
    spec = chart.to_dict()  # validates against the Vega-Lite schema
    if name.endswith(".json"):
        path.write_text(json.dumps(spec, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    elif name.endswith(".html"):
        path.write_text(chart_html(chart, title=path.stem), encoding="utf-8")
    elif name.endswith(".png"):
        import vl_convert

        path.write_bytes(
            vl_convert.vegalite_to_png(spec, vl_version=vega_lite_version(), scale=scale)
        )
    elif name.endswith(".svg"):
        import vl_convert

        svg = vl_convert.vegalite_to_svg(spec, vl_version=vega_lite_version())
        path.write_text(svg, encoding="utf-8")
    else:
        raise ValueError(f"{path}: unknown chart format; use one of {', '.join(SAVE_FORMATS)}")
    return path
