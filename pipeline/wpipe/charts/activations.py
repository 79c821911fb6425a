"""Layer-output charts (`wpipe activations`): one layer's output histograms overlaid across
models, a layer × model heatmap of the dead-unit fraction, per-unit activity of one layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.base import DEFAULT_BINS, MAX_BINS, MAX_SERIES, NoData, model_ids
from wpipe.charts.distributions import common_range, histogram_figure, merged_histogram_sql


def input_sets(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[tuple[str, str, str]]:
    """(input_set, name, source) of the sets the models ran on, the default first: real data
    before random probes (`--random`: not data), then the most recent."""
    return con.execute(
        "SELECT input_set, coalesce(any_value(input_name), input_set), any_value(source) "
        "FROM activation_runs WHERE list_contains($ids, model_id) AND status <> 'failed' "
        "GROUP BY input_set ORDER BY bool_or(source = 'random'), max(computed_at) DESC, "
        "count(*) DESC, input_set",
        {"ids": ids},
    ).fetchall()


def input_set_of(
    con: duckdb.DuckDBPyConnection,
    ids: list[str],
    input_set: str | None,
    drawable: str | None = None,
) -> str:
    """The input_set id named by `input_set` (its name, with or without .npy/.npz, or an id
    prefix), else the default of
    `input_sets`: the most recent set of real data (of those with an `activation_health` row
    meeting the SQL condition `drawable`, when given and one has)."""
    if input_set is not None:
        row = con.execute(
            "SELECT input_set FROM activation_runs WHERE (input_name = $ref "
            "OR regexp_replace(input_name, '\\.np[yz]$', '') = $ref "  # `blobs` for blobs.npy
            "OR starts_with(input_set, $ref)) AND list_contains($ids, model_id) "
            "GROUP BY input_set ORDER BY count(*) DESC LIMIT 1",
            {"ref": input_set, "ids": ids},
        ).fetchall()
        if not row:
            known = ", ".join(name for _, name, _ in input_sets(con, ids)) or "none"
            raise NoData(
                f"no activations of the selected models on input set {input_set!r}; stored: {known}"
            )
        return row[0][0]
    found = input_sets(con, ids)
    if not found:
        raise NoData("no layer outputs stored: run `wpipe activations` first")
    if drawable:
        usable = {r[0] for r in con.execute(
            f"SELECT DISTINCT input_set FROM activation_health WHERE {drawable} "
            "AND list_contains($ids, model_id)", {"ids": ids}).fetchall()}  # fmt: skip
        found = [s for s in found if s[0] in usable] or found
    return found[0][0]


def set_note(con: duckdb.DuckDBPyConnection, ids: list[str], input_set: str) -> str:
    """The subtitle naming the input set a figure shows, and the others it could show."""
    found = input_sets(con, ids)
    name, source = next(((n, src) for i, n, src in found if i == input_set), (input_set, None))
    note = f"input set {name}" + (" (a random probe, not data)" if source == "random" else "")
    others = [n for i, n, _ in found if i != input_set]
    if others:
        note += f"; also stored: {', '.join(others[:4])}{', …' if len(others) > 4 else ''}"
        note += " (--input-set NAME)"
    return note


def _input_name(con: duckdb.DuckDBPyConnection, input_set: str) -> str:
    row = con.execute(
        "SELECT any_value(input_name) FROM activation_runs WHERE input_set = ?", [input_set]
    ).fetchall()
    return row[0][0] if row and row[0][0] else input_set


def activation_histograms(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
    input_set: str | None = None,
    bins: int = DEFAULT_BINS,
) -> alt.LayerChart:
    """Output histograms of one layer overlaid across models, on common bins.

    `layer` defaults to the layer output present in the most models (the deepest on a tie:
    the largest call and position in the model come last). The stored 64-bin histograms are
    merged onto common bins spanning a robust common range (as for weights).
    """
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be between 1 and {MAX_BINS}")
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids, "set": input_set_of(con, ids, input_set)}
    if layer is None:
        layer = _default_layer(
            con,
            "SELECT layer_path FROM activations WHERE list_contains($ids, model_id) "
            "AND input_set = $set AND size > 0 GROUP BY layer_path "
            "ORDER BY count(*) DESC, avg(n_units) DESC, layer_path LIMIT 1",
            params,
        )
    params["layer"] = layer
    having = con.execute(
        "SELECT a.model_id, m.arch_id FROM activations AS a JOIN models AS m USING (model_id) "
        "WHERE list_contains($ids, a.model_id) AND a.input_set = $set AND a.layer_path = $layer "
        "AND a.call_index = 0 AND a.output_index = 0 AND a.min IS NOT NULL",
        params,
    ).fetchall()
    qualifying, others = base.one_architecture(dict(having), explicit=bool(models))
    selection = base.keep(ids, qualifying, min(MAX_SERIES, base.ROW_BUDGET // (bins + 2)))
    if not selection.ids:
        raise NoData(f"no model has an output of {layer!r} on this input set")
    params.update(ids=selection.ids, bins=bins)
    spread = con.execute(
        "SELECT min, max, p05, p95 FROM activations WHERE list_contains($ids, model_id) "
        "AND input_set = $set AND layer_path = $layer AND call_index = 0 AND output_index = 0",
        {k: params[k] for k in ("ids", "set", "layer")},
    ).fetchall()
    params["lo"], params["hi"] = common_range(spread)
    source = (
        "SELECT model_id, lo, hi, count FROM activation_histograms "
        "WHERE list_contains($ids, model_id) AND input_set = $set AND layer_path = $layer "
        "AND call_index = 0 AND output_index = 0 AND count > 0"
    )
    rows = base.records(con, merged_histogram_sql(source), params)
    names = base.model_names(con, selection.ids)
    how = (
        f"on {_input_name(con, params['set'])}: {bins} common bins merged from the stored "
        "histograms"
    )
    return histogram_figure(rows, names, bins, layer, "output", how,
                            set_note(con, ids, params["set"]), selection.note, others,
                            what="outputs")  # fmt: skip


def dead_unit_heatmap(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    input_set: str | None = None,
    rectifiers_only: bool = True,
) -> alt.Chart:
    """Layer × model heatmap of the fraction of units that never fire on an input set.

    Rows are layer outputs in model order, columns models; cells the dead-unit fraction of
    `activation_health` (ReLU layers only by default; other outputs have no natural zero).
    Outlined cells carry the `dead_units_by_activation` flag.
    """
    ids = model_ids(con, models)
    drawable = "rectifier AND n_units > 0" if rectifiers_only else None
    params: dict[str, Any] = {"ids": ids, "set": input_set_of(con, ids, input_set, drawable)}
    present = _present(con, "activation_health", params)
    layers = con.execute(
        "SELECT count(DISTINCT layer_path) FROM activation_health WHERE input_set = $set "
        "AND list_contains($ids, model_id)",
        params,
    ).fetchall()[0][0]
    selection = base.keep(ids, present, max(1, base.ROW_BUDGET // max(layers, 1)))
    if not selection.ids:
        raise NoData("no layer outputs for the selected models on this input set")
    params["ids"] = selection.ids
    rows = base.records(
        con,
        "SELECT model, layer_path, dead_units, n_units, dead_frac, dead_units_by_activation "
        "AS flagged, activation FROM activation_health WHERE input_set = $set "
        "AND list_contains($ids, model_id) AND call_index = 0 AND output_index = 0 "
        "AND n_units > 0" + (" AND rectifier" if rectifiers_only else "")
        + " ORDER BY model, layer_path",
        params,
    )  # fmt: skip
    if not rows:
        raise NoData(
            f"no ReLU layer outputs on {_input_name(con, params['set'])} (pass "
            "rectifiers_only=False for every layer); " + set_note(con, ids, params["set"])
        )
    names = base.model_names(con, selection.ids)
    order = [r[0] for r in base.run(con, "SELECT layer_path FROM activations WHERE input_set = "
             "$set AND list_contains($ids, model_id) GROUP BY layer_path ORDER BY "
             "min(rowid)", params).fetchall()]  # fmt: skip
    cells = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("model:N", sort=names, title=None, axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("layer_path:N", sort=order, title="layer"),
        tooltip=[
            "model:N", "layer_path:N", "activation:N", "dead_units:Q", "n_units:Q",
            alt.Tooltip("dead_frac:Q", format=".0%"), "flagged:N",
        ],
    )  # fmt: skip
    heat = cells.mark_rect().encode(
        color=alt.Color(
            "dead_frac:Q",
            title="dead units",
            scale=alt.Scale(domain=[0, 1], scheme="reds"),
            legend=alt.Legend(format="%"),
        )
    )
    flagged = cells.transform_filter(alt.datum.flagged).mark_rect(
        fill=None, stroke="black", strokeWidth=2
    )
    label = cells.mark_text(fontSize=10).encode(text=alt.Text("dead_frac:Q", format=".0%"))
    n = len(names)
    return alt.layer(heat, flagged, label).properties(
        width=max(120, min(900, 48 * n)),
        height=max(60, 22 * len(order)),
        title=base.title(
            f"units that never fire on {_input_name(con, params['set'])}",
            "fraction of each layer's units with output ≤ 0 on every sample and position; "
            "outlined: dead_units_by_activation",
            set_note(con, ids, params["set"]),
            selection.note,
        ),
    )


def unit_activity(
    con: duckdb.DuckDBPyConnection,
    *,
    layer: str | None = None,
    models: Sequence[str] | None = None,
    input_set: str | None = None,
) -> alt.Chart:
    """Per-unit activity of one layer: the fraction of samples × positions where each unit's
    output is above 0, per model (a unit at 0 is dead on the input set).

    `layer` defaults to the ReLU layer with the most dead units across the models."""
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids, "set": input_set_of(con, ids, input_set)}
    if layer is None:
        layer = _default_layer(
            con,
            "SELECT layer_path FROM activation_health WHERE input_set = $set "
            "AND list_contains($ids, model_id) AND n_units > 0 GROUP BY layer_path "
            "ORDER BY bool_or(rectifier) DESC, sum(dead_units) DESC, layer_path LIMIT 1",
            params,
        )
    params["layer"] = layer
    present = _present(con, "activation_units", params, "AND layer_path = $layer")
    n_units = con.execute(
        "SELECT max(unit) + 1 FROM activation_units WHERE input_set = $set AND layer_path = $layer",
        {k: params[k] for k in ("set", "layer")},
    ).fetchall()[0][0]
    if not present or not n_units:
        raise NoData(f"no per-unit activity of {layer!r} on this input set")
    selection = base.keep(ids, present, min(MAX_SERIES, max(1, base.ROW_BUDGET // n_units)))
    params["ids"] = selection.ids
    rows = base.records(
        con,
        "SELECT m.name AS model, u.unit, u.active_frac, u.mean, u.max, u.dead "
        "FROM activation_units AS u JOIN models AS m USING (model_id) "
        "WHERE u.input_set = $set AND u.layer_path = $layer AND list_contains($ids, u.model_id) "
        "AND u.call_index = 0 AND u.output_index = 0 ORDER BY m.name, u.unit",
        params,
    )
    names = base.model_names(con, selection.ids)
    frame = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("unit:O", title="unit"),
        tooltip=[
            "model:N",
            "unit:O",
            alt.Tooltip("active_frac:Q", format=".1%"),
            alt.Tooltip("mean:Q", format=".4g"),
            alt.Tooltip("max:Q", format=".4g"),
            "dead:N",
        ],
    )
    share = alt.Scale(domain=[0, 1])
    # A dead unit's bar has no height: a full-height red cell marks it, so a layer where 15
    # of 16 units died reads as red, not as an empty panel.
    dead = (
        frame.transform_filter(alt.datum.dead)
        .transform_calculate(whole="1")
        .mark_bar(color="#b22222", opacity=0.35)
        .encode(y=alt.Y("whole:Q", scale=share, title="active (output > 0)"))
    )
    bars = frame.mark_bar().encode(
        y=alt.Y(
            "active_frac:Q", title="active (output > 0)", axis=alt.Axis(format="%"), scale=share
        ),
        color=alt.condition(alt.datum.dead, alt.value("#b22222"), alt.value("#4c78a8")),
    )
    cross = (
        frame.transform_filter(alt.datum.dead)
        .transform_calculate(middle="0.5")
        .mark_text(text="×", color="#b22222", fontSize=13, fontWeight="bold")
        .encode(y=alt.Y("middle:Q", scale=share))
    )
    panel = alt.layer(dead, bars, cross).properties(
        width=max(120, min(700, 14 * n_units)), height=90
    )
    n_dead = sum(1 for r in rows if r["dead"])
    return panel.facet(row=alt.Row("model:N", sort=names, title=None)).properties(
        title=base.title(
            f"{layer}: per-unit activity on {_input_name(con, params['set'])}",
            f"red cell with ×: a dead unit (never above 0 on the input set); {n_dead} of "
            f"{len(rows)} units drawn are dead",
            set_note(con, ids, params["set"]),
            selection.note,
        )
    )


def _default_layer(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> str:
    """The layer a chart draws when none is named: the first row of `sql`."""
    found = base.run(con, sql, params).fetchall()
    if not found:
        raise NoData("no layer outputs for the selected models")
    return found[0][0]


def _present(con: duckdb.DuckDBPyConnection, table: str, params: dict, extra: str = "") -> set:
    """model_ids with rows in `table` for the input set (and `extra` conditions)."""
    sql = f"SELECT DISTINCT model_id FROM {table} WHERE input_set = $set {extra}"
    return {r[0] for r in base.run(con, sql, params).fetchall()}
