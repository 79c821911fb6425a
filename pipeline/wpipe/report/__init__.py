"""The report: one self-contained HTML file with the tables and figures of a database.

Everything is inlined (Vega, Vega-Lite and vega-embed from vl-convert, the chart specs, the
CSS), so the file opens offline. Every text that comes from a model file (names, paths, layer
names, messages) is HTML-escaped, and chart specs are embedded as JSON with `<`, `>` and `&`
escaped, so a layer named `<script>…</script>` is shown as text and never run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import duckdb

from wpipe import charts
from wpipe.report.activations import activations_section
from wpipe.report.document import Builder, esc, html_table, page

MAX_TABLE_ROWS = 200  # rows of the models table (the rest are counted, not listed)
MAX_ARCH_ROWS = 50  # rows of the architecture groups table
SUMMARY_GROUPS = 8  # architecture groups named in the summary
MAX_ERROR_ROWS = 100  # rows of the ingest errors table
MAX_SERIES_ROWS = 50  # rows of the checkpoint series table
MAX_GROUPS = 3  # architecture groups that get their own figures
MAX_RECURRENT_LAYERS = 3  # recurrent layers that get a gate figure
TOP_N = 15  # rows of the "largest / most near-zero" comparison tables
MAX_FINDINGS = 100  # rows of the health findings table
MAX_DRIFT_SERIES = 4  # checkpoint series that get their own drift figure
MAX_METRICS = 3  # metrics that get a correlation table and a scatter
TOP_CORRELATIONS = 10  # rows of each metric's correlation table


def build_report(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    title: str = "wpipe report",
    input_set: str | None = None,
) -> str:
    """The report as one HTML document (models: names, paths or id prefixes; default all;
    input_set: the `wpipe activations` set of the layer-output figures, default each set of
    real data)."""
    ids = charts.model_ids(con, models)
    b = Builder(con, ids)
    # A summary first, then the figures; the long tables come last and are bounded (the
    # full data is one `wpipe query` away), so a report of thousands of models still opens
    # with what matters.
    _summary(b)
    if ids:
        _figures(b)
        _health(b)
        activations_section(b, input_set)
        _drift(b)
        _metrics(b)
        _comparisons(b)
        _models_table(b)
        _architectures(b)
    _errors(b)
    return page(b, title)


def write_report(
    con: duckdb.DuckDBPyConnection,
    path: str | os.PathLike,
    *,
    models: Sequence[str] | None = None,
    input_set: str | None = None,
) -> Path:
    """Write `build_report(con)` to `path`, atomically (a temporary file, then a rename)."""
    path = Path(path)
    text = build_report(con, models=models, input_set=input_set)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- sections


def _full_table(sql: str) -> str:
    """A note saying how to get every row of a bounded table."""
    return f'<p class="note">Every row: <code>wpipe query {esc(repr(sql))}</code>.</p>'


def _summary(b: Builder) -> None:
    s = b.section("overview", "Summary")
    _, totals = b.query(
        "SELECT count(*), count(DISTINCT arch_id), coalesce(sum(n_params), 0), "
        "coalesce(sum(n_tensors), 0) FROM models WHERE list_contains($ids, model_id)"
    )
    n_models, n_arch, n_params, n_tensors = totals[0]
    n_errors = b.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0]
    s.parts.append(
        f"<p>{esc(n_models)} models in {esc(n_arch)} architecture groups: "
        f"{esc(n_tensors)} weight tensors, {esc(n_params)} parameters. "
        f"{esc(n_errors)} files could not be read"
        + (' (see <a href="#errors">ingest errors</a>).' if n_errors else ".")
        + "</p>"
    )
    if not n_models:
        s.parts.append('<p class="note">No models are ingested; run <code>wpipe ingest</code>.</p>')
        return
    s.parts.append(_findings_summary(b))
    _, rows = b.query(
        """
        SELECT arch_id, count(*) AS models, any_value(n_params), list(name ORDER BY name)[1:3]
        FROM models WHERE list_contains($ids, model_id)
        GROUP BY arch_id ORDER BY count(*) DESC, min(name)
        """
    )
    labels = arch_labels(b.con, [r[0] for r in rows[:SUMMARY_GROUPS]])
    table = [
        (labels[arch], n, params, ", ".join(names) + (", …" if n > len(names) else ""))
        for arch, n, params, names in rows[:SUMMARY_GROUPS]
    ]
    shown = f"the {len(table)} largest of " if len(rows) > len(table) else ""
    s.parts.append(
        html_table(
            ["architecture (weighted layers)", "models", "parameters each", "models, by name"],
            table,
            f"{shown}{len(rows)} architecture groups",
        )
    )
    s.parts.append(
        '<p class="note">Figures follow; the long tables (<a href="#models">models</a>, '
        '<a href="#architectures">architecture groups</a>) are at the end.</p>'
    )


def _findings_summary(b: Builder) -> str:
    """One sentence per kind of finding: health flags, checkpoint series, metrics."""
    flags = charts.flag_counts(b.con, b.ids)
    if flags:
        found = "; ".join(
            f"{esc(f)} in {esc(m)} models ({esc(n)} {'finding' if n == 1 else 'findings'})"
            for f, n, m in flags
        )
        health = f'<a href="#health">Health findings</a>: {found}.'
    else:
        health = "No health findings: no tensor or layer output crosses a threshold."
    series = charts.drift_series(b.con, b.ids)
    drift = f' <a href="#drift">{len(series)} checkpoint series</a> with drift.' if series else ""
    metrics = charts.metrics(b.con, b.ids)
    more = len(metrics) - MAX_METRICS
    shown = ", ".join(metrics[:MAX_METRICS]) + (f" and {more} more" if more > 0 else "")
    ranked = f' <a href="#metrics">Metrics</a>: {esc(shown)}.' if metrics else ""
    return f"<p>{health}{drift}{ranked}</p>"


def arch_labels(con: duckdb.DuckDBPyConnection, arch_ids: Sequence[str]) -> dict[str, str]:
    """A readable name for each architecture group: its model class and weighted layers in
    order, runs of one class counted (`Sequential: Conv2D ×2, Dense ×2`), not the hash."""
    rows = con.execute(
        """
        WITH first AS (
            SELECT arch_id, arg_min(model_id, name) AS model_id, any_value(model_class) AS cls
            FROM models WHERE list_contains($arch, arch_id) GROUP BY arch_id)
        SELECT f.arch_id, f.cls, list(l.class_name ORDER BY l.layer_index)
        FROM first AS f LEFT JOIN layers AS l
          ON l.model_id = f.model_id AND l.n_params > 0 AND l.class_name IS NOT NULL
        GROUP BY f.arch_id, f.cls
        """,
        {"arch": list(arch_ids)},
    ).fetchall()
    labels = {}
    for arch, cls, classes in rows:
        runs: list[list] = []
        for name in classes or []:
            if name is None:
                continue
            if runs and runs[-1][0] == name:
                runs[-1][1] += 1
            else:
                runs.append([name, 1])
        layers = ", ".join(f"{n} ×{k}" if k > 1 else n for n, k in runs[:8])
        layers += ", …" if len(runs) > 8 else ""
        label = f"{cls}: {layers}" if cls and layers else cls or layers
        labels[arch] = label or f"no architecture ({arch[:8]})"
    return labels


def _models_table(b: Builder) -> None:
    s = b.section("models", "Models")
    columns, rows = b.query(
        f"""
        SELECT model, format, keras_version, model_class, n_layers, n_tensors, n_params,
               n_trainable, n_non_trainable, file_mb, max_abs, near_zero_frac, nonfinite_count,
               arch_id
        FROM model_summary WHERE list_contains($ids, model_id) ORDER BY model
        LIMIT {MAX_TABLE_ROWS}
        """
    )
    n_models = len(b.ids)
    more = n_models - len(rows)
    caption = f"models (the first {len(rows)} of {n_models} by name)" if more else "models"
    s.parts.append(html_table(columns, rows, caption))
    if more:
        s.parts.append(_full_table("SELECT * FROM model_summary"))


def _architectures(b: Builder) -> None:
    s = b.section("architectures", "Architecture groups")
    s.parts.append(
        "<p>Models with the same <code>arch_id</code> have the same weighted layers and "
        "weight shapes, so their tensors align one to one.</p>"
    )
    _, rows = b.query(
        """
        SELECT arch_id, count(*) AS models, any_value(n_params), any_value(n_layers),
               list(name ORDER BY name)[1:4]
        FROM models WHERE list_contains($ids, model_id)
        GROUP BY arch_id ORDER BY count(*) DESC, min(name)
        """
    )
    labels = arch_labels(b.con, [r[0] for r in rows[:MAX_ARCH_ROWS]])
    table = [
        (
            labels[arch],
            arch,
            n,
            params,
            layers,
            ", ".join(names) + (", …" if n > len(names) else ""),
        )
        for arch, n, params, layers, names in rows[:MAX_ARCH_ROWS]
    ]
    columns = ["architecture", "arch_id", "models", "n_params", "n_layers", "models (first 4)"]
    shown = f"the {len(table)} largest of " if len(rows) > len(table) else ""
    s.parts.append(html_table(columns, table, f"{shown}{len(rows)} architecture groups"))
    if shown:
        s.parts.append(
            _full_table("SELECT arch_id, count(*) FROM models GROUP BY arch_id ORDER BY 2 DESC")
        )


def _groups(b: Builder) -> list[tuple[str, list[str]]]:
    """(title, model_ids) of the layer-by-layer sections: the largest architecture groups
    of two or more models (their tensors align), or all models when no two share one."""
    _, rows = b.query(
        """
        SELECT arch_id, list(model_id ORDER BY name), min(name)
        FROM models WHERE list_contains($ids, model_id)
        GROUP BY arch_id HAVING count(*) > 1 ORDER BY count(*) DESC, min(name)
        """
    )
    if not rows:
        return [(f"all {len(b.ids)} models", b.ids)]
    labels = arch_labels(b.con, [r[0] for r in rows[:MAX_GROUPS]])
    return [
        (f"{labels[arch]} ({len(ids)} models: {first}, …)", list(ids))
        for arch, ids, first in rows[:MAX_GROUPS]
    ]


def _figures(b: Builder) -> None:
    s = b.section("parameters", "Parameters")
    b.figure(s, charts.param_counts, "Parameters per model, stacked by layer class", models=b.ids)
    b.figure(s, charts.compute_costs, "Parameters and multiply-adds per sample", models=b.ids)

    for k, (label, ids) in enumerate(_groups(b), start=1):
        s = b.section(f"group-{k}", f"Layers: {label}")
        for stat, what in (
            ("std", "standard deviation"),
            ("max_abs", "largest |w|"),
            ("near_zero_frac", "fraction of near-zero weights"),
        ):
            b.figure(s, charts.stat_heatmap, f"{what} of each kernel", models=ids, stat=stat)
        b.figure(s, charts.distribution_boxes, "kernel percentiles", models=ids)
        b.figure(s, charts.weight_histograms, "kernel histograms on common bins", models=ids)
        b.figure(
            s,
            charts.weight_matrix,
            "a kernel as a matrix (the layer with the most parameters), a colour scale per model",
            models=ids,
        )
        if charts.conv_models(b.con, ids):
            b.figure(s, charts.filter_images, "first convolution filters", models=ids)
        b.figure(
            s,
            charts.spectral_density,
            "spectral density of the matrix with the most eigenvalues, with its power law",
            models=ids,
        )

    recurrent = charts.recurrent_layers(b.con, b.ids)[:MAX_RECURRENT_LAYERS]
    if recurrent:
        s = b.section("gates", "Recurrent gates")
        for layer in recurrent:
            b.figure(s, charts.gate_histograms, f"gates of {layer}", models=b.ids, layer=layer)

    if charts.conv_models(b.con, b.ids):
        s = b.section("filters", "Convolution filters")
        b.figure(s, charts.filter_norms, "L2 norm of every filter", models=b.ids)


def _health(b: Builder) -> None:
    s = b.section("health", "Health findings")
    s.parts.append(
        "<p>Tensors and layer outputs that cross a threshold of the <code>settings</code> table "
        "(docs: health-rules), worst first: <code>nan_or_inf</code> (NaN or ±inf), "
        "<code>exploding</code> (a huge |w|, absolutely or against the tensor's robust spread), "
        "<code>dead_units</code> (units, filters or BatchNorm channels whose weights are all "
        "near 0), <code>saturating_forget_gate</code> (an LSTM forget gate pinned open or shut), "
        "<code>sparse</code> (mostly near-zero weights) and <code>stale</code> (unchanged since "
        "the previous checkpoint of a series); after <code>wpipe activations</code>, layer "
        "outputs flagged <code>dead_units_by_activation</code> (a ReLU layer whose units mostly "
        "never fire on an input set). These are findings, not verdicts: validation "
        "performance decides.</p>"
    )
    _, count = b.query(
        "SELECT count(*), count(DISTINCT model_id) FROM health_findings "
        "WHERE list_contains($ids, model_id)"
    )
    n_findings, n_models = count[0]
    if not n_findings:
        s.parts.append('<p class="note">No tensor crosses a threshold.</p>')
    else:
        columns, rows = b.query(
            "SELECT * EXCLUDE (model_id, severity) FROM health_findings "
            f"WHERE list_contains($ids, model_id) LIMIT {MAX_FINDINGS}"
        )
        b.figure(s, charts.health_overview, "Findings per model and flag", models=b.ids)
        shown = f"the first {len(rows)} of " if len(rows) < n_findings else ""
        caption = f"{shown}{n_findings} findings in {n_models} models, worst first"
        s.parts.append(html_table(columns, rows, caption))
        if shown:
            s.parts.append(_full_table("SELECT * FROM health_findings"))
    columns, rows = b.query("SELECT name, value, doc FROM settings ORDER BY name")
    s.parts.append(html_table(columns, rows, "thresholds (the settings table)"))


def _series_table(b: Builder, labels: dict[str, str]) -> tuple[list[str], list[tuple]]:
    """One row per checkpoint series: its ends, the last step's drift, the largest step."""
    columns, rows = b.query(
        """
        WITH ld AS (
            SELECT * FROM layer_drift WHERE series IS NOT NULL
              AND list_contains($ids, model_a) AND list_contains($ids, model_b)),
        -- one first and one last checkpoint per series (two only when --model leaves a gap)
        firsts AS (SELECT l.series, arg_min(l.name_a, l.epoch_b) AS name_a FROM ld AS l
                   ANTI JOIN ld AS r ON r.series = l.series AND r.model_b = l.model_a
                   GROUP BY l.series),
        lasts AS (SELECT l.series, arg_max(l.model_b, l.epoch_b) AS model_b,
                         arg_max(l.name_b, l.epoch_b) AS name_b FROM ld AS l
                  ANTI JOIN ld AS r ON r.series = l.series AND r.model_a = l.model_b
                  GROUP BY l.series)
        SELECT ld.series, count(DISTINCT ld.model_b) + 1 AS checkpoints,
               any_value(f.name_a) AS first, any_value(t.name_b) AS last,
               median(ld.rel_l2) FILTER (WHERE ld.model_b = t.model_b) AS last_step_median,
               max(ld.rel_l2) AS largest,
               arg_max(ld.layer_path || ' at ' || ld.name_b, ld.rel_l2) AS largest_at,
               count(*) FILTER (WHERE ld.rel_l2 = 0) AS unchanged_layers
        FROM ld LEFT JOIN firsts AS f USING (series) LEFT JOIN lasts AS t USING (series)
        GROUP BY ld.series ORDER BY checkpoints DESC, ld.series
        """
    )
    rows = [(labels.get(r[0], r[0]), *r[1:], r[0]) for r in rows]
    columns = [
        "series",
        "checkpoints",
        "first",
        "last",
        "median rel. change, last step",
        "largest rel. change",
        "largest at",
        "unchanged layer steps",
        "folder",
    ]
    return columns, rows


