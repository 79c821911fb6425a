"""Lineage charts: valid Vega-Lite, render to PNG, and show the numbers of the lineage views."""

from __future__ import annotations

import shutil

import jsonschema
import pytest
import wpipe
from typer.testing import CliRunner
from wpipe import charts, store
from wpipe.cli import app
from wpipe.compare.lineage import set_base

from tests.charts.conftest import LINEAGE_CHARTS, data_rows, png_size, vega_lite_schema
from tests.conftest import FIXTURES, Warehouse

TUNES = ["tunes/low_digits", "tunes/high_digits", "tunes/low_digits_b", "tunes/frozen_h1"]
runner = CliRunner()


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage_charts")
    shutil.copytree(FIXTURES / "lineage", root / "family")
    w = Warehouse(root)
    assert not w.ingest(root / "family").failed
    db = store.Database(w.db_path)
    ids = {n: m for m, n in db.con.execute("SELECT model_id, name FROM models").fetchall()}
    for tune in TUNES:
        set_base(db.con, ids[tune], ids["series/e5"])
    db.close()
    con = wpipe.connect(str(w.db_path))
    yield con, w
    con.close()


@pytest.mark.parametrize("name", LINEAGE_CHARTS)
def test_lineage_charts_are_valid_and_render(name, family, tmp_path):
    con, _ = family
    chart = charts.CHARTS[name](con)
    spec = chart.to_dict()
    jsonschema.Draft7Validator(vega_lite_schema()).validate(spec)
    rows = data_rows(spec)
    assert 0 < len(rows) <= charts.ROW_BUDGET
    png = charts.save_chart(chart, tmp_path / f"{name}.png")
    width, height = png_size(png.read_bytes())
    assert width > 300 and height > 150


def test_the_agreement_grid_is_the_views_cosines(family):
    con, _ = family
    rows = data_rows(charts.update_agreement(con).to_dict())
    assert len(rows) == len(TUNES) * (len(TUNES) - 1)
    view = dict(((a, b), c) for a, b, c in con.execute(
        "SELECT model_a, model_b, cosine FROM update_agreement WHERE layer_path IS NULL"
    ).fetchall())  # fmt: skip
    for r in rows:
        assert r["cosine"] == pytest.approx(view[r["model_a"], r["model_b"]])


def test_update_sizes_mark_the_frozen_layer_and_keep_network_order(family):
    con, _ = family
    spec = charts.update_sizes(con).to_dict()
    rows = data_rows(spec)
    frozen = {(r["model"], r["layer"]) for r in rows if r["untouched"]}
    assert frozen == {("tunes/frozen_h1", "h1")}
    assert spec["layer"][0]["encoding"]["x"]["sort"] == ["h1", "h2", "out"]


def test_the_spectrum_defaults_to_the_kernel_with_the_largest_update(family):
    con, _ = family
    spec = charts.update_spectrum(con).to_dict()
    (layer, weight) = con.execute(
        "SELECT base_layer_path, weight_name FROM updates WHERE weight_name = 'kernel' "
        "ORDER BY update_l2 DESC LIMIT 1"
    ).fetchone()
    assert f"{layer} · {weight}" in spec["title"]["text"]
    assert all(r["relative"] <= 1.0 + 1e-12 for r in data_rows(spec))


def test_wpipe_chart_draws_them(family, tmp_path):
    _, w = family
    out = tmp_path / "agreement.vl.json"
    result = runner.invoke(
        app, ["chart", "agreement", "-o", str(out), "-l", "h2", "--db", str(w.db_path)]
    )
    assert result.exit_code == 0, result.output
    assert out.exists()
