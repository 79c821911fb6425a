"""The report: one self-contained HTML file with the tables and figures of a database.

Everything is inlined (Vega, Vega-Lite and vega-embed from vl-convert, the chart specs, the
CSS), so the file opens offline. Every text that comes from a model file (names, paths, layer
names, messages) is HTML-escaped, and chart specs are embedded as JSON with `<`, `>` and `&`
escaped, so a layer named `<script>…</script>` is shown as text and never run.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import altair as alt
import duckdb

import wpipe
from wpipe import charts

MAX_TABLE_ROWS = 1000  # rows of the models table (the rest are counted, not listed)
MAX_GROUPS = 3  # architecture groups that get their own figures
MAX_RECURRENT_LAYERS = 3  # recurrent layers that get a gate figure
TOP_N = 15  # rows of the "largest / most near-zero" comparison tables
MAX_FINDINGS = 100  # rows of the health findings table
MAX_DRIFT_SERIES = 4  # checkpoint series that get their own drift figure
MAX_METRICS = 3  # metrics that get a correlation table and a scatter
TOP_CORRELATIONS = 10  # rows of each metric's correlation table


def esc(value: Any) -> str:
    """HTML text for a value: escaped, numbers formatted, NULL as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value), quote=True)


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> str:
    """An escaped HTML table; numeric cells are right-aligned."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="num">{esc(v)}</td>'
            if isinstance(v, int | float) and not isinstance(v, bool)
            else f'<td class="long">{esc(v)}</td>'
            if isinstance(v, str) and len(v) > 60
            else f"<td>{esc(v)}</td>"
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (
        f'<div class="table"><table>{cap}<thead><tr>{head}</tr></thead><tbody>\n{body}\n'
        "</tbody></table></div>"
    )


@dataclass
class _Section:
    id: str
    title: str
    parts: list[str] = field(default_factory=list)


class _Builder:
    """Collects sections and figures; `html()` assembles the page."""

    def __init__(self, con: duckdb.DuckDBPyConnection, ids: list[str]) -> None:
        self.con = con
        self.ids = ids
        self.sections: list[_Section] = []
        self.specs: list[dict] = []

    def section(self, id_: str, title: str) -> _Section:
        self.sections.append(_Section(id_, title))
        return self.sections[-1]

    def query(self, sql: str, **params: Any) -> tuple[list[str], list[tuple]]:
        if "$ids" in sql:
            params["ids"] = self.ids
        cursor = self.con.execute(sql, params)
        return [d[0] for d in cursor.description], cursor.fetchall()

    def figure(
        self, section: _Section, draw: Callable[..., alt.TopLevelMixin], caption: str, **kw: Any
    ) -> bool:
        """Draw a chart into `section`; a chart with nothing to draw leaves a note instead."""
        try:
            chart = draw(self.con, **kw)
        except charts.NoData as exc:
            section.parts.append(
                f'<p class="note">{esc(caption)}: nothing to draw ({esc(exc)}).</p>'
            )
            return False
        n = len(self.specs)
        self.specs.append(chart.to_dict())
        section.parts.append(
            f'<figure id="figure-{n + 1}"><div class="vis" data-spec="spec-{n}"></div>'
            f"<figcaption>Figure {n + 1}. {esc(caption)}</figcaption></figure>"
        )
        return True


def build_report(
    con: duckdb.DuckDBPyConnection,
    *,
    models: Sequence[str] | None = None,
    title: str = "wpipe report",
) -> str:
    """The report as one HTML document (models: names, paths or id prefixes; default all)."""
    ids = charts.model_ids(con, models)
    b = _Builder(con, ids)
    _overview(b)
    if ids:
        _architectures(b)
        _health(b)
        _figures(b)
        _drift(b)
        _metrics(b)
        _comparisons(b)
    _errors(b)
    return _page(b, title)


def write_report(
    con: duckdb.DuckDBPyConnection,
    path: str | os.PathLike,
    *,
    models: Sequence[str] | None = None,
) -> Path:
    """Write `build_report(con)` to `path`, atomically (a temporary file, then a rename)."""
    path = Path(path)
    text = build_report(con, models=models)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- sections


def _overview(b: _Builder) -> None:
    s = b.section("overview", "Overview")
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
    columns, rows = b.query(
        f"""
        SELECT model, format, keras_version, model_class, n_layers, n_tensors, n_params,
               n_trainable, n_non_trainable, file_mb, max_abs, near_zero_frac, nonfinite_count,
               arch_id
        FROM model_summary WHERE list_contains($ids, model_id) ORDER BY model
        LIMIT {MAX_TABLE_ROWS}
        """
    )
    more = n_models - len(rows)
    caption = f"models (first {len(rows)} of {n_models} by name)" if more else "models"
    s.parts.append(html_table(columns, rows, caption))


def _architectures(b: _Builder) -> None:
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
    rows = [
        (arch, n, params, layers, ", ".join(names) + (", …" if n > len(names) else ""))
        for arch, n, params, layers, names in rows
    ]
    columns = ["arch_id", "models", "n_params", "n_layers", "models (first 4)"]
    s.parts.append(html_table(columns, rows))


def _groups(b: _Builder) -> list[tuple[str, list[str]]]:
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
    return [
        (f"architecture {arch} ({len(ids)} models: {first}, …)", list(ids))
        for arch, ids, first in rows[:MAX_GROUPS]
    ]


def _figures(b: _Builder) -> None:
    s = b.section("parameters", "Parameters")
    b.figure(s, charts.param_counts, "Parameters per model, stacked by layer class", models=b.ids)

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

    recurrent = charts.recurrent_layers(b.con, b.ids)[:MAX_RECURRENT_LAYERS]
    if recurrent:
        s = b.section("gates", "Recurrent gates")
        for layer in recurrent:
            b.figure(s, charts.gate_histograms, f"gates of {layer}", models=b.ids, layer=layer)

    if charts.conv_models(b.con, b.ids):
        s = b.section("filters", "Convolution filters")
        b.figure(s, charts.filter_norms, "L2 norm of every filter", models=b.ids)


def _health(b: _Builder) -> None:
    s = b.section("health", "Health findings")
    s.parts.append(
        "<p>Tensors whose weights cross a threshold of the <code>settings</code> table "
        "(README: Weight health), worst first: <code>nan_or_inf</code> (NaN or ±inf), "
        "<code>exploding</code> (a huge |w|, absolutely or against the tensor's robust spread), "
        "<code>dead_units</code> (units, filters or BatchNorm channels whose weights are all "
        "near 0), <code>saturating_forget_gate</code> (an LSTM forget gate pinned open or shut), "
        "<code>sparse</code> (mostly near-zero weights) and <code>stale</code> (unchanged since "
        "the previous checkpoint). These are findings about weights, not verdicts: validation "
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
        shown = f"the first {len(rows)} of " if len(rows) < n_findings else ""
        caption = f"{shown}{n_findings} findings in {n_models} models, worst first"
        s.parts.append(html_table(columns, rows, caption))
        b.figure(s, charts.health_overview, "Flagged tensors per model and flag", models=b.ids)
    columns, rows = b.query("SELECT name, value, doc FROM settings ORDER BY name")
    s.parts.append(html_table(columns, rows, "thresholds (the settings table)"))


def _series_table(b: _Builder, labels: dict[str, str]) -> tuple[list[str], list[tuple]]:
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


def _drift(b: _Builder) -> None:
    found = charts.drift_series(b.con, b.ids)
    if not found:
        return
    s = b.section("drift", "Checkpoint drift")
    s.parts.append(
        "<p>Models of one architecture in one folder form a checkpoint series, ordered by their "
        "epoch or step tag (else by name). For each consecutive pair, the relative change "
        "||B − A|| / ||A|| of each layer's weights (<code>layer_drift</code>); a layer that did "
        "not change at all is flagged <code>stale</code>.</p>"
    )
    columns, rows = _series_table(b, {name: label for name, label, _ in found})
    s.parts.append(html_table(columns, rows, f"{len(found)} checkpoint series"))
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
        b.figure(
            s,
            charts.distance_heatmap,
            "distance between the last checkpoints of the series (same architecture; the layer "
            "with the most parameters; read from the model files)",
            models=[i for i in charts.model_ids(b.con, lasts) if i in set(b.ids)],
        )


def _metrics(b: _Builder) -> None:
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


def _comparisons(b: _Builder) -> None:
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


def _errors(b: _Builder) -> None:
    columns, rows = b.query('SELECT path, error, message, "at" FROM ingest_errors ORDER BY path')
    if rows:
        s = b.section("errors", "Ingest errors")
        s.parts.append(html_table(columns, rows))


# ----------------------------------------------------------------------------- page

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 2rem 4rem;
       color: #1d1d1f; max-width: 1500px; }
h1 { margin: 1.5rem 0 .2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
.meta, .note { color: #666; }
nav ol { columns: 2; max-width: 720px; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: 12.5px; }
caption { text-align: left; color: #666; padding: .2rem 0; }
div.table { overflow-x: auto; }
th, td { border-bottom: 1px solid #e5e5e5; padding: .2rem .6rem; text-align: left;
         vertical-align: top; white-space: nowrap; }
td.long { white-space: normal; min-width: 30rem; overflow-wrap: anywhere; }
th { background: #f6f6f6; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 2rem; overflow-x: auto; }
figcaption { color: #555; margin-top: .3rem; }
.failed { color: #b00; }
"""


