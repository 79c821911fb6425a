"""Lineage charts: what fine-tunes changed relative to their base, and whether they agree.

From `updates` and `update_pairs` (`wpipe lineage set CHILD BASE`; docs: lineage).
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import duckdb

from wpipe.charts import base
from wpipe.charts.base import NoData

MAX_CHILDREN = 40  # children of one base drawn (an N×N grid past that is unreadable)


def _base_of(con: duckdb.DuckDBPyConnection, models: Sequence[str] | None) -> str:
    """The base to draw: the first given model that has fine-tunes (or whose base is named),
    else the base with the most fine-tunes."""
    rows = con.execute(
        "SELECT base_id, count(*) AS n FROM lineage GROUP BY base_id ORDER BY n DESC, base_id"
    ).fetchall()
    if not rows:
        raise NoData("no model has a named base: `wpipe lineage set CHILD BASE` names one")
    bases = dict(rows)
    parents = dict(con.execute("SELECT child_id, base_id FROM lineage").fetchall())
    for model in models or ():
        if model in bases:
            return model
        if model in parents:
            return parents[model]
    if models:
        raise NoData("none of the given models is a base or a fine-tune with a named base")
    return rows[0][0]


def _name(con: duckdb.DuckDBPyConnection, model_id: str) -> str:
    return base.model_names(con, [model_id])[0]


def update_agreement(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
) -> alt.Chart:
    """Fine-tunes of one base × fine-tunes: the cosine of their weight updates.

    Whole-model cosines (or one `layer`'s) of τ = W_child − W_base from `update_agreement`;
    1 means the children moved the same way, 0 unrelated directions, −1 opposite ones. The
    sign-conflict rate (weights both changed, pushed in opposite directions) is in the tooltip.
    """
    base_id = _base_of(con, models)
    where = "layer_path = $layer" if layer else "layer_path IS NULL"
    rows = base.records(
        con,
        f"SELECT model_a, model_b, cosine, sign_conflict_rate FROM update_agreement "
        f"WHERE base_id = $base AND {where} ORDER BY model_a, model_b",
        {"base": base_id, "layer": layer},
    )
    names = sorted({r["model_a"] for r in rows})[:MAX_CHILDREN]
    rows = [r for r in rows if r["model_a"] in names and r["model_b"] in names]
    if not rows:
        raise NoData("fewer than two fine-tunes of this base have computed updates")
    frame = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("model_b:N", sort=names, title=None, axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("model_a:N", sort=names, title=None),
        tooltip=[
            alt.Tooltip("model_a:N"), alt.Tooltip("model_b:N"),
            alt.Tooltip("cosine:Q", format=".3f"),
            alt.Tooltip("sign_conflict_rate:Q", format=".1%", title="sign conflicts"),
        ],
    )  # fmt: skip
    heat = frame.mark_rect().encode(
        color=alt.Color(
            "cosine:Q",
            title="cosine of updates",
            scale=alt.Scale(scheme="redblue", domain=[-1, 1]),
        )
    )
    text = frame.mark_text(fontSize=10).encode(text=alt.Text("cosine:Q", format=".2f"))
    chart = heat + text if len(names) <= 16 else heat
    scope = f"layer {layer}" if layer else "whole model"
    return chart.properties(
        width=alt.Step(base.step(len(names), largest=48, room=700)),
        height=alt.Step(base.step(len(names), largest=48, room=700)),
        title=base.title(
            f"Agreement of the fine-tunes of {_name(con, base_id)}",
            f"cosine of their weight updates τ = W_child − W_base ({scope}; docs: lineage)",
        ),
    )


def update_sizes(
    con: duckdb.DuckDBPyConnection, *, models: Sequence[str] | None = None
) -> alt.Chart:
    """Per layer of a base, how far each fine-tune moved it: ‖τ‖ / ‖W_base‖ (log scale).

    Layers in the base's network order; an untouched (frozen) layer is drawn at the bottom
    rail as a hollow marker, since 0 has no place on a log axis.
    """
    base_id = _base_of(con, models)
    rows = base.records(
        con,
        """
        SELECT m.name AS model, u.base_layer_path AS layer, any_value(l.layer_index) AS position,
               sqrt(sum(u.update_l2 ^ 2)) / nullif(sqrt(sum(u.base_l2 ^ 2)), 0) AS rel_update,
               bool_and(u.untouched) AS untouched
        FROM updates AS u
        JOIN models AS m ON m.model_id = u.child_id
        LEFT JOIN layers AS l ON l.model_id = u.base_id AND l.layer_path = u.base_layer_path
        WHERE u.base_id = $base
        GROUP BY m.name, u.base_layer_path
        ORDER BY position, model
        """,
        {"base": base_id},
    )
    if not rows:
        raise NoData("no updates computed for this base's fine-tunes")
    moved = [r["rel_update"] for r in rows if r["rel_update"] and not r["untouched"]]
    floor = min(moved) / 10 if moved else 1e-6
    for r in rows:
        r["shown"] = floor if r["untouched"] or not r["rel_update"] else r["rel_update"]
    layers = [r["layer"] for r in sorted(rows, key=lambda r: r["position"] or 0)]
    layers = list(dict.fromkeys(layers))
    names = sorted({r["model"] for r in rows})[: base.MAX_SERIES]
    rows = [r for r in rows if r["model"] in names]
    frame = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("layer:N", sort=layers, title="layer of the base (network order)",
                axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("shown:Q", title="‖τ‖ / ‖W_base‖", scale=alt.Scale(type="log")),
        color=base.model_color(names),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("layer:N"),
                 alt.Tooltip("rel_update:Q", format=".3g"), alt.Tooltip("untouched:N")],
    )  # fmt: skip
    lines = frame.mark_line(opacity=0.6)
    moved_points = frame.transform_filter(~alt.datum.untouched).mark_point(size=50, filled=True)
    frozen = frame.transform_filter(alt.datum.untouched).mark_point(size=60, filled=False)
    points = moved_points + frozen
    return (lines + points).properties(
        width=alt.Step(base.step(len(layers), largest=60, room=900)),
        height=300,
        title=base.title(
            f"How far the fine-tunes of {_name(con, base_id)} moved each layer",
            "relative size of the update per layer; hollow markers: untouched (frozen) layers",
        ),
    )


def update_spectrum(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    layer: str | None = None,
    weight: str | None = None,
) -> alt.Chart:
    """Singular values of one layer's update τ, per fine-tune: a low-rank (LoRA-like) update
    drops to float32 noise after its rank.

    Default: the kernel with the largest update. Values are relative to each update's largest
    (σ_i / σ_1, log scale), at most the 64 largest.
    """
    base_id = _base_of(con, models)
    pick = base.run(
        con,
        "SELECT base_layer_path, weight_name FROM updates WHERE base_id = $base "
        "AND singular_values IS NOT NULL AND len(singular_values) > 0 "
        "AND ($layer IS NULL OR base_layer_path = $layer) "
        "AND ($weight IS NULL OR weight_name = $weight) "
        "ORDER BY (weight_name = 'kernel') DESC, update_l2 DESC LIMIT 1",
        {"base": base_id, "layer": layer, "weight": weight},
    ).fetchone()
    if pick is None:
        raise NoData("no update with a spectrum for this base (vectors and huge tensors have none)")
    rows = base.records(
        con,
        """
        SELECT m.name AS model, s.i AS index, s.v / u.singular_values[1] AS relative, s.v AS value
        FROM updates AS u JOIN models AS m ON m.model_id = u.child_id,
             unnest(u.singular_values) WITH ORDINALITY AS s(v, i)
        WHERE u.base_id = $base AND u.base_layer_path = $layer AND u.weight_name = $weight
          AND u.singular_values[1] > 0
        ORDER BY model, index
        """,
        {"base": base_id, "layer": pick[0], "weight": pick[1]},
    )
    if not rows:
        raise NoData("the chosen update is zero in every fine-tune")
    names = sorted({r["model"] for r in rows})[: base.MAX_SERIES]
    rows = [r for r in rows if r["model"] in names and r["relative"] and r["relative"] > 0]
    chart = alt.Chart(alt.Data(values=rows)).mark_line(point=True).encode(
        x=alt.X("index:Q", title="singular value (largest first)",
                axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("relative:Q", title="σ_i / σ_1", scale=alt.Scale(type="log")),
        color=base.model_color(names),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("index:Q"),
                 alt.Tooltip("value:Q", format=".3g", title="σ_i")],
    )  # fmt: skip
    return chart.properties(
        width=500,
        height=300,
        title=base.title(
            f"Spectrum of the update of {pick[0]} · {pick[1]}",
            f"fine-tunes of {_name(con, base_id)}; a rank-r update falls to float32 noise "
            "after σ_r (docs: lineage)",
        ),
    )
