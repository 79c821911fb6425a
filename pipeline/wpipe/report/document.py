"""The report's page: escaped HTML tables, figures embedded as Vega-Lite specs, and the
self-contained document (the JavaScript, specs and CSS inlined)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import altair as alt
import duckdb
from altair.utils.schemapi import debug_mode

import wpipe
from wpipe import charts

# Who follows the report's progress (`wpipe report`'s progress line): step(phase, detail)
# with phase query, render or write. None: nobody.
ON_STEP: ContextVar[Callable[[str, str], None] | None] = ContextVar("wpipe_report_step",
                                                                    default=None)  # fmt: skip


def step(phase: str, detail: str = "") -> None:
    hook = ON_STEP.get()
    if hook is not None:
        hook(phase, detail)


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
class Section:
    id: str
    title: str
    parts: list[str] = field(default_factory=list)


class Builder:
    """Collects sections and figures; `html()` assembles the page."""

    def __init__(self, con: duckdb.DuckDBPyConnection, ids: list[str]) -> None:
        self.con = con
        self.ids = ids
        self.sections: list[Section] = []
        self.specs: list[dict] = []

    def section(self, id_: str, title: str) -> Section:
        step("query", title)
        self.sections.append(Section(id_, title))
        return self.sections[-1]

    def query(self, sql: str, **params: Any) -> tuple[list[str], list[tuple]]:
        if "$ids" in sql:
            params["ids"] = self.ids
        cursor = self.con.execute(sql, params)
        return [d[0] for d in cursor.description], cursor.fetchall()

    def figure(
        self, section: Section, draw: Callable[..., alt.TopLevelMixin], caption: str, **kw: Any
    ) -> bool:
        """Draw a chart into `section`; a chart with nothing to draw leaves a note instead."""
        step("render", f"figure {len(self.specs) + 1}: {caption}")
        try:
            # Altair validates every object it builds (thousands of data rows each) unless
            # told not to; the charts' tests validate their specs, so the report does not
            with debug_mode(False):
                chart = draw(self.con, **kw)
        except charts.NoData as exc:
            section.parts.append(
                f'<p class="note">{esc(caption)}: nothing to draw ({esc(exc)}).</p>'
            )
            return False
        n = len(self.specs)
        self.specs.append(spec_of(chart))
        section.parts.append(
            f'<figure id="figure-{n + 1}"><div class="vis" data-spec="spec-{n}"></div>'
            f"<figcaption>Figure {n + 1}. {esc(caption)}</figcaption></figure>"
        )
        return True


def spec_of(chart: alt.TopLevelMixin) -> dict:
    """chart.to_dict(validate=False), with each inline dataset set aside while Altair walks
    the chart (it visits every value of every row, most of a report's time) and put back."""
    held: list[list] = []

    def set_aside(node: Any) -> None:
        if isinstance(node, alt.SchemaBase):
            data = node._kwds.get("data")
            if isinstance(data, alt.Data | alt.InlineData) and isinstance(data.values, list):
                node._kwds["data"] = alt.Data(name=f"wpipe-held-{len(held)}")
                held.append(data.values)
            for value in node._kwds.values():
                set_aside(value)
        elif isinstance(node, list | tuple):
            for item in node:
                set_aside(item)

    def put_back(node: Any) -> Any:
        if isinstance(node, dict):
            name = node.get("name")
            if len(node) == 1 and isinstance(name, str) and name.startswith("wpipe-held-"):
                return {"values": held[int(name.removeprefix("wpipe-held-"))]}
            return {k: put_back(v) for k, v in node.items()}
        if isinstance(node, list):
            return [put_back(v) for v in node]
        return node

    set_aside(chart)  # the chart is the report's own, drawn for this figure only
    return put_back(chart.to_dict(validate=False))


_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 2rem 4rem;
       color: #1d1d1f; max-width: 1500px; }
h1 { margin: 1.5rem 0 .2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
.meta, .note { color: #666; }
nav ol { columns: 2; max-width: 720px; }
nav li { break-inside: avoid; }
p, code { overflow-wrap: break-word; }
section { min-width: 0; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: 12.5px; }
caption { text-align: left; color: #666; padding: .2rem 0; }
div.table { overflow-x: auto; max-width: 100%; }
th, td { border-bottom: 1px solid #e5e5e5; padding: .2rem .6rem; text-align: left;
         vertical-align: top; }
td { white-space: normal; overflow-wrap: break-word; max-width: 24rem; }
td.num { white-space: nowrap; }
td.long { min-width: 16rem; max-width: 36rem; overflow-wrap: anywhere; }
th { background: #f6f6f6; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 2rem; overflow-x: auto; max-width: 100%; }
figcaption { color: #555; margin-top: .3rem; }
.failed { color: #b00; }
"""


def page(b: Builder, title: str) -> str:
    """The whole HTML document of the sections and figures `b` collected."""
    step("write", f"{len(b.sections)} sections, {len(b.specs)} figures")
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
