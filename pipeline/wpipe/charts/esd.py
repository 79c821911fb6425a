"""Spectral density charts: the eigenvalue histogram of a weight matrix on log–log axes with
its fitted power law, as WeightWatcher draws it, from `spectra` and `eigenvalues`.

The histogram has log-spaced bins; its height is the density of the ESD (count / (number of
eigenvalues × bin width)). The fit is the power law of `spectra` on the tail λ ≥ xmin:
p(λ) = (α − 1) / xmin · (λ / xmin)^−α, scaled by the tail's share of the eigenvalues so that
it sits on the histogram: a straight line of slope −α, from xmin (marked) to λmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.base import MAX_FACETS, MAX_PANELS, NoData, model_ids

ESD_BINS = 30  # log-spaced bins of an ESD
FIT_POINTS = 12  # points drawn along a fitted power law

# Matrices with a power-law fit, one row each; `key` names it in one string.
_FITTED = """
SELECT s.model_id, s.layer_path, s.weight_name, s.matrix, s.alpha, s.xmin, s.D,
       s.num_pl_spikes, s.num_evals, s.lambda_max, l.layer_index, m.name, m.arch_id,
       concat_ws('|', s.model_id, s.layer_path, s.weight_name, s.matrix) AS key
FROM spectra AS s JOIN models AS m USING (model_id)
JOIN layers AS l USING (model_id, layer_path)
WHERE list_contains($ids, s.model_id) AND s.alpha IS NOT NULL AND s.xmin > 0
  AND s.num_evals > 0 AND s.lambda_max > 0
