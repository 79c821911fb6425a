"""Compute chart: parameters and multiply-adds per model, side by side (docs: compute)."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.anatomy import GROUP_MODELS_ABOVE  # as the parameters chart groups
from wpipe.charts.base import NoData, model_ids

MEASURES = ("parameters", "multiply-adds per sample")


def compute_costs(
    con: duckdb.DuckDBPyConnection, *, models: Sequence[str] | None = None
) -> alt.FacetChart:
    """Parameters and multiply-adds per sample of each model, side by side, on log axes.

    Multiply-adds at the input shape the config declares (models.macs); a model without one
    (no architecture, input shape not fixed, a layer wpipe does not compute) has no MAC bar and
    its reason is in the tooltip. Past GROUP_MODELS_ABOVE models, one bar per architecture.
    """
    ids = model_ids(con, models)
    grouped = len(ids) > GROUP_MODELS_ABOVE
    key = "arch_id" if grouped else "model_id"
    found = base.records(
        con,
        f"""
        SELECT {key} AS k, min(name) AS first, count(*) AS models,
               any_value(n_params) AS parameters, any_value(macs) AS macs,
               any_value(macs_status) AS macs_status
        FROM models WHERE list_contains($ids, model_id) AND n_params > 0
        GROUP BY {key} ORDER BY parameters DESC, first LIMIT {base.ROW_BUDGET // 2}
        """,
        {"ids": ids},
    )
    if not found:
        raise NoData("no model with weights in the selection")
    rows, order = [], []
    for r in found:
        label = f"{r['first']} ({r['models']} models)" if grouped else r["first"]
        order.append(label)
        for measure, value in zip(MEASURES, (r["parameters"], r["macs"]), strict=True):
            if value:
                rows.append({"model": label, "measure": measure, "value": value,
                             "macs_status": r["macs_status"]})  # fmt: skip
    without = sum(1 for r in found if not r["macs"])
    chart = (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            y=alt.Y(
                "model:N",
                sort=order,
                title=None,
                axis=alt.Axis(labels=len(order) <= 150, labelLimit=260),
            ),
            x=alt.X("value:Q", title=None, scale=alt.Scale(type="log"), axis=alt.Axis(format="~s")),
            color=alt.Color(
                "measure:N", sort=list(MEASURES), legend=None, scale=alt.Scale(scheme="tableau10")
            ),
            tooltip=[
                alt.Tooltip("model:N"),
                alt.Tooltip("measure:N"),
                alt.Tooltip("value:Q", format=","),
                alt.Tooltip("macs_status:N", title="multiply-adds"),
            ],
        )
        .properties(width=300, height=alt.Step(base.step(len(order), largest=16, room=1200)))
    )
    note = f"{without} of {len(found)} without multiply-adds (hover for why)" if without else ""
    return (
        chart.facet(column=alt.Column("measure:N", sort=list(MEASURES), title=None))
        .resolve_scale(x="independent")
        .properties(
            title=base.title(
                "Parameters and multiply-adds per sample"
                + (": one bar per architecture" if grouped else ""),
                "log axes; multiply-adds at the input shape the config declares (docs: compute)",
                note,
            )
        )
    )
