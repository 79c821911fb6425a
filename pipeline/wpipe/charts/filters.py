"""Filter images: the first convolution layer's kernels drawn as small pictures, a grid per model.

From `weight_tiles`, which keeps every weight of a tensor of up to 16,384 elements (a 7×7×3×64
first layer has 9,408), so it works with `--values none`. A kernel (kh, kw, in, out) is the
(kh·kw·in) × out matrix: row (i·kw + j)·in + c, column f holds pixel (i, j), channel c of
filter f.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.analyse.tiles import TILE_EXACT
from wpipe.charts import base
from wpipe.charts.base import MAX_FACETS, NoData, model_ids

MAX_CHANNELS = 4  # input channels drawn per filter when they are not RGB

# The first 2-D convolution (by layer order) of each model, with its kernel shape.
_FIRST_CONV = """
SELECT model_id, arg_min(layer_path, layer_index) AS layer_path,
       arg_min(shape, layer_index) AS shape
FROM (
    SELECT w.model_id, w.layer_path, w.shape, l.layer_index
    FROM weights AS w JOIN layers AS l USING (model_id, layer_path)
    WHERE list_contains($ids, w.model_id) AND w.role = 'kernel' AND len(w.shape) = 4
      AND regexp_full_match(l.class_name, '(Conv2D|Convolution2D)')
      AND (l.layer_path = $layer OR $layer IS NULL)
)
GROUP BY model_id
"""


def filter_images(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
    shared_scale: bool = False,
) -> alt.FacetChart:
    """The first conv layer's filters as images: RGB when it has 3 input channels, else one
    tile per channel; one grid per model with its own colour scale (0 is mid-grey / white),
    or one for all with `shared_scale=True`.

    Filters that stayed noise or died show at a glance. Without `models`, the largest
    architecture group; `layer` picks another 2-D convolution.
    """
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids, "layer": layer}
    found = base.run(
        con,
        f"SELECT f.model_id, m.arch_id, f.layer_path, f.shape FROM ({_FIRST_CONV}) AS f "
        "JOIN models AS m USING (model_id)",
        params,
    ).fetchall()
    if not found:
        raise NoData("no 2-D convolution kernel in the selected models")
    small = {r[0]: r for r in found if math.prod(r[3]) <= TILE_EXACT}
    if not small:
        raise NoData(f"the first conv kernels have more than {TILE_EXACT:,} weights")
    qualifying, others = base.one_architecture(
        {k: r[1] for k, r in small.items()}, explicit=bool(models)
    )
    selection = base.keep(ids, qualifying, MAX_FACETS)
    kernels = [small[i] for i in selection.ids]
    _, _, _, (kh, kw, channels, n_filters) = kernels[0]
    rgb = channels == 3
    drawn = 1 if rgb else min(channels, MAX_CHANNELS)
    per_filter = kh * kw * (3 if rgb else drawn)
    shown = max(1, min(n_filters, base.ROW_BUDGET // (len(kernels) * per_filter)))
    params.update(ids=selection.ids, layers=[k[2] for k in kernels], filters=shown, channels=drawn,
                  shared=shared_scale)  # fmt: skip
    high = base.run(con, f"SELECT max(abs(t.mean)) FROM ({_PIXELS}) AS t", params).fetchone()[0]
    if high is None:
        raise NoData("no finite weights in the first conv kernels")
    rows = base.records(con, _RGB if rgb else _CHANNEL_TILES, params)
    names = base.model_names(con, selection.ids)
    layout = (shown, n_filters, rgb, shared_scale)
    return _figure(rows, names, kernels, layout, selection.note, others)


# Every weight of the chosen kernels with its pixel (i, j), channel c and filter f; the
# first $filters filters and $channels channels (all three for RGB).
_PIXELS = """
SELECT m.name AS model, t.layer_path, t.mean, t.col_start AS f,
       t.row_start // (w.shape[2] * w.shape[3]) AS i,
       (t.row_start // w.shape[3]) % w.shape[2] AS j,
       t.row_start % w.shape[3] AS c, w.shape[1] AS kh, w.shape[2] AS kw
FROM weight_tiles AS t JOIN models AS m USING (model_id)
JOIN weights AS w USING (model_id, layer_path, weight_name)
WHERE list_contains($ids, t.model_id) AND list_contains($layers, t.layer_path)
  AND t.weight_name = 'kernel' AND t.col_start < $filters
  AND (w.shape[3] = 3 OR t.row_start % w.shape[3] < $channels)
"""


def _channel(c: int) -> str:
    return f"max(mean) FILTER (WHERE c = {c})"


def _byte(c: int) -> str:
    # -high .. high onto 0 .. 255, 0 at mid-grey (high: the model's largest |w|, or every
    # model's with $shared); a missing (non-finite) value is grey
    return (
        f"round(255 * greatest(0, least(1, 0.5 + 0.5 * coalesce({_channel(c)}, 0) "
        "/ any_value(s.high))))"
    )


# One pixel per (filter, i, j): channels 0, 1, 2 as red, green, blue.
_RGB = f"""
WITH p AS ({_PIXELS}),
grid AS (SELECT ceil(sqrt($filters))::INTEGER AS n),
s AS (SELECT model, coalesce(nullif(CASE WHEN $shared THEN max(max(abs(mean))) OVER ()
                                         ELSE max(abs(mean)) END, 0), 1) AS high
      FROM p GROUP BY model)
SELECT model, f AS filter, i, j,
       (f % grid.n) * (any_value(kw) + 1) + j AS x, (f // grid.n) * (any_value(kh) + 1) + i AS y,
       printf('#%02x%02x%02x', {_byte(0)}::INTEGER, {_byte(1)}::INTEGER, {_byte(2)}::INTEGER)
           AS rgb,
       {_channel(0)} AS r, {_channel(1)} AS g, {_channel(2)} AS b
FROM p JOIN s USING (model), grid GROUP BY model, f, i, j, grid.n ORDER BY model, f, i, j
"""

# One tile per (filter, channel): filters down, channels across.
_CHANNEL_TILES = f"""
WITH p AS ({_PIXELS})
SELECT model, f AS filter, c AS channel, i, j, c * (kw + 1) + j AS x, f * (kh + 1) + i AS y,
       mean AS value
FROM p ORDER BY model, f, c, i, j
"""


def _figure(
    rows: list[dict[str, Any]],
    names: list[str],
    kernels: list[tuple],
    layout: tuple[int, int, bool, bool],
    *notes: str,
) -> alt.FacetChart:
    """`layout`: filters shown, filters in all, RGB or not, one shared colour scale."""
    shown, n_filters, rgb, shared = layout
    _, _, layer, (kh, kw, channels, _) = kernels[0]
    layers = sorted({k[2] for k in kernels})
    x_max = max(r["x"] for r in rows) + 1
    y_max = max(r["y"] for r in rows) + 1
    pixel = max(2, min(14, 300 // max(x_max, y_max, 1)))
    if rgb:
        color = alt.Color("rgb:N", scale=None)
        tooltip = [alt.Tooltip(f"{c}:Q", format=".4g") for c in ("r", "g", "b")]
        how = "channels 0, 1, 2 as red, green, blue; 0 is mid-grey"
    else:
        high = max(abs(r["value"]) for r in rows if r["value"] is not None) or 1.0
        color = alt.Color(
            "value:Q",
            title="weight",
            scale=alt.Scale(scheme="redblue", reverse=True, domain=[-high, high])
            if shared
            else alt.Scale(scheme="redblue", reverse=True, domainMid=0),
            legend=alt.Legend(orient="bottom", gradientLength=120),
        )
        tooltip = [alt.Tooltip("channel:Q"), alt.Tooltip("value:Q", format=".4g")]
        drawn = min(channels, MAX_CHANNELS)
        how = f"one row per filter, one tile per input channel (the first {drawn} of {channels})"
    chart = (
        alt.Chart(alt.Data(values=rows))
        .transform_calculate(x2="datum.x + 1", y2="datum.y + 1")
        .mark_rect()
        .encode(
            x=alt.X("x:Q", axis=None, scale=alt.Scale(domain=[0, x_max], nice=False)),
            x2="x2:Q",
            y=alt.Y("y:Q", axis=None, scale=alt.Scale(domain=[0, y_max], nice=False, reverse=True)),
            y2="y2:Q",
            color=color,
            tooltip=[alt.Tooltip("model:N"), alt.Tooltip("filter:Q"), *tooltip],
        )
        .properties(width=pixel * x_max, height=pixel * y_max)
    )
    cut = f"the first {shown} of {n_filters} filters (row budget)" if shown < n_filters else ""
    where = layer if len(layers) == 1 else ", ".join(layers)
    scales = "one colour scale for every model" if shared else "each model its own colour scale"
    return (
        chart.facet(facet=alt.Facet("model:N", sort=names, title=None), columns=min(3, len(names)))
        .resolve_scale(color="shared" if shared or rgb else "independent")
        .properties(
            title=base.title(
                f"{where}: first convolution filters ({kh}×{kw}, {channels} input channels)",
                f"{how}; {scales}",
                cut,
                *notes,
            )
        )
    )
