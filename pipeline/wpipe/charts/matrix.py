"""Matrix charts: a weight tensor drawn as a heatmap of its matrix view, one panel per model.

From `weight_tiles` (computed at ingest, so it works with `--values none`): a tensor of shape
(..., n) as the (prod(...), n) matrix, pooled to at most 64 × 64 cells when large (docs:
values), and pooled again here in DuckDB when the panels would pass the row budget.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.anatomy import GRU_CELLS, GRU_GATES, LSTM_CELLS, LSTM_GATES
from wpipe.charts.base import MAX_FACETS, NoData, model_ids

POOLS = {"mean": "mean", "peak": "peak"}  # --stat: the mean of a cell, or its largest |w|

# The tensors of one layer: the weight itself or, in a Bidirectional layer, both halves
# (forward/kernel, backward/kernel); the cell class behind a wrapper is in its config.
_TENSORS = f"""
SELECT w.model_id, w.layer_path, w.weight_name, w.shape, w.size, w.role, l.layer_index,
       CASE WHEN l.class_name IN ('Bidirectional', 'TimeDistributed')
            THEN json_extract_string(l.config, '$.layer.class_name')
            ELSE l.class_name END AS cell,
       {base.PAIRED_LAYER} AS ref_path
FROM weights AS w JOIN layers AS l USING (model_id, layer_path)
{base.PAIRED_JOIN}
WHERE list_contains($ids, w.model_id) AND len(w.shape) >= 2 AND w.size > 0
  AND (w.weight_name = $weight OR w.weight_name LIKE '%/' || $weight)
  AND EXISTS (SELECT 1 FROM weight_tiles AS t WHERE t.model_id = w.model_id
              AND t.layer_path = w.layer_path AND t.weight_name = w.weight_name)
