"""Distribution charts: histograms on common bins, a statistic heatmap, percentile boxes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.base import DEFAULT_BINS, MAX_BINS, MAX_PANELS, MAX_SERIES, NoData, model_ids

#: Numeric columns of `weights` that `stat_heatmap` can draw.
STATS = (
    "mean", "std", "min", "max", "abs_mean", "l1", "l2", "max_abs", "zero_count",
    "near_zero_frac", "nan_count", "inf_count", "p01", "p05", "p25", "p50", "p75", "p95",
    "p99", "skew", "kurtosis", "size",
)  # fmt: skip
_SIGNED_STATS = {"mean", "min", "max", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "skew"}


def weight_histograms(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
    weight: str = "kernel",
    bins: int = DEFAULT_BINS,
    source: str = "auto",
) -> alt.LayerChart:
    """Histograms of one tensor (layer, weight) overlaid across models on common bins.

    Without `models`, the models of one architecture: the largest group (same `arch_id`)
    holding the tensor. `layer` defaults to the layer of the largest architecture group with
    the most parameters (not the small output layer).
    The bins span a robust common range (`common_range`): one model with far larger weights
    does not squeeze the others into one bin; its values outside the range are counted in
    overflow markers at the ends. `source` is `values` (bin `weight_values` exactly; a
    sample if ingested with --values sample:N), `histograms` (merge the stored per-tensor
    histograms onto the common bins, spreading each stored bin's count uniformly over its
    width) or `auto` (values when every value is stored).
    """
    if source not in ("auto", "values", "histograms"):
        raise ValueError("source must be auto, values or histograms")
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be between 1 and {MAX_BINS}")
    ids = model_ids(con, models)
    with base.paired_layers(con, ids):  # `layer` names the first model's layer
        return _histograms(con, ids, layer, weight, bins, source, explicit=bool(models))


def _histograms(
    con: duckdb.DuckDBPyConnection, ids: list[str], layer: str | None, weight: str, bins: int,
    source: str, explicit: bool,
) -> alt.LayerChart:  # fmt: skip
    params: dict[str, Any] = {"ids": ids, "weight": weight}
    if layer is None:
        found = con.execute(
            f"SELECT {base.PAIRED_LAYER} AS layer FROM weights AS w {base.PAIRED_JOIN} "
            "WHERE list_contains($ids, w.model_id) AND w.weight_name = $weight AND w.size > 0 "
            "GROUP BY layer "
            "ORDER BY count(DISTINCT w.model_id) DESC, max(w.size) DESC, min(w.weight_index), "
            "layer LIMIT 1",
            params,
        ).fetchone()
        if found is None:
            raise NoData(f"no tensor named {weight!r} in the selected models")
        layer = found[0]
    params["layer"] = layer
    having = con.execute(
        "SELECT w.model_id, m.arch_id FROM weights AS w JOIN models AS m USING (model_id) "
        f"WHERE list_contains($ids, w.model_id) AND {base.AT_PAIRED_LAYER} "
        "AND w.weight_name = $weight AND w.size > 0",
        params,
    ).fetchall()
    qualifying, others = base.one_architecture(dict(having), explicit=explicit)
    limit = min(MAX_SERIES, base.ROW_BUDGET // (bins + 2))
    selection = base.keep(ids, qualifying, limit)
    if not selection.ids:
        raise NoData(f"no model has a tensor {layer!r} / {weight!r}")
    params["ids"] = selection.ids
    params["bins"] = bins
    stored, expected = con.execute(
        "SELECT (SELECT count(*) FROM weight_values WHERE list_contains($ids, model_id) "
        f"AND {base.AT_PAIRED_LAYER} AND weight_name = $weight), "
        "(SELECT sum(size) FROM weights WHERE list_contains($ids, model_id) "
        f"AND {base.AT_PAIRED_LAYER} AND weight_name = $weight)",
        {k: params[k] for k in ("ids", "layer", "weight")},
    ).fetchone()
    if source == "auto":
        source = "values" if stored and stored == expected else "histograms"
    if source == "values" and not stored:
        raise NoData(f"no weight_values stored for {layer!r} / {weight!r}")
    spread = con.execute(
        "SELECT min, max, p05, p95 FROM weights WHERE list_contains($ids, model_id) "
        f"AND {base.AT_PAIRED_LAYER} AND weight_name = $weight AND min IS NOT NULL",
        {k: params[k] for k in ("ids", "layer", "weight")},
    ).fetchall()
    if not spread:
        raise NoData(f"no finite values in {layer!r} / {weight!r}")
    params["lo"], params["hi"] = common_range(spread)
    rows = base.records(con, _HIST_FROM_VALUES if source == "values" else _HIST_MERGED, params)
    if not rows:
        raise NoData(f"no finite values in {layer!r} / {weight!r}")
    names = base.model_names(con, selection.ids)
    if source == "histograms":
        how = f"{bins} common bins, merged from the stored per-tensor histograms"
    elif stored == expected:
        how = f"{bins} common bins, exact from weight_values"
    else:
        how = f"{bins} common bins, from a sample of {stored:,} of {expected:,} values"
    clipped = any(r["bin"] in (-1, bins) for r in rows)
    if clipped:
        how += (
            f" over the common range [{params['lo']:.3g}, {params['hi']:.3g}]; "
            "the triangles at its ends count the values beyond it"
        )
    return histogram_figure(rows, names, bins, layer, weight, how, selection.note, others)


def histogram_figure(
    rows: list[dict[str, Any]],
    names: list[str],
    bins: int,
    layer: str,
    weight: str,
    how: str,
    *notes: str,
    what: str = "weights",
) -> alt.LayerChart:
    """Step lines of per-model fractions on common bins, overflow triangles at the ends."""
    pick = alt.selection_point(fields=["model"], bind="legend")
    zoom = alt.selection_interval(bind="scales", encodings=["x"])
    inside = alt.FieldRangePredicate(field="bin", range=[0, bins - 1])
    # The y axis is the in-range bins' (a model with half its values beyond the range would
    # otherwise flatten every line): an overflow marker above it sits at the top (clamped)
    # and is labelled with its fraction.
    top = max((r["fraction"] for r in rows if 0 <= r["bin"] < bins), default=0.0) or 1.0
    y_scale = alt.Scale(domain=[0, top * 1.05], clamp=True, nice=False)
    frame = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("x:Q", title=f"{weight} value", scale=alt.Scale(padding=8)),
        y=alt.Y("fraction:Q", title="fraction of values", axis=alt.Axis(format="%"), scale=y_scale),
        color=base.model_color(names, pick),
        opacity=alt.condition(pick, alt.value(0.95), alt.value(0.12)),
        tooltip=[
            alt.Tooltip("model:N"),
            alt.Tooltip("lo:Q", format=".4g", title="from"),
            alt.Tooltip("hi:Q", format=".4g", title="to"),
            alt.Tooltip("count:Q", format=",.4~f"),
            alt.Tooltip("fraction:Q", format=".2%"),
        ],
    )
    line = frame.transform_filter(inside).mark_line(interpolate="step", strokeWidth=1.6)
    markers = []
    for end, shape, align in ((-1, "triangle-left", "left"), (bins, "triangle-right", "right")):
        over = frame.transform_filter(alt.datum.bin == end)
        markers.append(over.mark_point(shape=shape, filled=True, size=70))
        markers.append(
            over.transform_filter(alt.datum.fraction > top * 1.05)
            .mark_text(align=align, dx=-8 if align == "right" else 8, dy=8, fontSize=10)
            .encode(text=alt.Text("fraction:Q", format=".0%"))
        )
    return (
        alt.layer(line, *markers)
        .add_params(pick, zoom)
        .properties(
            width=560,
            height=280,
            title=base.title(f"{layer} · {weight}: {what} across models", how, *notes),
        )
    )


#: How far beyond the typical models' p05–p95 the common range may reach, in widths of it.
FENCE = 3.0


def common_range(spread: Sequence[tuple[float, float, float | None, float | None]]) -> tuple:
    """[lo, hi] of the common bins from each model's (min, max, p05, p95).

    The union [min, max] unless a model reaches beyond a fence: the median p05 (p95) of the
    models minus (plus) FENCE times their median p05–p95 width. For bell-shaped weights the
    fence lies far outside every value (about 10 σ beyond p95), so the bins are numpy's over
    [min, max]; an outlier model, or a few huge weights, are cut at the fence instead of
    stretching the bins, and what lies beyond is counted apart.
    """
    lo = min(s[0] for s in spread)
    hi = max(s[1] for s in spread)
    pairs = [(s[0] if s[2] is None else s[2], s[1] if s[3] is None else s[3]) for s in spread]
    low = sorted(a for a, _ in pairs)
    high = sorted(b for _, b in pairs)
    width = _median(sorted(b - a for a, b in pairs))
    if width > 0:
        lo = max(lo, _median(low) - FENCE * width)
        hi = min(hi, _median(high) + FENCE * width)
    if not hi > lo:  # a constant tensor: one bin of width 1 around it
        return lo - 0.5, hi + 0.5
    return lo, hi


def _median(values: Sequence[float]) -> float:
    n = len(values)
    return (values[(n - 1) // 2] + values[n // 2]) / 2


# Bins: numpy.histogram's equal-width bins over [$lo, $hi], the last bin closed;
# (x - lo) * (bins / (hi - lo)) is numpy's own arithmetic for the bin number. Values below
# $lo are bin -1, above $hi bin $bins (drawn as overflow markers, only when there are some).
_HIST_FROM_VALUES = """
WITH v AS (
    SELECT model_id, value::DOUBLE AS x FROM weight_values
    WHERE list_contains($ids, model_id) AND {at_layer} AND weight_name = $weight
      AND isfinite(value)
),
c AS (
    SELECT model_id,
           CASE WHEN x < $lo THEN -1 WHEN x > $hi THEN $bins
                ELSE least(floor((x - $lo) * ($bins / ($hi - $lo))), $bins - 1) END::INTEGER
               AS bin,
           count(*) AS count
    FROM v GROUP BY ALL
),
t AS (SELECT model_id, count(*) AS total FROM v GROUP BY model_id),
grid AS (
    SELECT t.model_id, t.total, b.range::INTEGER AS bin FROM t, range(-1, $bins + 1) AS b
)
SELECT m.name AS model, g.bin,
       CASE WHEN g.bin = -1 THEN NULL ELSE $lo + g.bin * ($hi - $lo) / $bins END AS lo,
       CASE WHEN g.bin = $bins THEN NULL ELSE $lo + (g.bin + 1) * ($hi - $lo) / $bins END AS hi,
       $lo + (g.bin + 0.5) * ($hi - $lo) / $bins AS x,
       coalesce(c.count, 0)::DOUBLE AS count,
       coalesce(c.count, 0) / g.total AS fraction