def _page(b: _Builder, title: str) -> str:
    database = b.con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    toc = "".join(f'<li><a href="#{s.id}">{esc(s.title)}</a></li>' for s in b.sections)
    body = "\n".join(
        f'<section id="{s.id}">\n<h2>{esc(s.title)}</h2>\n' + "\n".join(s.parts) + "\n</section>"
        for s in b.sections
    )
    specs = "\n".join(
        f'<script type="application/json" id="spec-{n}">{charts.script_json(spec)}</script>'
        for n, spec in enumerate(b.specs)
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="wpipe {esc(wpipe.__version__)}">
<title>{esc(title)}</title>
<style>{_CSS}</style>
<script>{charts.javascript_bundle()}</script>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<p class="meta">Database {esc(database[0] if database else "(in memory)")} ·
generated {generated} by wpipe {esc(wpipe.__version__)} · {len(b.specs)} figures (hover for
values; click a legend entry to pick a series; scroll to zoom where an axis allows it)</p>
<noscript><p class="failed">The figures need JavaScript; the tables below do not.</p></noscript>
</header>
<nav id="contents"><h2>Contents</h2><ol>{toc}</ol></nav>
{body}
{specs}
<script>
document.querySelectorAll("div.vis").forEach(function (el) {{
  var spec = JSON.parse(document.getElementById(el.dataset.spec).textContent);
  vegaEmbed(el, spec, {charts.script_json(charts.EMBED_OPTIONS)}).catch(function (e) {{
    el.textContent = "figure failed: " + e;
    el.className += " failed";
  }});
}});
</script>
</body>
</html>
"""
