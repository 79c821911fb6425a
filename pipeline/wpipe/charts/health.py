"""Health charts: findings per model and health flag, from `health_findings` (weight tensors
and layer outputs alike), the one table the report's summary and `wpipe health` read too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.base import NoData, model_ids

#: Health flags as `health_findings` names them, worst first. A flag not listed here (a rule
#: added later) is drawn after these, by name: the chart takes its flags from the findings.
HEALTH_FLAGS = (
    "nan_or_inf",
    "exploding",
    "dead_units",
    "dead_units_by_activation",
    "saturating_forget_gate",
    "sparse",
    "stale",
)

# One row per finding and flag it carries (a tensor can carry several: `exploding, sparse`).
_FLAGGED = (
    "SELECT *, unnest(string_split(flags, ', ')) AS flag FROM health_findings "
    "WHERE list_contains($ids, model_id)"
)


def flag_order(flags: Sequence[str]) -> list[str]:
    """The flags in HEALTH_FLAGS order, unknown ones after them by name."""
    known = {f: k for k, f in enumerate(HEALTH_FLAGS)}
    return sorted(set(flags), key=lambda f: (known.get(f, len(known)), f))


def flag_counts(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[tuple[str, int, int]]:
    """(flag, findings, models) for every flag that occurs among the models, worst first:
    the numbers of the report's summary and the health chart, from `health_findings`."""
    rows = base.run(
        con,
        f"SELECT flag, count(*), count(DISTINCT model_id) FROM ({_FLAGGED}) GROUP BY flag",
        {"ids": ids},
    ).fetchall()
    found = {flag: (n, m) for flag, n, m in rows}
    return [(flag, *found[flag]) for flag in flag_order(list(found))]


def health_overview(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
) -> alt.Chart:
    """Health findings as a model × flag heatmap: findings per model and flag.

    From `health_findings` (weight tensors and, after `wpipe activations`, layer outputs;
    thresholds in the settings table; docs: health-rules), one column per flag that occurs.
    Only models with a finding are drawn, worst first (by summed severity); when more than
    the row budget allows, the worst ones.
    """
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids, **base.layer_params(layers)}
    flagged = f"SELECT * FROM ({_FLAGGED}) WHERE {base.layer_filter(layers)}"
    worst = base.run(
        con,
        "SELECT model_id FROM health_findings WHERE list_contains($ids, model_id) AND "
        f"{base.layer_filter(layers)} GROUP BY model_id "
        "ORDER BY sum(severity) DESC, any_value(model)",
        params,
    ).fetchall()
    if not worst:
        raise NoData("no health findings in the selected models")
    flags = flag_order([r[0] for r in base.run(con, f"SELECT DISTINCT flag FROM ({flagged})",
                                                params).fetchall()])  # fmt: skip
    kept = [r[0] for r in worst[: base.ROW_BUDGET // len(flags)]]
    rows = base.records(
        con,
        f"""
        WITH hit AS (
            SELECT model_id, flag, count(*) AS findings,
                   -- dead units: of the dead-unit flags only (a sparse tensor has a count too)
                   sum(dead_count) FILTER (WHERE flag LIKE 'dead_units%') AS dead_units,
                   sum(TRY_CAST(split_part(dead, '/', 2) AS BIGINT))
                       FILTER (WHERE flag LIKE 'dead_units%') AS n_units,
                   list(layer_path || coalesce(' · ' || weight_name, '')
                        || coalesce(' on ' || input_name, '') ORDER BY layer_path)[1:3] AS at
            FROM ({flagged}) WHERE list_contains($kept, model_id)
            GROUP BY ALL),
        f AS (SELECT unnest($flags) AS flag),
        m AS (SELECT model_id, name FROM models WHERE list_contains($kept, model_id))
        SELECT m.name AS model, f.flag, coalesce(hit.findings, 0) AS findings,
               CASE WHEN hit.dead_units > 0
                    THEN hit.dead_units || ' of ' || hit.n_units END AS dead,
               array_to_string(hit.at, ', ')
                   || CASE WHEN hit.findings > 3 THEN ', …' ELSE '' END AS "where"
        FROM m CROSS JOIN f LEFT JOIN hit USING (model_id, flag)
        ORDER BY m.name, f.flag
        """,
        {**params, "kept": kept, "flags": flags},
    )
    name = dict(base.ids_names(con, kept))
    order = [name[i] for i in kept]
    high = max(r["findings"] for r in rows)
    frame = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X(
            "flag:N",
            sort=flags,
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
            alt.Tooltip("findings:Q", title="findings"),
            alt.Tooltip("dead:N", title="dead units"),
            alt.Tooltip("where:N"),
        ],
    )
    # Empty cells grey, flagged ones on a colour scale starting at 1 (a scale with 0 in it
    # would give a one-entry "0" legend where nothing is flagged).
    heat = frame.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.condition(
            alt.datum.findings == 0,
            alt.value("#f2f2f2"),
            alt.Color(
                "findings:Q",
                title="findings",
                scale=alt.Scale(scheme="orangered", domain=[0, max(high, 1)]),
                legend=alt.Legend(format="d", tickMinStep=1),
            ),
        )
    )
    chart = heat
    if len(order) <= 60:
        chart = heat + frame.transform_filter(alt.datum.findings > 0).mark_text(fontSize=10).encode(
            text="findings:Q",
            color=alt.condition(
                alt.datum.findings > high * 0.6, alt.value("white"), alt.value("black")
            ),
        )
    shown = (
        ""
        if len(kept) == len(worst)
        else f"the {len(kept)} of {len(worst)} models with the most severe findings"
    )
    return chart.properties(
        width=alt.Step(64),
        height=alt.Step(base.step(len(order), largest=20, room=900)),
        title=base.title(
            "Health findings per model",
            f"flagged tensors and layer outputs per flag (docs: health-rules); {len(worst)} "
            f"of {len(ids)} models have findings, the others are not drawn",
            shown,
        ),
    )
