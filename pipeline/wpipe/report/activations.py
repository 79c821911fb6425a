"""The report's "Layer outputs" section, present when `wpipe activations` has stored rows."""

from __future__ import annotations

from wpipe import charts
from wpipe.report.document import Builder, esc, html_table

MAX_RUN_ROWS = 100  # rows of the runs table
MAX_STATUS_ROWS = 50  # rows of the layers-that-could-not-run table
MAX_INPUT_SETS = 3  # input sets of real data that get their own figures


def chosen_sets(b: Builder, input_set: str | None) -> list[tuple[str, str, str]]:
    """(input_set, name, source) of the sets the figures show: the one asked for, else the
    sets of real data (most recent first, at most MAX_INPUT_SETS), else the latest probe."""
    found = charts.input_sets(b.con, b.ids)
    if input_set is not None:
        wanted = charts.input_set_of(b.con, b.ids, input_set)  # NoData names the stored ones
        return [s for s in found if s[0] == wanted]
    real = [s for s in found if s[2] != "random"]
    return real[:MAX_INPUT_SETS] or found[:1]


def activations_section(b: Builder, input_set: str | None = None) -> None:
    _, count = b.query("SELECT count(*) FROM activation_runs WHERE list_contains($ids, model_id)")
    if not count[0][0]:
        return
    s = b.section("activations", "Layer outputs")
    s.parts.append(
        "<p>Each model's layers run in numpy on sample inputs (<code>wpipe activations</code>; "
        "no TensorFlow, no code from the file). A unit is <em>dead</em> on an input set when its "
        "output is never above 0; <code>dead_units_by_activation</code> flags ReLU layers where "
        "most units are dead (threshold <code>dead_activation_frac</code> in "
        "<code>settings</code>); <code>saturated_units</code> flags tanh/sigmoid layers whose "
        "units mostly sit on a rail (<code>saturated_sample_frac</code>, "
        "<code>saturated_unit_frac</code>). Units die and saturate through their activations, "
        "which weights alone cannot show. Random probe inputs (source <code>random</code>) are "
        "not data.</p>"
    )
    columns, rows = b.query(
        "SELECT m.name AS model, r.input_name, r.source, r.n_samples, r.status, r.n_outputs, "
        "(SELECT string_agg(h.layer_path || ' ' || h.dead_units || '/' || h.n_units, ', ' "
        "ORDER BY h.layer_path) FROM activation_health AS h WHERE h.model_id = r.model_id "
        "AND h.input_set = r.input_set AND h.dead_units_by_activation) AS flagged, "
        "(SELECT string_agg(h.layer_path || ' ' || h.saturated_units || '/' || h.n_units, ', ' "
        "ORDER BY h.layer_path) FROM activation_health AS h WHERE h.model_id = r.model_id "
        "AND h.input_set = r.input_set AND h.saturated) AS saturated, r.reason "
        "FROM activation_runs AS r JOIN models AS m USING (model_id) "
        f"WHERE list_contains($ids, r.model_id) ORDER BY m.name, r.input_name LIMIT {MAX_RUN_ROWS}"
    )
    s.parts.append(html_table(columns, rows, "forward passes: model × input set"))
    sets = chosen_sets(b, input_set)
    left = [name for _, name, _ in charts.input_sets(b.con, b.ids) if name not in
            {n for _, n, _ in sets}]  # fmt: skip
    if left:
        s.parts.append(
            f'<p class="note">Figures of {esc(", ".join(n for _, n, _ in sets))}; not drawn: '
            f"{esc(', '.join(left))} (<code>wpipe report --input-set NAME</code>).</p>"
        )
    for chosen, name, source in sets:
        _, ran = b.query(
            "SELECT list(model_id ORDER BY model_id) FROM activation_runs "
            "WHERE list_contains($ids, model_id) AND input_set = $set",
            set=chosen,
        )
        ids = [i for i in b.ids if i in set(ran[0][0] or [])]
        probe = " (a random probe, not data)" if source == "random" else ""
        s.parts.append(f"<h3>On input set {esc(name)}{esc(probe)}</h3>")
        kw = {"input_set": chosen, "models": ids}
        b.figure(s, charts.dead_unit_heatmap, f"Dead-unit fraction per ReLU layer and model, "
                 f"on {name}", **kw)  # fmt: skip
        b.figure(s, charts.unit_activity, f"Per-unit activity of the layer with the most dead "
                 f"units, on {name}", input_set=chosen,
                 models=ids[: charts.MAX_SERIES])  # fmt: skip
        # not `models=`: named models are overlaid whatever their architecture
        b.figure(s, charts.activation_histograms, f"Output histograms of one layer across "
                 f"models, on {name}", input_set=chosen)  # fmt: skip
    columns, rows = b.query(
        "SELECT m.name AS model, s.layer_path, s.class_name, s.status, s.reason "
        "FROM activation_status AS s JOIN models AS m USING (model_id) "
        f"WHERE list_contains($ids, s.model_id) ORDER BY m.name LIMIT {MAX_STATUS_ROWS}"
    )
    if rows:
        s.parts.append(html_table(columns, rows, "layers that could not be computed"))
