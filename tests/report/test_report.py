"""The HTML report: every section, valid embedded figures, offline, and model text escaped."""

from __future__ import annotations

import html
import json
import re
import shutil

import jsonschema
import numpy as np
import pytest
import wpipe
from typer.testing import CliRunner
from wpipe import charts, compare, report, store
from wpipe.cli import app

from tests.charts.conftest import data_rows, make_zoo, many_models, vega_lite_schema
from tests.conftest import Warehouse, dense_config, expected, write_legacy_h5

runner = CliRunner()

ZOO = ["k2_conv2d.h5", "k3_conv2d.h5", "k2_lstm.h5", "k2_gru_reset_after.h5", "k2_bidi_td.h5"]
EVIL_LAYER = "<script>alert(1)</script>"
EVIL_MODEL = "<img src=x onerror=alert(2)>"
EVIL_METRIC = "<b onmouseover=alert(3)>acc</b>"
SPEC_SCRIPT = re.compile(r'<script type="application/json" id="spec-(\d+)">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    zoo = make_zoo(root / "zoo", ZOO)
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=(4, 3)).astype(np.float32)
    kernel[0, 0] = np.nan  # a health finding named after the evil layer
    write_legacy_h5(
        zoo / f"{EVIL_MODEL}.h5",
        {
            EVIL_LAYER: {
                f"{EVIL_LAYER}/kernel:0": kernel,
                f"{EVIL_LAYER}/bias:0": np.zeros(3, np.float32),
            }
        },
        config=dense_config(EVIL_LAYER),
    )
    (zoo / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)  # a truncated file
    # a training log says the folder is one run: k2_conv2d then k3_conv2d form a series
    (zoo / "training.log").write_text("")
    result = Warehouse(root).ingest(zoo)
    assert result.ingested == len(ZOO) + 1 and len(result.failed) == 1
    # results for a few models, one metric named with markup: a CSV header is user text too
    names = [n.removesuffix(".h5") for n in ZOO] + [EVIL_MODEL]
    lines = [f"model,val_accuracy,{EVIL_METRIC}"]
    lines += [f"{n},{0.5 + k / 20},{1 - k / 30}" for k, n in enumerate(names)]
    (root / "results.csv").write_text("\n".join(lines) + "\n")
    added = runner.invoke(
        app, ["metrics", "add", str(root / "results.csv"), "--db", str(root / "w.duckdb")]
    )
    assert added.exit_code == 0, added.output
    return root / "w.duckdb"


@pytest.fixture(scope="module")
def page(db_path):
    con = wpipe.connect(db_path)
    text = report.build_report(con)
    con.close()
    return text


def test_report_has_every_section_in_its_table_of_contents(page):
    for section in (
        "overview",
        "architectures",
        "parameters",
        "group-1",
        "gates",
        "filters",
        "health",
        "drift",
        "metrics",
        "tables",
        "errors",
    ):
        assert f'<section id="{section}">' in page, section
        assert f'<a href="#{section}">' in page, section
    assert page.index('id="contents"') < page.index('<section id="overview">')
    for caption in ("Largest |w|", "Most near-zero", "Non-finite values", "Layer classes"):
        assert caption in page
    for caption in (
        "Findings per model and flag",
        "drift across the 2 checkpoints of zoo",
        "val_accuracy vs ",
        "thresholds (the settings table)",
        "a kernel as a matrix",
        "first convolution filters",
        "spectral density of the matrix with the most eigenvalues",
    ):
        assert caption in page, caption


def section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}">')
    return page[start : page.index("</section>", start)]


def test_health_drift_and_metrics_sections_hold_the_database_numbers(page, db_path):
    con = wpipe.connect(db_path)
    n_findings, n_models = con.execute(
        "SELECT count(*), count(DISTINCT model_id) FROM health_findings"
    ).fetchone()
    ranked = compare.correlate(con, "val_accuracy")[: report.TOP_CORRELATIONS]
    series = con.execute("SELECT DISTINCT series FROM drift WHERE series IS NOT NULL").fetchall()
    con.close()
    health = section(page, "health")
    assert f"{n_findings} findings in {n_models} models, worst first" in health
    assert health.count("<tr>") >= n_findings + 1
    metrics = section(page, "metrics")
    table = metrics[metrics.index("<h3>val_accuracy</h3>") :]
    for feature, n, rho in ranked:  # the correlation table, in wpipe correlate's order
        table = table[table.index(f"<td>{html.escape(feature)}</td>") :]
        assert f'<td class="num">{n}</td><td class="num">{report.esc(rho)}</td>' in table[:200]
    figure = next(
        json.loads(t)
        for _, t in SPEC_SCRIPT.findall(page)
        if json.loads(t).get("title", {}).get("text", "").startswith("val_accuracy vs ")
    )
    assert figure["title"]["text"].startswith(f"val_accuracy vs {ranked[0][0]} · Spearman ρ")
    drift = section(page, "drift")
    assert f"{len(series)} checkpoint series" in drift and "k3_conv2d" in drift


def test_overview_counts_match_the_fixtures(page):
    total = sum(expected(name)[0]["count_params"] for name in ZOO) + 4 * 3 + 3
    models = len(ZOO) + 1
    assert f"{models} models in" in page
    assert f"{total:,} parameters" in page
    assert "1 files could not be read" in page


