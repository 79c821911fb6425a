"""The report in a real browser: the demo's report and a 300-model report opened in Chromium
(driven by Playwright) at 1,400 px, after vega-embed has drawn every figure.

Checked: the summary, the health chart and the health table count the same findings per flag
as `health_findings` in the database; every figure is drawn with marks (no empty grid, no
"figure failed"); every table fits its box or scrolls inside it and the page has no horizontal
overflow; the console has no error and nothing is fetched from the network. A screenshot of
each report is kept in tests/artefacts/ (git-ignored; the path is printed).

Needs the `browser` extra (playwright) and a Chromium at /usr/bin/chromium (Debian:
`apt-get install chromium`; Playwright's own browser download is never used); without either
the module is skipped. `make test-browser` installs the extra and runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

# Debian's Chromium (another build: WPIPE_CHROMIUM=/path/to/chrome)
CHROMIUM = Path(os.environ.get("WPIPE_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[browser]')"
)

import duckdb  # noqa: E402
import wpipe  # noqa: E402
from wpipe.report.document import Builder, html_table  # noqa: E402
from wpipe.report.document import page as page_html  # noqa: E402

from tests.charts.conftest import many_models  # noqa: E402

ARTEFACTS = Path(__file__).parents[1] / "artefacts"
WIDTH, HEIGHT = 1400, 900
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPORTS = ["demo", "models300"]
DRAW_TIMEOUT_MS = 60_000

# Run before the page's own scripts: the bundle sets window.vegaEmbed, and this wraps it so
# each figure's element keeps its Vega view and the page counts the figures that settled
# (drawn, or failed with the reason).
TRACK_EMBEDS = """
(() => {
  const state = { settled: 0, failed: [] };
  window.__wpipe = state;
  let embed;
  Object.defineProperty(window, "vegaEmbed", {
    configurable: true,
    get() { return embed; },
    set(real) {
      embed = function (el, spec, options) {
        const drawn = real(el, spec, options);
        drawn
          .then((result) => { el.__view = result.view; return result.view.runAsync(); })
          .catch((e) => { state.failed.push(String(e)); })
          .finally(() => { state.settled += 1; });
        return drawn;
      };
    },
  });
})();
"""

# Per figure: its marks' items (data marks only, not axes, legends or titles) and how many
# of them are visible (an extent, a fill or stroke, not fully transparent); the datums of the
# health chart's cells.
FIGURES = """
() => Array.from(document.querySelectorAll("div.vis")).map((el) => {
  const view = el.__view;
  const out = { id: el.closest("figure").id, section: el.closest("section").id,
                failed: el.classList.contains("failed"), items: 0, visible: 0, datums: [] };
  if (!view) return out;
  const canvas = el.querySelector("canvas, svg");
  out.size = canvas ? [canvas.clientWidth, canvas.clientHeight] : [0, 0];
  (function walk(node) {
    if (node.marktype === undefined) { (node.items || []).forEach(walk); return; }
    if (node.marktype === "group") { node.items.forEach(walk); return; }
    if (node.role !== "mark") return;
    for (const item of node.items) {
      out.items += 1;
      const b = item.bounds;
      const extent = b && (b.x2 > b.x1 || b.y2 > b.y1);
      const paint = (c) => c !== undefined && c !== null && c !== "none" && c !== "transparent";
      const painted = (paint(item.fill) && item.fillOpacity !== 0)
                      || (paint(item.stroke) && item.strokeOpacity !== 0);
      if (extent && painted && item.opacity !== 0) out.visible += 1;
      if (item.datum && "flag" in item.datum && "findings" in item.datum)
        out.datums.push({ model: item.datum.model, flag: item.datum.flag,
                          findings: item.datum.findings });
    }
  })(view.scenegraph().root);
  return out;
})
"""

# Per table box: its width, the table's, whether it scrolls sideways, its edges on the page.
TABLES = """
() => Array.from(document.querySelectorAll("div.table")).map((box) => {
  const table = box.querySelector("table");
  const rect = box.getBoundingClientRect();
  return { section: box.closest("section").id,
           caption: table.caption ? table.caption.textContent : "",
           box: box.clientWidth, table: table.scrollWidth,
           scrolls: ["auto", "scroll"].includes(getComputedStyle(box).overflowX),
           left: rect.left, right: rect.right };
})
"""

PAGE = """
() => ({ client: document.documentElement.clientWidth,
         scroll: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
         summary: Array.from(document.querySelectorAll("#overview p"))
                    .map((p) => p.textContent).join(" ") })
