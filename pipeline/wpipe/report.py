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
        _figures(b)
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