def _drift(b: Builder) -> None:
    found = charts.drift_series(b.con, b.ids)
    if not found:
        return
    s = b.section("drift", "Checkpoint drift")
    s.parts.append(
        "<p>Models of one architecture, folder and format form a checkpoint series where "
        "something says they were saved in training order: epoch or step tags, "
        "ModelCheckpoint-like names, or a training log in the folder (docs: checkpoints). "
        "For each consecutive pair, the relative change "
        "||B − A|| / ||A|| of each layer's weights (<code>layer_drift</code>); a layer that did "
        "not change at all is flagged <code>stale</code>.</p>"
    )
    columns, rows = _series_table(b, {name: label for name, label, _ in found})
    for name, label, n in found[:MAX_DRIFT_SERIES]:
        b.figure(
            s,
            charts.checkpoint_drift,
            f"drift across the {n} checkpoints of {label}",
            models=b.ids,
            series=[name],
        )
    if len(found) > MAX_DRIFT_SERIES:
        s.parts.append(
            f'<p class="note">Figures for the {MAX_DRIFT_SERIES} largest of {len(found)} series; '
            "draw any other with <code>wpipe chart drift --series NAME</code>.</p>"
        )
    lasts = sorted(r[3] for r in rows if r[3] is not None)
    if len(lasts) >= 2:
        selected = set(b.ids)
        b.figure(
            s,
            charts.distance_heatmap,
            "distance between the last checkpoints of the series (same architecture; the layer "
            "with the most parameters; read from the model files)",
            models=[i for i in charts.model_ids(b.con, lasts) if i in selected],
        )
    shown = f"the {MAX_SERIES_ROWS} largest of " if len(rows) > MAX_SERIES_ROWS else ""
    s.parts.append(
        html_table(columns, rows[:MAX_SERIES_ROWS], f"{shown}{len(found)} checkpoint series")
    )
    if shown:
        s.parts.append(_full_table("SELECT * FROM layer_drift"))


