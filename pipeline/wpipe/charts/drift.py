"""Drift and distance charts: checkpoint-to-checkpoint drift, model-to-model distance."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.base import MAX_FACETS, NoData, model_ids

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
    architectures, `folder#.keras` or `folder#arch_id.keras` when it holds series of two
    formats): the fewest trailing folder names that keep the labels apart."""
    split = {}
    for name in names:
        folder, _, arch = name.partition("#")
        parts = [p for p in folder.replace("\\", "/").split("/") if p] or [folder]
        arch, dot, fmt = arch.partition(".")  # arch ids are hex: a dot starts the format
        split[name] = (parts, f"#{arch[:8]}{dot}{fmt}" if arch or fmt else "")
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
# (consecutive checkpoints, docs: checkpoints); k = 0 is the first checkpoint.
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
    params.update(base.layer_params(layers))
    points = f"""
        SELECT ld.*, p.k, p.last_k, p.epoch, p.step, l.layer_index
        FROM layer_drift AS ld
        JOIN pos AS p ON p.series = ld.series AND p.model_id = ld.model_b
        LEFT JOIN layers AS l ON l.model_id = ld.model_b AND l.layer_path = ld.layer_path
        WHERE list_contains($series, ld.series) AND list_contains($ids, ld.model_a)
          AND list_contains($ids, ld.model_b) AND {base.layer_filter(layers, "ld.layer_path")}
          AND ld.rel_l2 IS NOT NULL
    """
    found = base.run(
        con,
        f"{_CHAIN} SELECT layer_path, min(layer_index) AS position FROM ({points}) "
        "GROUP BY layer_path ORDER BY position NULLS LAST, layer_path",
        params,
    ).fetchall()
    if not found:
        raise NoData("no layer with drift matches the filters")
    layer_order = base.thin([r[0] for r in found], MAX_LAYERS)
    per_series = {
        name: (n_rows, n_layers)
        for name, n_rows, n_layers in base.run(
            con,
            f"{_CHAIN} SELECT series, count(*), count(DISTINCT layer_path) FROM ({points}) "
            "WHERE list_contains($layers, layer_path) GROUP BY series",
            {**params, "layers": layer_order},
        ).fetchall()
    }
    chosen = [s for s in chosen if s[0] in per_series]
    shown = base.thin(chosen, MAX_FACETS)
    params["series"] = [s[0] for s in shown]
    # Every `stride`-th checkpoint (and each series' last) when the rows overflow the budget;
    # rounding up and the last checkpoint add at most two checkpoints to each series.
    n_rows = sum(per_series[s[0]][0] for s in shown)
    room = max(1, base.ROW_BUDGET - 2 * sum(per_series[s[0]][1] for s in shown))
    stride = max(1, math.ceil(n_rows / room))
    kinds = base.run(
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
    rows = base.records(
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
        y_kind = "log scale"
    else:  # a stale layer (no change at all) must still show, at 0
        low, high = min(positive or [1e-3]), max(positive or [1e-3])
        y_scale = alt.Scale(type="symlog", constant=low / 2, domainMin=0)
        y_kind = "log scale, linear near 0"
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
                title=f"relative change ||B − A|| / ||A|| ({y_kind})",
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
        title=base.title(
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
    selection = base.keep(same, set(same), MAX_DISTANCE_MODELS)
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
    names = base.model_names(con, selection.ids)
    name = dict(zip(selection.ids, names, strict=True))
    cells = {(a, b): d for path, a, b, d in found if path == layer}
    rows = []
    for a in selection.ids:
        for b in selection.ids:
            d = 0.0 if a == b else cells.get((a, b), cells.get((b, a)))
            rows.append({"a": name[a], "b": name[b], "distance": base.json_value(d)})
    finite = [r["distance"] for r in rows if r["distance"] is not None]
    if len(finite) <= len(selection.ids):
        raise NoData(f"layer {layer!r}: no pair of models shares its tensors")
    high = max(finite)
    frame = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("b:N", sort=names, title=None, axis=alt.Axis(labelAngle=-40, labelLimit=160)),
        y=alt.Y("a:N", sort=names, title=None, axis=alt.Axis(labelLimit=200)),
        tooltip=[
            alt.Tooltip("a:N", title="model"),
            alt.Tooltip("b:N", title="other"),
            alt.Tooltip("distance:Q", format=".4g"),
        ],
    )
    heat = frame.mark_rect().encode(
        color=alt.Color(
            "distance:Q", title="distance", scale=alt.Scale(scheme="viridis", domainMin=0)
        )
    )
    text = frame.mark_text(fontSize=10).encode(
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
        title=base.title(f"{layer}: distance between models", *notes),
    )