FROM grid AS g
JOIN models AS m USING (model_id)
LEFT JOIN c USING (model_id, bin)
WHERE g.bin BETWEEN 0 AND $bins - 1 OR c.count > 0
ORDER BY m.name, g.bin
""".replace("{at_layer}", base.AT_PAIRED_LAYER)

# Merge: each stored bin [lo, hi) gives its count to the common bins in proportion to overlap
# (values are taken as uniform within a stored bin); the parts beyond [$lo, $hi] go to the
# overflow bins -1 and $bins.
_MERGE_TEMPLATE = """
WITH h AS ({source}),
t AS (SELECT model_id, sum(count) AS total FROM h GROUP BY model_id),
b AS (
    SELECT range::INTEGER AS bin,
           CASE WHEN range = -1 THEN -'inf'::DOUBLE
                ELSE $lo + range * ($hi - $lo) / $bins END AS blo,
           CASE WHEN range = $bins THEN 'inf'::DOUBLE
                ELSE $lo + (range + 1) * ($hi - $lo) / $bins END AS bhi
    FROM range(-1, $bins + 1)
),
c AS (
    SELECT h.model_id, b.bin,
           sum(CASE WHEN h.hi > h.lo
                    THEN h.count * (least(h.hi, b.bhi) - greatest(h.lo, b.blo)) / (h.hi - h.lo)
                    ELSE h.count END) AS count
    FROM h JOIN b ON h.lo < b.bhi AND h.hi > b.blo OR (h.lo = h.hi AND h.lo >= b.blo
         AND h.lo < b.bhi)
    GROUP BY ALL
)
SELECT m.name AS model, b.bin,
       CASE WHEN b.bin = -1 THEN NULL ELSE b.blo END AS lo,
       CASE WHEN b.bin = $bins THEN NULL ELSE b.bhi END AS hi,
       $lo + (b.bin + 0.5) * ($hi - $lo) / $bins AS x,
       coalesce(c.count, 0)::DOUBLE AS count,
       coalesce(c.count, 0) / t.total AS fraction