"""


def spectral_density(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
    weight: str = "kernel",
    matrix: str | None = None,
) -> alt.LayerChart:
    """Eigenvalue spectrum (ESD) of one layer on log–log axes with its power-law fit, overlaid
    across models (at most 6); α and the fit's KS distance D in the legend, xmin marked.

    Without `models`, the largest architecture group; `layer` defaults to the fitted matrix with
    the most eigenvalues, `matrix` to its most common one (full, pooled, gate:i, …).
    """
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids, "weight": weight}
    fitted = base.run(con, f"SELECT * FROM ({_FITTED}) WHERE weight_name = $weight", params)
    found = _dicts(fitted)
    if layer is not None:
        found = [f for f in found if f["layer_path"] == layer]
    if matrix is not None:
        found = [f for f in found if f["matrix"] == matrix]
    if not found:
        raise NoData(f"no {weight!r} matrix with a power-law fit (spectra) in the selection")
    qualifying, others = base.one_architecture(
        {f["model_id"]: f["arch_id"] for f in found}, explicit=bool(models)
    )
    found = [f for f in found if f["model_id"] in qualifying]
    if layer is None:
        layer = max(found, key=lambda f: (f["num_evals"], -f["layer_index"]))["layer_path"]
    found = [f for f in found if f["layer_path"] == layer]
    if matrix is None:
        counts: dict[str, int] = {}
        for f in found:
            counts[f["matrix"]] = counts.get(f["matrix"], 0) + 1
        matrix = min(counts, key=lambda m: (-counts[m], m))
    by_model = {f["model_id"]: f for f in found if f["matrix"] == matrix}
    selection = base.keep(ids, set(by_model), min(MAX_FACETS, base.ROW_BUDGET // 60))
    chosen = [by_model[i] for i in selection.ids]
    for f in chosen:
        f["series"] = f"{f['name']} · α = {f['alpha']:.2f}, D = {f['D']:.3f}"
        f["group"] = "all"
    rows = _esd_rows(con, chosen)
    order = [f["series"] for f in chosen]
    color = alt.Color("series:N", sort=order, title="model · fit", legend=_legend())
    chart = _layers(rows, color, alt.Stroke("series:N", sort=order, legend=None))
    return chart.properties(
        width=520,
        height=320,
        title=base.title(
            f"{layer} · {weight} ({matrix}): empirical spectral density",
            "eigenvalues of WᵀW in log-spaced bins (log–log axes); the line is the fitted "
            "power law from xmin (dashed) on, slope −α",
            selection.note,
            others,
        ),
    )


def spectral_density_layers(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
) -> alt.FacetChart:
    """ESD small multiples over the layers of one model: each fitted matrix's eigenvalue
    histogram with its power law, α and D in the panel title (the first model given, else
    the one with the most fitted matrices)."""
    ids = model_ids(con, models)
    params: dict[str, Any] = {"ids": ids[:1] if models else ids, **base.layer_params(layers)}
    found = _dicts(
        base.run(
            con,
            f"SELECT * FROM ({_FITTED}) WHERE {base.layer_filter(layers)} "
            "ORDER BY layer_index, weight_name, matrix",
            params,
        )
    )
    if not found:
        raise NoData("no matrix with a power-law fit (spectra) in the selected model")
    if not models:  # the model with the most fitted matrices, the first by name on a tie
        counts: dict[str, int] = {}
        for f in found:
            counts[f["model_id"]] = counts.get(f["model_id"], 0) + 1
        best = max(ids, key=lambda i: counts.get(i, 0))
        found = [f for f in found if f["model_id"] == best]
    room = max(1, base.ROW_BUDGET // (ESD_BINS + FIT_POINTS + 1))
    chosen = base.thin(found, min(MAX_PANELS, room))
    for f in chosen:
        label = f["layer_path"] if f["weight_name"] == "kernel" else f"{f['layer_path']} · "
        label += "" if f["weight_name"] == "kernel" else f["weight_name"]
        label += "" if f["matrix"] in ("full", "pooled") else f" ({f['matrix']})"
        f["group"] = f"{label}: α = {f['alpha']:.2f}, D = {f['D']:.3f}"
        f["series"] = f["name"]
    rows = _esd_rows(con, chosen)
    order = list(dict.fromkeys(f["group"] for f in chosen))
    shown = "" if len(chosen) == len(found) else f"{len(chosen)} of {len(found)} matrices"
    return (
        _layers(rows, alt.value("#4c78a8"), alt.value("#4c78a8"))
        .properties(width=220, height=150)
        .facet(facet=alt.Facet("group:N", sort=order, title=None), columns=4)
        .resolve_scale(x="independent", y="independent")
        .properties(
            title=base.title(
                f"{chosen[0]['name']}: empirical spectral density per layer",
                "eigenvalue histograms (log–log), fitted power law from xmin (dashed), slope −α",
                shown,
            )
        )
    )


def _dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


# Log-spaced bins over the positive eigenvalues of each group (the models overlaid, or one
# panel); only non-empty bins (a log axis has no 0).
_HIST = """
WITH s(key, grp, series, num_evals) AS (SELECT * FROM (VALUES $rows_placeholder)),
e AS (
    SELECT s.grp, s.series, s.num_evals, log10(v.value) AS x
    FROM eigenvalues AS v JOIN s
      ON concat_ws('|', v.model_id, v.layer_path, v.weight_name, v.matrix) = s.key
    WHERE v.value > 0
),
r0 AS (SELECT grp, min(x) AS lo, max(x) AS hi FROM e GROUP BY grp),
r AS (
    SELECT grp, CASE WHEN hi > lo THEN lo ELSE lo - 0.5 END AS lo,
           CASE WHEN hi > lo THEN hi ELSE hi + 0.5 END AS hi
    FROM r0
),
c AS (
    SELECT e.grp, e.series, any_value(e.num_evals) AS num_evals,
           least(floor((e.x - r.lo) * ($bins / (r.hi - r.lo))), $bins - 1)::INTEGER AS bin,
           count(*) AS count
    FROM e JOIN r USING (grp) GROUP BY ALL
)
SELECT 'hist' AS kind, c.grp AS "group", c.series, c.bin, c.count,
       pow(10, r.lo + c.bin * (r.hi - r.lo) / $bins) AS lam_lo,
       pow(10, r.lo + (c.bin + 1) * (r.hi - r.lo) / $bins) AS lam_hi,
       c.count / (c.num_evals * (lam_hi - lam_lo)) AS density
