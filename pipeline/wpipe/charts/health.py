"""Health charts: flagged tensors per model and health flag."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.base import NoData, model_ids

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
    params: dict[str, Any] = {"ids": ids, **base.layer_params(layers)}
    where = f"list_contains($ids, model_id) AND {base.layer_filter(layers)}"
    worst = base.run(
        con,
        f"SELECT model_id, sum(severity) AS severity, count(*) AS n FROM health_findings "
        f"WHERE {where} GROUP BY model_id ORDER BY severity DESC, any_value(model)",
        params,
    ).fetchall()
    if not worst:
        raise NoData("no health findings in the selected models")
    limit = base.ROW_BUDGET // len(HEALTH_FLAGS)
    kept = [r[0] for r in worst[:limit]]
    flags = ", ".join(f"('{flag}', {k})" for k, (flag, _, _) in enumerate(HEALTH_FLAGS))
    test = " ".join(f"WHEN '{flag}' THEN h.{column}" for flag, column, _ in HEALTH_FLAGS)
    rows = base.records(
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
    name = dict(base.ids_names(con, kept))
    order = [name[i] for i in kept]
    flag_order = [flag for flag, _, _ in HEALTH_FLAGS]
    high = max(r["tensors"] for r in rows)
    frame = alt.Chart(alt.Data(values=rows)).encode(
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
    heat = frame.mark_rect(stroke="white", strokeWidth=1).encode(
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
        chart = heat + frame.transform_filter(alt.datum.tensors > 0).mark_text(fontSize=10).encode(
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
        height=alt.Step(base.step(len(order), largest=20, room=900)),
        title=base.title(
            "Health findings per model",
            f"flagged tensors per flag (README: Weight health); {len(worst)} of {total} "
            "models have findings, the others are not drawn",
            shown,
        ),
    )