FROM t CROSS JOIN b
JOIN models AS m USING (model_id)
LEFT JOIN c USING (model_id, bin)
WHERE b.bin BETWEEN 0 AND $bins - 1 OR c.count > 1e-9
ORDER BY m.name, b.bin
"""


def merged_histogram_sql(source: str) -> str:
    """The merge above over `source`: a query of (model_id, lo, hi, count) rows, count > 0."""
    return _MERGE_TEMPLATE.replace("{source}", source)


_HIST_MERGED = merged_histogram_sql(
    "SELECT model_id, lo, hi, count FROM histograms "
    f"WHERE list_contains($ids, model_id) AND {base.AT_PAIRED_LAYER} AND weight_name = $weight "
    "AND count > 0"
)


# ----------------------------------------------------------------------------- heatmap


def _tensor_label(single_role: bool, layer: str = "w.layer_path") -> str:
    # With one role the weight name adds nothing for plain layers ("conv1"), but tells the
    # halves of a Bidirectional or the projections of an attention layer apart.
    if single_role:
        return (
            f"CASE WHEN w.weight_name = w.role THEN {layer} "
            f"ELSE {layer} || ' · ' || w.weight_name END"
        )
    return f"{layer} || ' · ' || w.weight_name"


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
    label = _tensor_label(len(roles) == 1, base.PAIRED_LAYER)
    where = (
        f"list_contains($ids, w.model_id) AND {base.layer_filter(layers, 'w.layer_path')} "
        "AND (len($roles) = 0 OR list_contains($roles, w.role))"
    )
    params = {"ids": ids, "roles": roles, **base.layer_params(layers)}
    # Rows grouped by architecture (largest group first), each group's tensors in network
    # order; a tensor name an earlier group has already placed stays where it is. Columns:
    # the models in the same groups. Layers named as the first model's they pair with.
    with base.paired_layers(con, ids):
        placed = con.execute(
            f"SELECT {label} AS tensor, m.arch_id, min(w.weight_index) "
            f"FROM weights AS w JOIN models AS m USING (model_id) {base.PAIRED_JOIN} "
            f"WHERE {where} GROUP BY ALL",
            params,
        ).fetchall()
        sizes = dict(
            con.execute(
                "SELECT m.arch_id, count(DISTINCT w.model_id) FROM weights AS w "
                f"JOIN models AS m USING (model_id) WHERE {where} GROUP BY ALL",
                params,
            ).fetchall()
        )
        home: dict[str, tuple] = {}  # tensor -> its place in its largest group
        for tensor, arch, index in placed:
            key = (-sizes[arch], arch, index, tensor)
            home[tensor] = min(home.get(tensor, key), key)
        order = sorted(home, key=home.__getitem__)[: base.ROW_BUDGET]
        if not order:
            raise NoData("no weight tensor matches the filters")
        having = con.execute(
            f"SELECT w.model_id, m.arch_id FROM weights AS w JOIN models AS m USING (model_id) "
            f"WHERE {where} GROUP BY ALL",
            params,
        ).fetchall()
        arch_of = dict(having)
        position = {m: k for k, m in enumerate(ids)}
        grouped = sorted(arch_of, key=lambda m: (-sizes[arch_of[m]], arch_of[m], position[m]))
        selection = base.keep(grouped, set(arch_of), base.ROW_BUDGET // len(order))
        params["ids"] = selection.ids
        params["tensors"] = order
        rows = base.records(
            con,
            f"""
            SELECT m.name AS model, {label} AS tensor, w.layer_path AS layer,
                   w.weight_name AS weight, l.class_name, w.shape::VARCHAR AS shape,
                   w."{stat}"::DOUBLE AS value
            FROM weights AS w JOIN models AS m USING (model_id)
            LEFT JOIN layers AS l USING (model_id, layer_path)
            {base.PAIRED_JOIN}
            WHERE {where} AND list_contains($tensors, {label})
            ORDER BY m.name, w.weight_index
            """,
            params,
        )
    names = base.model_names(con, selection.ids)
    scale = (
        alt.Scale(scheme="redblue", domainMid=0, reverse=True)
        if stat in _SIGNED_STATS
        else alt.Scale(scheme="viridis")
    )
    truncated = "" if len(order) < base.ROW_BUDGET else f"first {base.ROW_BUDGET} tensors"
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
            width=alt.Step(base.step(len(names))),
            height=alt.Step(base.step(len(order), room=700)),
            title=base.title(
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
    Without `models`, the models of the largest architecture group (same `arch_id`).
    """
    roles = list(roles or ())
    ids = model_ids(con, models)
    label = _tensor_label(len(roles) == 1, base.PAIRED_LAYER)
    where = (
        f"list_contains($ids, w.model_id) AND {base.layer_filter(layers, 'w.layer_path')} "
        "AND (len($roles) = 0 OR list_contains($roles, w.role)) AND w.p50 IS NOT NULL"
    )
    params = {"ids": ids, "roles": roles, **base.layer_params(layers)}
    having = con.execute(
        f"SELECT DISTINCT w.model_id, m.arch_id FROM weights AS w JOIN models AS m "
        f"USING (model_id) WHERE {where}",
        params,
    ).fetchall()
    qualifying, others = base.one_architecture(dict(having), explicit=bool(models))
    params["ids"] = [i for i in ids if i in qualifying]
    with base.paired_layers(con, params["ids"]):
        tensors = con.execute(
            f"SELECT {label} AS tensor FROM weights AS w {base.PAIRED_JOIN} WHERE {where} "
            "GROUP BY tensor ORDER BY avg(w.weight_index), tensor",
            params,
        ).fetchall()
        order = [t[0] for t in tensors][:MAX_PANELS]
        if not order:
            raise NoData("no weight tensor matches the filters")
        limit = min(MAX_SERIES, base.ROW_BUDGET // len(order))
        selection = base.keep(ids, qualifying, limit)
        params["ids"] = selection.ids
        params["tensors"] = order
        rows = base.records(
            con,
            f"""
            SELECT m.name AS model, {label} AS tensor, w.shape::VARCHAR AS shape,
                   w.p01, w.p05, w.p25, w.p50, w.p75, w.p95, w.p99
            FROM weights AS w JOIN models AS m USING (model_id)
            {base.PAIRED_JOIN}
            WHERE {where} AND list_contains($tensors, {label})
            ORDER BY m.name, w.weight_index
            """,
            params,
        )
    names = base.model_names(con, selection.ids)
    pick = alt.selection_point(fields=["model"], bind="legend")
    tooltip = [alt.Tooltip("model:N"), alt.Tooltip("tensor:N", title="layer")] + [
        alt.Tooltip(f"{p}:Q", format=".4g") for p in ("p01", "p05", "p25", "p50", "p75", "p95")
    ]
    tooltip.append(alt.Tooltip("p99:Q", format=".4g"))
    color = base.model_color(names, pick)
    frame = alt.Chart().encode(
        x=alt.X(
            "model:N",
            sort=names,
            title=None,
            axis=alt.Axis(labelAngle=-50, labelLimit=110, labelFontSize=9),
        ),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
        tooltip=tooltip,
    )
    width = max(60, min(240, 18 * len(names)))
    box = max(4, min(14, width // max(len(names), 1) - 2))
    layered = alt.layer(
        frame.mark_rule(strokeWidth=1).encode(
            y=alt.Y("p01:Q", title="weight value", scale=alt.Scale(zero=False)),
            y2="p99:Q",
            color=color,
        ),
        frame.mark_rule(strokeWidth=3).encode(y="p05:Q", y2="p95:Q", color=color),
        frame.mark_bar(size=box).encode(y="p25:Q", y2="p75:Q", color=color),
        frame.mark_tick(color="black", thickness=2, size=box).encode(y="p50:Q"),
        data=alt.Data(values=rows),
    ).properties(width=width, height=160)
    shown = "" if len(order) == len(tensors) else f"first {len(order)} of {len(tensors)} tensors"
    return (
        layered.facet(facet=alt.Facet("tensor:N", sort=order, title=None), columns=4)
        .add_params(pick)
        .resolve_scale(x="independent", y="independent")
        .properties(
            title=base.title(
                "Weight distributions per layer across models",
                "box p25–p75, thick whisker p05–p95, thin whisker p01–p99, line at the median",
                selection.note,
                others,
                shown,
            )
        )
    )