"""

# The health findings table: its caption and the model and flags of every row.
HEALTH_TABLE = """
() => {
  const table = document.querySelector("#health div.table table");
  if (!table) return null;
  const head = Array.from(table.tHead.rows[0].cells).map((c) => c.textContent);
  const model = head.indexOf("model"), flags = head.indexOf("flags");
  return { caption: table.caption.textContent,
           rows: Array.from(table.tBodies[0].rows).map((r) =>
             [r.cells[model].textContent, r.cells[flags].textContent]) };
}
"""


def wpipe_report(db: Path, out: Path) -> Path:
    """`wpipe report` as a user runs it."""
    argv = [str(Path(sys.executable).with_name("wpipe")), "report", "--db", str(db), "-o", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def databases(request, tmp_path_factory):
    """Each report's database, built on first use."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            if name == "demo":
                built[name] = request.getfixturevalue("demo_db")
            else:
                built[name] = many_models(tmp_path_factory.mktemp("many300"), 300)
        return built[name]

    return get


def open_page(browser, path: Path, name: str) -> dict:
    """A page opened in Chromium after every figure settled: what it shows (a screenshot in
    tests/artefacts/)."""
    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    fetched: list[str] = []  # the report is self-contained: nothing but itself and data: URLs
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:"))
            else fetched.append(r.url))  # fmt: skip
    page.add_init_script(TRACK_EMBEDS)
    page.goto(path.as_uri(), wait_until="load")
    n_figures = page.locator("div.vis").count()
    page.wait_for_function(
        f"window.__wpipe.settled === {n_figures}", timeout=DRAW_TIMEOUT_MS, polling=100
    )
    ARTEFACTS.mkdir(exist_ok=True)
    screenshot = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of {name}: {screenshot}")
    shown = {
        "n_figures": n_figures,
        "failed": page.evaluate("window.__wpipe.failed"),
        "figures": page.evaluate(FIGURES),
        "tables": page.evaluate(TABLES),
        "page": page.evaluate(PAGE),
        "health_table": page.evaluate(HEALTH_TABLE),
        "errors": errors,
        "fetched": fetched,
    }
    page.close()
    return shown


@pytest.fixture(scope="module", params=REPORTS)
def shown(request, browser, databases, tmp_path_factory) -> dict:
    """A report of `wpipe report` as Chromium shows it, with its database's findings."""
    db = databases(request.param)
    path = wpipe_report(db, tmp_path_factory.mktemp(request.param) / "report.html")
    con = wpipe.connect(db)
    try:
        findings = con.execute("SELECT model_id, flags FROM health_findings").fetchall()
    finally:
        con.close()
    return {
        **open_page(browser, path, f"report-{request.param}"),
        "expected": per_flag(findings),
        "n_findings": len(findings),
        "n_models": len({model for model, _ in findings}),
    }