def _metrics(b: Builder) -> None:
    names = charts.metrics(b.con, b.ids)
    if not names:
        return
    s = b.section("metrics", "Metrics vs weights")
    s.parts.append(
        "<p>Results attached to the models (<code>model_metrics</code>: Keras CSVLogger files "
        "next to checkpoints, or <code>wpipe metrics add</code>), ranked against weight "
        "statistics by Spearman's rank correlation ρ, as <code>wpipe correlate</code> does; "
        "the scatter draws the statistic with the largest |ρ|. Over fewer than about 8 models "
        "rank correlations are mostly noise, and a correlation is not a cause.</p>"
    )
    columns, rows = b.query(
        "SELECT metric, count(DISTINCT model_id) AS models, min(value) AS min, "
        "max(value) AS max FROM model_metrics WHERE list_contains($ids, model_id) "
        "GROUP BY metric ORDER BY metric"
    )
    s.parts.append(html_table(columns, rows, "metrics"))
    for metric in names[:MAX_METRICS]:
        s.parts.append(f"<h3>{esc(metric)}</h3>")
        ranked = charts.rank_correlations(b.con, metric, models=b.ids)
        if not ranked:
            s.parts.append('<p class="note">Fewer than 3 models have this metric.</p>')
            continue
        s.parts.append(
            html_table(
                ["statistic", "models", "spearman_rho"],
                ranked[:TOP_CORRELATIONS],
                f"the {min(TOP_CORRELATIONS, len(ranked))} statistics with the largest |ρ|",
            )
        )
        b.figure(
            s,
            charts.metric_scatter,
            f"{metric} vs {ranked[0][0]}, one point per model",
            models=b.ids,
            metric=metric,
            stat=ranked[0][0],
        )
    if len(names) > MAX_METRICS:
        s.parts.append(
            f'<p class="note">Not shown: {esc(", ".join(names[MAX_METRICS:]))}; rank them '
            "with <code>wpipe correlate METRIC</code>.</p>"
        )