"""


def weight_matrix(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
    weight: str = "kernel",
    stat: str = "mean",
    shared_scale: bool = False,
) -> alt.FacetChart:
    """A tensor as a heatmap of its matrix (conv kernels as (kh·kw·in) × out), one panel per model.

    LSTM (i, f, c, o) and GRU (z, r, h) kernels get gate separators and labels along their
    columns, a Bidirectional layer one panel per half. Large tensors are mean-pooled
    (`stat="peak"`: each cell's largest-|w| value). A diverging colour scale centred at 0
    per panel, with its own legend (models' magnitudes differ: one scale for all blanks the
    small ones); `shared_scale=True` gives every panel one. Without `models`, the largest
    architecture group holding the tensor; `layer` defaults to that group's layer with the
    most parameters (not the small output layer).
    """
    if stat not in POOLS:
        raise ValueError(f"stat must be one of {', '.join(POOLS)} for matrix; not {stat!r}")
    ids = model_ids(con, models)
    with base.paired_layers(con, ids):  # `layer` names the first model's layer
        return _matrix(con, ids, layer, weight, stat, explicit=bool(models), shared=shared_scale)


def _matrix(
    con: duckdb.DuckDBPyConnection, ids: list[str], layer: str | None, weight: str, stat: str,
    explicit: bool, shared: bool,
) -> alt.FacetChart:  # fmt: skip
    params: dict[str, Any] = {"ids": ids, "weight": weight}
    if layer is None:
        found = con.execute(
            f"SELECT ref_path FROM ({_TENSORS}) GROUP BY ref_path "
            "ORDER BY count(DISTINCT model_id) DESC, max(size) DESC, min(layer_index), ref_path "
            "LIMIT 1",
            params,
        ).fetchone()
        if found is None:
            raise NoData(_why_none(con, params))
        layer = found[0]
    params["layer"] = layer
    tensors = con.execute(
        f"SELECT t.model_id, m.arch_id, t.weight_name, t.shape, t.cell FROM ({_TENSORS}) AS t "
        "JOIN models AS m USING (model_id) WHERE t.ref_path = $layer ORDER BY t.weight_name",
        params,
    ).fetchall()
    if not tensors:
        raise NoData(f"no model has a {weight!r} tensor in layer {layer!r} in weight_tiles")
    qualifying, others = base.one_architecture({t[0]: t[1] for t in tensors}, explicit=explicit)
    per_model = Counter(t[0] for t in tensors)  # one or two (Bidirectional halves) a model
    halves = max(per_model[m] for m in qualifying)
    selection = base.keep(ids, qualifying, max(1, MAX_FACETS // halves))
    chosen = set(selection.ids)
    kept = [t for t in tensors if t[0] in chosen]
    params["ids"] = selection.ids
    n_cells = con.execute(
        f"SELECT count(*) FROM weight_tiles WHERE list_contains($ids, model_id) "
        f"AND {base.AT_PAIRED_LAYER} AND ({_weight_match('weight_name')})",
        params,
    ).fetchone()[0]
    gates = [_gate_marks(t) for t in kept]
    room = max(1, base.ROW_BUDGET - sum(len(g) for g in gates))
    params["k"] = max(1, math.ceil(math.sqrt(n_cells / room)))
    params["value"] = POOLS[stat]
    rows = base.records(con, _CELLS, params)
    names = dict(base.ids_names(con, selection.ids))
    for (model_id, _, weight_name, _, _), marks in zip(kept, gates, strict=True):
        panel = _panel(names[model_id], weight_name, weight)
        rows += [{**mark, "panel": panel} for mark in marks]
    look = (layer, weight, stat, params["k"], shared)
    return _figure(rows, kept, names, look, selection.note, others)


# Rows and columns are whole numbers: no 0.5 ticks on a narrow matrix.
_INTEGER_AXIS = alt.Axis(tickMinStep=1, format="d")


def _why_none(con: duckdb.DuckDBPyConnection, params: dict[str, Any]) -> str:
    """Why no tensor qualifies: none of that name in the models, or (only then the hint to
    ingest again) tensors without weight_tiles, which an older wpipe did not compute."""
    weight = params["weight"]
    untiled = con.execute(
        "SELECT count(*) FROM weights WHERE list_contains($ids, model_id) AND len(shape) >= 2 "
        f"AND size > 0 AND ({_weight_match('weight_name')})",
        params,
    ).fetchone()[0]
    if untiled:
        return (f"no {weight!r} tensor of 2 or more dimensions in weight_tiles "
                "(a database from an older wpipe: ingest again)")  # fmt: skip
    return f"no {weight!r} tensor of 2 or more dimensions in these models (--weight names one)"


def _weight_match(column: str) -> str:
    return f"{column} = $weight OR {column} LIKE '%/' || $weight"


def _panel(model: str, weight_name: str, weight: str) -> str:
    half = weight_name.removesuffix("/" + weight)
    return model if weight_name == weight else f"{model} · {half}"


# Cells pooled again by $k × $k when the panels would pass the budget: the mean of means
# weighted by cell size (exact for the finite values); the peak of peaks.
_CELLS = f"""
SELECT m.name AS model, t.weight_name, 'cell' AS kind,
       CASE WHEN t.weight_name = $weight THEN m.name
            ELSE m.name || ' · ' || regexp_replace(t.weight_name, '/[^/]*$', '') END AS panel,
       min(t.row_start) AS row_start, max(t.row_end) AS row_end,
       min(t.col_start) AS col_start, max(t.col_end) AS col_end,
       sum(t.mean * (t.row_end - t.row_start) * (t.col_end - t.col_start))
           / sum((t.row_end - t.row_start) * (t.col_end - t.col_start))
               FILTER (WHERE t.mean IS NOT NULL) AS mean,
       arg_max(coalesce(t.peak, t.mean), abs(coalesce(t.peak, t.mean))) AS peak,
       any_value(t.rows) AS rows, any_value(t.cols) AS cols,
       (max(t.row_end) - min(t.row_start)) * (max(t.col_end) - min(t.col_start)) AS weights
FROM weight_tiles AS t JOIN models AS m USING (model_id)
WHERE list_contains($ids, t.model_id) AND {base.AT_PAIRED_LAYER}
  AND ({_weight_match("t.weight_name")})
GROUP BY m.name, t.weight_name, t.tile_row // $k, t.tile_col // $k
ORDER BY m.name, t.weight_name, row_start, col_start
"""


def gate_columns(cell: str | None, cols: int) -> tuple[tuple[str, ...], int] | None:
    """(gate letters, units) when the last axis of a tensor of this cell class is G gate
    blocks of u units (keras_formats.md §6), else None."""
    gates = LSTM_GATES if cell in LSTM_CELLS else GRU_GATES if cell in GRU_CELLS else None
    if gates is None or cols % len(gates):
        return None
    return gates, cols // len(gates)


def _gate_marks(tensor: tuple) -> list[dict[str, Any]]:
    """Separator rules between gate blocks and a label over each block."""
    _, _, _, shape, cell = tensor
    found = gate_columns(cell, shape[-1])
    if found is None:
        return []
    gates, units = found
    marks = [
        {"kind": "gate", "col_start": g * units, "gate": gates[g]} for g in range(1, len(gates))
    ]
    marks += [
        {"kind": "label", "col_start": (g + 0.5) * units, "gate": gates[g]}
        for g in range(len(gates))
    ]
    return marks


def _figure(
    rows: list[dict[str, Any]],
    kept: list[tuple],
    names: dict[str, str],
    look: tuple[str, str, str, int, bool],
    *notes: str,
) -> alt.FacetChart:
    """`look`: layer, weight, stat, the pooling k and whether panels share a colour scale."""
    layer, weight, stat, k, shared = look
    cells = [r for r in rows if r["kind"] == "cell"]
    if not cells:
        raise NoData(f"no finite weights in {layer!r} / {weight!r}")
    high = max((abs(r[stat]) for r in cells if r[stat] is not None), default=0.0) or 1.0
    shape = kept[0][3]
    n_rows, n_cols = cells[0]["rows"], cells[0]["cols"]
    view = " × ".join(str(s) for s in shape[:-1])
    how = f"shape ({', '.join(map(str, shape))}) drawn as ({view}) × {shape[-1]}"
    if len(shape) == 2:
        how = f"shape ({n_rows}, {n_cols}): rows × columns"
    biggest = max(r["weights"] for r in cells)
    pooled = (
        f"each cell the {'mean' if stat == 'mean' else 'largest-|w| value'} of up to "
        f"{biggest:,} weights (pooled)"
        if biggest > 1
        else "one cell per weight"
    )
    order = list(dict.fromkeys(r["panel"] for r in cells))
    frame = alt.Chart()
    heat = (
        frame.transform_filter(alt.datum.kind == "cell")
        .mark_rect()
        .encode(
            x=alt.X(
                "col_start:Q",
                title="column (last axis)",
                scale=alt.Scale(nice=False),
                axis=_INTEGER_AXIS,
            ),
            x2="col_end:Q",
            y=alt.Y(
                "row_start:Q",
                title="row (other axes, C order)",
                scale=alt.Scale(nice=False, reverse=True),
                axis=_INTEGER_AXIS,
            ),
            y2="row_end:Q",
            color=alt.Color(
                f"{stat}:Q",
                title="weight" if stat == "mean" else "largest |w|, signed",
                scale=(
                    alt.Scale(scheme="redblue", reverse=True, domain=[-high, high])
                    if shared
                    else alt.Scale(scheme="redblue", reverse=True, domainMid=0)
                ),
                legend=alt.Legend(orient="bottom", gradientLength=160),
            ),
            tooltip=[
                alt.Tooltip("panel:N", title="model"),
                alt.Tooltip("row_start:Q", title="rows from"),
                alt.Tooltip("row_end:Q", title="to (excl.)"),
                alt.Tooltip("col_start:Q", title="columns from"),
                alt.Tooltip("col_end:Q", title="to (excl.)"),
                alt.Tooltip(f"{stat}:Q", format=".4g", title=stat),
            ],
        )
    )
    separators = (
        frame.transform_filter(alt.datum.kind == "gate")
        .mark_rule(color="black", strokeWidth=1.5)
        .encode(x="col_start:Q")
    )
    labels = (
        frame.transform_filter(alt.datum.kind == "label")
        .mark_text(baseline="bottom", dy=-3, fontSize=11, fontWeight="bold")
        .encode(x="col_start:Q", y=alt.value(0), text="gate:N")
    )
    width = 320
    height = max(60, min(360, round(width * n_rows / max(n_cols, 1))))
    gated = any(r["kind"] == "gate" for r in rows)
    return (
        alt.layer(heat, separators, labels, data=alt.Data(values=rows))
        .properties(width=width, height=height)
        .facet(
            facet=alt.Facet("panel:N", sort=order, title=None, header=alt.Header(labelPadding=20)),
            columns=min(3, len(order)),
        )
        .resolve_scale(
            x="independent", y="independent", color="shared" if shared else "independent"
        )
        .properties(
            title=base.title(
                f"{layer} · {weight}: the weight matrix",
                how,
                pooled + (f", pooled again {k} × {k} for the row budget" if k > 1 else ""),
                "gates i, f, c, o (LSTM) / z, r, h (GRU) along the columns" if gated else "",
                "one colour scale for every panel, centred at 0"
                if shared
                else "each panel its own colour scale (legend below it), centred at 0",
                *notes,
            )
        )
    )
