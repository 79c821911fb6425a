"""Metric charts: a weight statistic against a validation metric, with Spearman ρ."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.base import NoData, model_ids
from wpipe.charts.distributions import STATS
from wpipe.compare import SPEARMAN_SQL, correlate

#: Model-level statistics (`model_summary` columns) that `metric_scatter` can draw, the ones
#: `wpipe correlate` ranks.
MODEL_STATS = ("n_params", "max_abs", "zero_frac", "near_zero_frac", "nonfinite_count")

# y: one value per model (the mean, should two CSV files give a model the same metric);
# duplicates (duplicate_models) are left out, as `wpipe correlate` leaves them out.
_METRIC = """
SELECT model_id, avg(value) AS y FROM model_metrics
WHERE metric = $metric AND list_contains($ids, model_id)
  AND model_id NOT IN (SELECT model_id FROM duplicate_models)  -- a copy is not a second model
GROUP BY model_id
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
    _, n, rho = base.run(con, f"{joined}, {SPEARMAN_SQL}", params).fetchone() or ("", 0, None)
    if not n:
        raise NoData(f"no model has both {metric!r} and {label!r}")
    kept = {r[0] for r in base.run(con, f"{joined} SELECT model_id FROM j", params).fetchall()}
    selection = base.keep(ids, kept, base.ROW_BUDGET)
    rows = base.records(
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
            # padding keeps a point at the edge of the data whole; greedy overlap removal
            # and a few ticks keep long labels (0.00012, 3.2e+4) apart
            x=alt.X(
                "x:Q",
                title=label,
                scale=alt.Scale(zero=False, padding=12),
                axis=alt.Axis(tickCount=5, labelOverlap="greedy", labelFlush=False),
            ),
            y=alt.Y(
                "y:Q",
                title=metric,
                scale=alt.Scale(zero=False, padding=12),
                axis=alt.Axis(tickCount=6, labelOverlap="greedy"),
            ),
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
            title=base.title(f"{metric} vs {label} · Spearman ρ = {rho_text} (n = {n})", *notes),
        )
    )
    return chart.add_params(pick) if "color" in encoding else chart