def _comparisons(b: Builder) -> None:
    s = b.section("tables", "Comparison tables")
    queries = [
        (
            f"Largest |w|: the {TOP_N} tensors with the largest max_abs",
            f"SELECT model, layer_path, weight_name, class_name, shape::VARCHAR AS shape, "
            f"max_abs, std, l2 FROM layer_weights WHERE list_contains($ids, model_id) "
            f"ORDER BY max_abs DESC NULLS LAST, model, layer_path LIMIT {TOP_N}",
        ),
        (
            f"Most near-zero: the {TOP_N} tensors with the largest near_zero_frac",
            f"SELECT model, layer_path, weight_name, class_name, size, near_zero_frac, std "
            f"FROM layer_weights WHERE list_contains($ids, model_id) AND near_zero_frac > 0 "
            f"ORDER BY near_zero_frac DESC, model, layer_path LIMIT {TOP_N}",
        ),
        (
            "Non-finite values: tensors holding NaN or ±inf",
            "SELECT model, layer_path, weight_name, size, nonfinite_count FROM layer_weights "
            "WHERE list_contains($ids, model_id) AND nonfinite_count > 0 "
            f"ORDER BY nonfinite_count DESC, model, layer_path LIMIT {MAX_TABLE_ROWS}",
        ),
        (
            "Layer classes: kernels of each class across the models",
            "SELECT coalesce(class_name, '(no architecture)') AS class_name, "
            "count(DISTINCT model_id) AS models, count(*) AS tensors, sum(size) AS parameters, "
            "avg(std) AS mean_std, max(max_abs) AS max_abs, "
            "sum(near_zero_frac * size) / nullif(sum(size), 0) AS near_zero_frac "
            "FROM layer_weights WHERE list_contains($ids, model_id) AND role = 'kernel' "
            "GROUP BY ALL ORDER BY parameters DESC",
        ),
    ]
    for caption, sql in queries:
        columns, rows = b.query(sql)
        s.parts.append(f"<h3>{esc(caption)}</h3>")
        s.parts.append(html_table(columns, rows) if rows else '<p class="note">None.</p>')


def _errors(b: Builder) -> None:
    n_errors = b.con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0]
    if not n_errors:
        return
    columns, rows = b.query(
        f'SELECT path, error, message, "at" FROM ingest_errors ORDER BY path LIMIT {MAX_ERROR_ROWS}'
    )
    s = b.section("errors", "Ingest errors")
    shown = f"the first {len(rows)} of " if len(rows) < n_errors else ""
    s.parts.append(html_table(columns, rows, f"{shown}{n_errors} files that could not be read"))
    if shown:
        s.parts.append(_full_table("SELECT * FROM ingest_errors"))