def test_every_embedded_figure_is_valid_and_within_budget(page):
    specs = SPEC_SCRIPT.findall(page)
    figures = re.findall(r'<div class="vis" data-spec="spec-(\d+)">', page)
    assert len(specs) == len(figures) >= 8
    assert [n for n, _ in specs] == figures
    validator = jsonschema.Draft7Validator(vega_lite_schema())
    for _, text in specs:
        assert "<" not in text  # nothing inside can close the <script> element
        spec = json.loads(text)
        validator.validate(spec)
        assert 0 < len(data_rows(spec)) <= charts.ROW_BUDGET


def test_model_supplied_text_is_escaped_everywhere(page):
    assert EVIL_LAYER not in page and EVIL_MODEL not in page and EVIL_METRIC not in page
    assert "alert(1)</script>" not in page
    assert html.escape(EVIL_MODEL) in page  # shown as text in the tables
    assert html.escape(EVIL_LAYER) in page
    assert html.escape(EVIL_METRIC) in page  # the metric's heading and table
    health = section(page, "health")
    assert html.escape(EVIL_LAYER) in health and html.escape(EVIL_MODEL) in health
    # It reaches the figures too, as data the browser never parses as HTML.
    in_specs = [json.loads(t) for _, t in SPEC_SCRIPT.findall(page)]
    assert any(EVIL_MODEL in json.dumps(s) for s in in_specs)
    # The only script elements: the inlined library, one per figure, the loader.
    assert page.count("<script") == 1 + len(in_specs) + 1
    assert page.lower().count("</script>") == page.count("<script")


def test_report_is_self_contained(page):
    assert "window.vegaEmbed" in page  # Vega, Vega-Lite and vega-embed are inlined
    start = page.index("<script>")
    outside = page[:start] + page[page.index("</script>", start) :]  # the library's own code
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=", outside)
    assert "<link" not in outside
    assert '"editor": false' in page or '"editor":false' in page


def test_report_of_an_empty_database(tmp_path):
    db = store.Database(tmp_path / "empty.duckdb")
    db.close()
    con = wpipe.connect(tmp_path / "empty.duckdb")
    text = report.build_report(con)
    con.close()
    assert "No models are ingested" in text and '<section id="overview">' in text
    assert not SPEC_SCRIPT.findall(text)


def test_report_of_chosen_models_only(db_path):
    con = wpipe.connect(db_path)
    text = report.build_report(con, models=["k2_conv2d", "k3_conv2d"])
    con.close()
    assert "2 models in 1 architecture groups" in text
    assert "k2_lstm" not in text and 'id="gates"' not in text
    assert 'id="filters"' in text


def test_cli_report_writes_the_file(db_path, tmp_path):
    db = tmp_path / "copy.duckdb"
    shutil.copy2(db_path, db)
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert str(out) in result.output
    picked = runner.invoke(
        app, ["report", "--db", str(db), "-o", str(tmp_path / "p.html"), "-m", "k2_lstm"]
    )
    assert picked.exit_code == 0 and "1 models in" in (tmp_path / "p.html").read_text()
    unknown = runner.invoke(app, ["report", "--db", str(db), "-m", "nope", "-o", str(out)])
    assert unknown.exit_code == 2 and "no model is named" in unknown.output
    no_db = runner.invoke(app, ["report", "--db", str(tmp_path / "none.duckdb")])
    assert no_db.exit_code == 2


def test_report_over_500_models_is_bounded(tmp_path):
    # speed is measured by `make bench`, not here: this checks that every table and figure
    # of a 500-model report stays within the row budget
    con = wpipe.connect(many_models(tmp_path))
    text = report.build_report(con)
    con.close()
    assert "500 models in 4 architecture groups" in text
    # the summary comes first, naming the groups by their layers, not by a hash
    summary = section(text, "overview")
    assert text.index('<section id="overview">') < text.index("<figure")
    assert "Sequential: Conv2D, BatchNormalization, Conv2D, Dense" in summary
    assert re.search(r"Health findings</a>: stale in 48 models", summary)
    # long tables come after the figures, bounded, with the query that lists every row
    models = section(text, "models")
    assert text.index('<section id="models">') > text.rindex("<figure")
    assert models.count("<tr>") == report.MAX_TABLE_ROWS + 1  # and the header
    assert f"the first {report.MAX_TABLE_ROWS} of 500 by name" in models
    assert "wpipe query &#x27;SELECT * FROM model_summary&#x27;" in models
    assert text.count("<tr>") < 1000
    for _, spec in SPEC_SCRIPT.findall(text):
        assert len(data_rows(json.loads(spec))) <= charts.ROW_BUDGET


def test_a_figure_set_aside_from_its_data_gives_altairs_own_spec(db_path):
    # the report serialises charts with their inline rows set aside (for speed): the spec
    # must be the one Altair writes for the same chart, rows included
    from wpipe.report.document import spec_of

    con = wpipe.connect(db_path)
    try:
        for draw in (charts.param_counts, charts.stat_heatmap, charts.weight_histograms,
                     charts.checkpoint_drift, charts.filter_norms):  # fmt: skip
            want = draw(con).to_dict()
            got = spec_of(draw(con))
            assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
            assert data_rows(got)
    finally:
        con.close()