FROM c JOIN r USING (grp)
ORDER BY "group", c.series, c.bin
"""


def _esd_rows(con: duckdb.DuckDBPyConnection, chosen: list[dict[str, Any]]) -> list[dict]:
    """Histogram rows from `eigenvalues`, then the fitted line and the xmin marker of each."""
    values = ", ".join(f"($k{n}, $g{n}, $s{n}, $n{n})" for n in range(len(chosen)))
    params: dict[str, Any] = {"bins": ESD_BINS}
    for n, f in enumerate(chosen):
        params.update({f"k{n}": f["key"], f"g{n}": f["group"], f"s{n}": f["series"]})
        params[f"n{n}"] = f["num_evals"]
    rows = base.records(con, _HIST.replace("$rows_placeholder", values), params)
    for f in chosen:
        rows += fit_points(f)
    return rows


def fit_points(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The power law of a spectra row as points from xmin to λmax, and the xmin marker."""
    alpha, xmin, top = f["alpha"], f["xmin"], max(f["lambda_max"], f["xmin"])
    share = f["num_pl_spikes"] / f["num_evals"]
    points = []
    for k in range(FIT_POINTS):
        lam = xmin * (top / xmin) ** (k / (FIT_POINTS - 1))
        density = share * (alpha - 1) / xmin * (lam / xmin) ** (-alpha)
        points.append({"kind": "fit", "lam": lam, "density": density})
    points.append({"kind": "xmin", "lam": xmin})
    return [
        {**p, "group": f["group"], "series": f["series"], "alpha": alpha, "xmin": xmin}
        for p in points
    ]


def _legend() -> alt.Legend:
    return alt.Legend(orient="bottom", direction="vertical", labelLimit=400)


def _layers(rows: list[dict[str, Any]], color: Any, stroke: Any) -> alt.LayerChart:
    hist = [r for r in rows if r["kind"] == "hist"]
    if not hist:
        raise NoData("no positive eigenvalues to draw")
    floor = min(r["density"] for r in hist) / 3
    for r in hist:
        r["floor"] = floor
    x = alt.X("lam_lo:Q", title="eigenvalue λ (log scale)", scale=alt.Scale(type="log"))
    y = alt.Y(
        "density:Q", title="density (log scale)", scale=alt.Scale(type="log", domainMin=floor)
    )
    bars = (
        alt.Chart()
        .transform_filter(alt.datum.kind == "hist")
        .mark_rect(fillOpacity=0.12, strokeOpacity=0.9, strokeWidth=1.2)
        .encode(
            x=x,
            x2="lam_hi:Q",
            y=y,
            y2="floor:Q",
            color=color,
            stroke=stroke,
            tooltip=[
                alt.Tooltip("series:N", title="model"),
                alt.Tooltip("lam_lo:Q", format=".4g", title="λ from"),
                alt.Tooltip("lam_hi:Q", format=".4g", title="to"),
                alt.Tooltip("count:Q", title="eigenvalues"),
                alt.Tooltip("density:Q", format=".4g"),
            ],
        )
    )
    fit = (
        alt.Chart()
        .transform_filter(alt.datum.kind == "fit")
        .mark_line(strokeWidth=2.2, clip=True)  # a steep fit runs below the histogram
        .encode(
            x=alt.X("lam:Q", scale=alt.Scale(type="log")),
            y="density:Q",
            color=color,
            detail="series:N",
            tooltip=[alt.Tooltip("series:N", title="model"), alt.Tooltip("alpha:Q", format=".3f")],
        )
    )
    xmin = (
        alt.Chart()
        .transform_filter(alt.datum.kind == "xmin")
        .mark_rule(strokeDash=[5, 3], strokeWidth=1.4)
        .encode(
            x=alt.X("lam:Q", scale=alt.Scale(type="log")),
            color=color,
            tooltip=[alt.Tooltip("series:N", title="model"), alt.Tooltip("xmin:Q", format=".4g")],
        )
    )
    return alt.layer(bars, fit, xmin, data=alt.Data(values=rows))