def per_flag(findings: list[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """(findings, models) per flag of (model, "flag, flag") rows: a finding can carry several."""
    n: Counter[str] = Counter()
    models: dict[str, set[str]] = defaultdict(set)
    for model, flags in findings:
        for flag in flags.split(", "):
            n[flag] += 1
            models[flag].add(model)
    return {flag: (n[flag], len(models[flag])) for flag in n}


def count(text: str) -> int:
    return int(text.replace(",", ""))


def figure_problems(shown: dict) -> list[str]:
    """Figures that failed or drew no data mark with an extent (an empty grid)."""
    problems = [f"failed: {reason}" for reason in shown["failed"]]
    for figure in shown["figures"]:
        where = f"{figure['id']} in #{figure['section']}"
        if figure["failed"] or min(figure.get("size", [0])) <= 0:
            problems.append(f"{where} is not drawn")
        elif not figure["visible"]:
            problems.append(f"{where} is an empty grid")
    return problems


def overflow_problems(shown: dict) -> list[str]:
    """Tables wider than their box that do not scroll inside it, boxes past the page's edge,
    and a page wider than the window."""
    page = shown["page"]
    problems = [f"the page is {page['scroll']} px wide"] if page["scroll"] > page["client"] else []
    for table in shown["tables"]:
        where = f"{table['caption']!r} in #{table['section']}"
        if table["table"] > table["box"] and not table["scrolls"]:
            problems.append(f"{where} overflows its box")
        if table["left"] < 0 or table["right"] > page["client"]:
            problems.append(f"{where} goes past the page")
    return problems


def test_every_figure_is_drawn_with_marks(shown):
    assert shown["n_figures"] >= 3
    assert figure_problems(shown) == []


def test_no_console_error(shown):
    assert shown["errors"] == []


def test_nothing_is_fetched_from_the_network(shown):
    assert shown["fetched"] == []


def test_no_table_overflows_the_page(shown):
    assert shown["tables"]
    assert overflow_problems(shown) == []


def test_the_checks_see_an_empty_figure_an_overflow_and_a_console_error(browser, tmp_path):
    """The checks above on a page made to fail them, built by the report's own page code:
    a figure without data, one that fails, one whose marks are transparent, a table that
    does not scroll inside its box, a console error, an image from the network."""
    b = Builder(duckdb.connect(), [])
    s = b.section("broken", "Broken on purpose")
    empty = {"data": {"values": []}, "mark": "point",
             "encoding": {"x": {"field": "a", "type": "quantitative"}}}  # fmt: skip
    unseen = {**empty, "data": {"values": [{"a": 1}, {"a": 2}]},
              "mark": {"type": "point", "opacity": 0}}  # fmt: skip
    b.specs += [empty, {"mark": "no-such-mark"}, unseen]
    wide = html_table([f"column {k}" for k in range(40)], [tuple(range(40))])
    s.parts += [
        '<figure id="figure-1"><div class="vis" data-spec="spec-0"></div></figure>',
        '<figure id="figure-2"><div class="vis" data-spec="spec-1"></div></figure>',
        '<figure id="figure-3"><div class="vis" data-spec="spec-2"></div></figure>',
        wide.replace('<div class="table">', '<div class="table" style="overflow-x: visible">'),
        '<script>console.error("an error on purpose")</script>',
        '<img src="https://example.invalid/pixel.png" alt="">',
    ]
    path = tmp_path / "broken.html"
    path.write_text(page_html(b, "broken"), encoding="utf-8")
    shown = open_page(browser, path, "broken-on-purpose")
    figures = figure_problems(shown)
    assert "figure-1 in #broken is an empty grid" in figures
    assert "figure-2 in #broken is not drawn" in figures  # and the reason it failed
    assert "figure-3 in #broken is an empty grid" in figures and len(figures) == 4
    overflows = overflow_problems(shown)
    assert overflows[0].startswith("the page is") and "'' in #broken overflows its box" in overflows
    assert "an error on purpose" in shown["errors"]
    assert shown["fetched"] == ["https://example.invalid/pixel.png"]


def test_summary_chart_and_table_agree_on_the_findings(shown):
    expected = shown["expected"]
    assert expected, "the report's database has health findings to show"
    # the summary: "flag in M models (N findings)" per flag
    said = {
        flag: (count(n), count(m))
        for flag, m, n in re.findall(
            r"(\w+) in ([\d,]+) models \(([\d,]+) findings?\)", shown["page"]["summary"]
        )
    }
    assert said == expected, "the summary counts other findings than health_findings"
    # the chart: one cell per model and flag, drawn with its count
    (health,) = [f for f in shown["figures"] if f["section"] == "health"]
    cells = {(d["model"], d["flag"]): d["findings"] for d in health["datums"]}
    drawn: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (_, flag), n in cells.items():
        if n:
            drawn[flag][0] += n
            drawn[flag][1] += 1
    assert {flag: tuple(v) for flag, v in drawn.items()} == expected, "the health chart"
    # the table: every finding listed, or the first ones and the total in its caption
    table = shown["health_table"]
    n_total, n_models = map(count, re.search(r"([\d,]+) findings in ([\d,]+) models",
                                             table["caption"]).groups())  # fmt: skip
    assert (n_total, n_models) == (shown["n_findings"], shown["n_models"])
    assert n_models == len({model for (model, _), n in cells.items() if n})
    listed = per_flag(table["rows"])
    if len(table["rows"]) == n_total:
        assert listed == expected, "the health table"
    else:  # the first rows, worst first: no flag counted more often than it occurs
        assert table["caption"].startswith(f"the first {len(table['rows'])} of")
        assert all(listed[f][0] <= expected[f][0] for f in listed) and set(listed) <= set(expected)
