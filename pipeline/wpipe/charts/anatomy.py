"""Anatomy charts: parameters per layer class, recurrent gates, convolution filter norms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.base import DEFAULT_BINS, MAX_BINS, MAX_FACETS, MAX_SERIES, NoData, model_ids

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
LSTM_CELLS = ("LSTM", "CuDNNLSTM", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
GRU_CELLS = ("GRU", "CuDNNGRU")
# Conv layers whose kernel has the filters on its last axis, or, for transposed convolutions,
# on the one before (keras_formats.md §6). Depthwise kernels have no filter axis of their own.
_CONV_CLASSES = r"(Conv[123]D|Convolution[123]D|SeparableConv[12]D|Conv[123]DTranspose)"


#: Past this many models the parameters chart draws one bar per architecture group.
GROUP_MODELS_ABOVE = 40


def param_counts(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    grouped: bool | None = None,
) -> alt.Chart:
    """Parameter count per model, stacked by layer class, on a log axis.

    Past GROUP_MODELS_ABOVE models (or with `grouped=True`), one bar per architecture group
    (its models have the same weight shapes, so the same count), labelled with how many
    models it holds; largest count first. A log axis keeps a hundred small models readable
    beside one large one.
    """
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
    with_weights = [i for i in ids if i in {r[0] for r in having}]
    if grouped is None:
        grouped = len(with_weights) > GROUP_MODELS_ABOVE
    if grouped:
        rows, order, note = _param_groups(con, with_weights, len(classes))
    else:
        selection = base.keep(ids, set(with_weights), base.ROW_BUDGET // len(classes))
        rows = base.records(
            con,
            """
            SELECT m.name AS model, coalesce(l.class_name, '(no architecture)') AS class_name,
                   sum(l.n_params)::BIGINT AS n_params, sum(l.n_trainable)::BIGINT AS n_trainable,
                   count(*)::BIGINT AS n_layers, any_value(m.n_params) AS model_params,
                   1 AS models
            FROM layers AS l JOIN models AS m USING (model_id)
            WHERE list_contains($ids, l.model_id) AND l.n_params > 0
            GROUP BY ALL ORDER BY m.name, class_name
            """,
            {"ids": selection.ids},
        )
        order, note = base.model_names(con, selection.ids), selection.note
    pick = alt.selection_point(fields=["class_name"], bind="legend")
    what = "architecture group (models)" if grouped else "model"
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            y=alt.Y(
                "model:N",
                sort=order,
                title=None,
                axis=alt.Axis(labels=len(order) <= 150, labelLimit=320),
            ),
            # stacked on a log axis, largest class first: that segment runs from 1 (clamped)
            # and holds most of the bar, the bar's end is the model's total
            order=alt.Order("n_params:Q", sort="descending"),
            x=alt.X(
                "sum(n_params):Q",
                title="parameters (log scale)",
                stack="zero",
                scale=alt.Scale(type="log", domainMin=1, clamp=True),
                axis=alt.Axis(format="~s"),
            ),
            color=alt.Color(
                "class_name:N",
                title="layer class (click to pick)",
                scale=alt.Scale(scheme="tableau20"),
            ),
            opacity=alt.condition(pick, alt.value(1.0), alt.value(0.2)),
            tooltip=[
                alt.Tooltip("model:N", title=what),
                alt.Tooltip("models:Q", title="models"),
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
            height=alt.Step(base.step(len(order), largest=16, room=1400)),
            title=base.title(
                "Parameters per model by layer class"
                + (": one bar per architecture group" if grouped else ""),
                "log axis: a bar ends at the model's total; segments largest class first"
                + (
                    "; a group's models have the same weight shapes, the label counts them"
                    if grouped
                    else ""
                ),
                note,
            ),
        )
    )


def _param_groups(
    con: duckdb.DuckDBPyConnection, ids: list[str], n_classes: int
) -> tuple[list[dict], list[str], str]:
    """Rows of the grouped parameters chart (one bar per arch_id, labelled by its first model
    and count), the bars in order (most parameters first) and a note."""
    groups = con.execute(
        "SELECT arch_id, count(*) AS n, min(name) AS first, any_value(n_params) AS params "
        "FROM models WHERE list_contains($ids, model_id) GROUP BY arch_id "
        "ORDER BY params DESC, n DESC, first",
        {"ids": ids},
    ).fetchall()
    kept = groups[: max(1, base.ROW_BUDGET // n_classes)]
    label = {a: f"{first}{' …' if n > 1 else ''} ({n} model{'s' if n > 1 else ''})"
             for a, n, first, _ in kept}  # fmt: skip
    rows = base.records(
        con,
        """
        WITH one AS (SELECT arch_id, arg_min(model_id, name) AS model_id, count(*) AS models
                     FROM models WHERE list_contains($ids, model_id) GROUP BY arch_id)
        SELECT one.arch_id, one.models,
               coalesce(l.class_name, '(no architecture)') AS class_name,
               sum(l.n_params)::BIGINT AS n_params, sum(l.n_trainable)::BIGINT AS n_trainable,
               count(*)::BIGINT AS n_layers, any_value(m.n_params) AS model_params
        FROM one JOIN layers AS l USING (model_id) JOIN models AS m USING (model_id)
        WHERE l.n_params > 0 AND list_contains($arch, one.arch_id)
        GROUP BY ALL ORDER BY one.arch_id, class_name
        """,
        {"ids": ids, "arch": [a for a, *_ in kept]},
    )
    for r in rows:
        r["model"] = label[r.pop("arch_id")]
    note = f"the {len(kept)} largest of {len(groups)} groups" if len(kept) < len(groups) else ""
    return rows, [label[a] for a, *_ in kept], note


# ----------------------------------------------------------------------------- gates


def gate_histograms(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
    bins: int = DEFAULT_BINS,
) -> alt.FacetChart | alt.VConcatChart:
    """LSTM/GRU weights split by gate (i,f,c,o / z,r,h) and kernel type, overlaid across models.

    A value at flat_index of a (rows, G·u) kernel belongs to gate (flat_index % G·u) // u,
    computed in SQL from `weight_values`. Without `layer`, the LSTM layer and the GRU layer
    found in most models, one above the other (each with the models that have it); a
    Bidirectional layer's halves are separate rows (forward/kernel, …).
    """
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be between 1 and {MAX_BINS}")
    ids = model_ids(con, models)
    if layer is not None:
        return _gate_panels(con, ids, layer, bins, base.ROW_BUDGET)
    found = con.execute(
        f"SELECT n_gates, layer_path FROM ({_RECURRENT}) GROUP BY n_gates, layer_path "
        "ORDER BY n_gates DESC, count(DISTINCT model_id) DESC, min(layer_index), layer_path",
        {"ids": ids},
    ).fetchall()
    first: dict[int, str] = {}
    for n_gates, path in found:  # LSTM (4 gates) first, then GRU
        first.setdefault(n_gates, path)
    if not first:
        raise NoData("no LSTM or GRU kernel in the selected models")
    panels, missing = [], []
    for k, path in enumerate(first.values()):
        try:
            panels.append(_gate_panels(con, ids, path, bins, base.ROW_BUDGET // len(first), k))
        except NoData as exc:
            missing.append(str(exc))
    if not panels:
        raise NoData(missing[0])
    if len(panels) == 1:
        return panels[0]
    return (
        alt.vconcat(*panels, spacing=40)
        .resolve_scale(color="independent")
        .properties(
            title=base.title(
                "LSTM and GRU weights by gate",
                "the LSTM layer and the GRU layer found in most models (pass --layer to choose)",
            )
        )
    )


def _gate_panels(
    con: duckdb.DuckDBPyConnection,
    ids: list[str],
    layer: str,
    bins: int,
    budget: int,
    k: int = 0,
) -> alt.FacetChart:
    """One recurrent layer's gate histograms: kernel types × gates, models overlaid."""
    params: dict[str, Any] = {"ids": ids, "layer": layer}
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
    selection = base.keep(ids, qualifying, MAX_SERIES)
    kept = [t for t in tensors if t[0] in selection.ids]
    panels = len({t[1] for t in kept}) * len({t[2] for t in kept}) * max(t[2] for t in kept)
    bins = max(1, min(bins, budget // (len(selection.ids) * panels)))
    params.update(ids=selection.ids, bins=bins)
    rows = base.records(con, _GATES, params)
    if not rows:
        raise NoData(f"no finite values in the kernels of {layer!r}")
    stored, expected = con.execute(
        f"SELECT (SELECT count(*) FROM weight_values AS v JOIN ({_RECURRENT}) AS t "
        "USING (model_id, layer_path, weight_name) WHERE t.layer_path = $layer), "
        f"(SELECT sum(size) FROM ({_RECURRENT}) WHERE layer_path = $layer)",
        {"ids": selection.ids, "layer": layer},
    ).fetchone()
    names = base.model_names(con, selection.ids)
    gate_order = [GATE_TITLES[g] for g in (*LSTM_GATES, *GRU_GATES)]
    sampled = "" if stored == expected else f"from a sample of {stored:,} of {expected:,} values"
    # one legend pick per panel: panels stacked by gate_histograms have their own models
    pick = alt.selection_point(fields=["model"], bind="legend", name=f"pick_gates_{k}")
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_line(interpolate="step", strokeWidth=1.4)
        .encode(
            x=alt.X("x:Q", title="weight value"),
            y=alt.Y("fraction:Q", title="fraction of the gate's values", axis=alt.Axis(format="%")),
            color=base.model_color(names, pick),
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
            title=base.title(
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
    SELECT CASE WHEN c.cell IN {LSTM_CELLS} THEN 4 WHEN c.cell IN {GRU_CELLS} THEN 3 END
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

    From the `units` table (the exact norm of each filter's finite weights, computed at ingest
    from every value, so whatever --values kept; a tensor of more than 4,096 filters has rows
    for 4,096 evenly spaced ones). When there are more filters than the row budget allows,
    neighbouring filters share a cell (mean norm; min/max in the tooltip).
    """
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids, **base.layer_params(layers)}
    conv = f"SELECT * FROM ({_CONV}) WHERE {base.layer_filter(layers)}"
    having = con.execute(
        f"SELECT DISTINCT model_id FROM ({conv}) AS t WHERE EXISTS (SELECT 1 FROM units AS u "
        "WHERE u.model_id = t.model_id AND u.layer_path = t.layer_path "
        "AND u.weight_name = t.weight_name AND u.axis = 'filter')",
        params,
    ).fetchall()
    selection = base.keep(ids, {r[0] for r in having}, MAX_FACETS)
    if not selection.ids:
        raise NoData("no convolution kernel with filter rows in `units` in the selected models")
    params["ids"] = selection.ids
    n_filters, n_tensors = con.execute(
        f"SELECT sum(filters), count(*) FROM ({conv})", params
    ).fetchone()
    # Cells of `group` neighbouring filters; each tensor adds at most one partial cell.
    group = max(1, math.ceil(n_filters / max(1, base.ROW_BUDGET - n_tensors)))
    params["group"] = group
    rows = base.records(
        con,
        f"""
        WITH t AS ({conv}),
        f AS (
            SELECT t.model_id, t.layer_path, t.weight_name, t.layer_index,
                   u.index::INTEGER AS filter, u.l2 AS norm
            FROM units AS u JOIN t USING (model_id, layer_path, weight_name)
            WHERE u.axis = 'filter'
        )
        SELECT m.name AS model,
               CASE WHEN f.weight_name = 'kernel' THEN f.layer_path
                    ELSE f.layer_path || ' · ' || f.weight_name END AS layer,
               min(f.layer_index) AS layer_index,
               min(f.filter) AS first, max(f.filter) AS last, max(f.filter) + 1 AS "end",
               avg(f.norm) AS norm, min(f.norm) AS min_norm, max(f.norm) AS max_norm
        FROM f JOIN models AS m USING (model_id)
        GROUP BY m.name, f.layer_path, f.weight_name, f.filter // $group
        ORDER BY m.name, layer_index, first
        """,
        params,
    )
    names = base.model_names(con, selection.ids)
    order = sorted({(r["layer_index"], r["layer"]) for r in rows})
    layer_order = list(dict.fromkeys(name for _, name in order))
    grouped = f"{group} neighbouring filters per cell (mean norm)" if group > 1 else ""
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
                "norm:Q",
                title=["L2 norm", "(log scale,", "linear near 0)"],
                scale=alt.Scale(scheme="viridis", type="symlog"),
            ),
            tooltip=tooltip,
        )
        .properties(width=520, height=alt.Step(base.step(len(layer_order), largest=22, room=300)))
        .facet(
            row=alt.Row(
                "model:N",
                sort=names,
                title=None,
                header=alt.Header(labelAngle=0, labelAlign="left", labelOrient="top"),
            )
        )
        .properties(
            title=base.title(
                "Filter L2 norms per convolution layer",
                grouped,
                "exact, from the units table",
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
