"""Layer-output charts on the demo CNN runs after `wpipe activations`: valid Vega-Lite that
renders, and data equal to what numpy says about the stored rows."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import wpipe
from typer.testing import CliRunner
from wpipe import charts
from wpipe.cli import app

from tests.charts.conftest import ACTIVATION_CHARTS, data_rows, png_size, vega_lite_schema

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
RUNS = ("cnn_lr1e-3", "cnn_lr1e-2", "cnn_lr3e-1")


@pytest.fixture(scope="module")
def act(tmp_path_factory):
    root = tmp_path_factory.mktemp("act")
    for run in RUNS:
        (root / "zoo" / run).mkdir(parents=True)
        shutil.copy2(ROOT / "examples" / "models" / run / "e05.h5", root / "zoo" / run)
    db = str(root / "a.duckdb")
    assert runner.invoke(app, ["ingest", str(root / "zoo"), "--db", db, "-j", "1"]).exit_code == 0
    blobs = str(ROOT / "examples" / "inputs" / "blobs.npy")
    assert runner.invoke(app, ["activations", "--input", blobs, "--db", db]).exit_code == 0
    con = wpipe.connect(db)
    yield con
    con.close()


@pytest.mark.parametrize("name", ACTIVATION_CHARTS)
def test_activation_charts_are_valid_and_render(name, act, tmp_path):
    chart = charts.CHARTS[name](act)
    spec = chart.to_dict()
    jsonschema.Draft7Validator(vega_lite_schema()).validate(spec)
    assert 0 < len(data_rows(spec)) <= charts.ROW_BUDGET
    width, height = png_size(charts.save_chart(chart, tmp_path / f"{name}.png").read_bytes())
    assert width > 300 and height > 100


def test_dead_unit_heatmap_cells_are_the_stored_fractions(act):
    rows = data_rows(charts.dead_unit_heatmap(act).to_dict())
    assert {(r["model"], r["layer_path"]) for r in rows} == {
        (f"{run}/e05", layer) for run in RUNS for layer in ("conv1", "conv2", "fc")
    }  # the ReLU layers only
    units = act.execute(
        "SELECT m.name, u.layer_path, avg(u.dead::INT) FROM activation_units AS u "
        "JOIN models AS m USING (model_id) GROUP BY ALL"
    ).fetchall()
    want = {(n, lp): frac for n, lp, frac in units}
    for r in rows:
        assert r["dead_frac"] == pytest.approx(want[(r["model"], r["layer_path"])])
    assert {r["model"] for r in rows if r["flagged"]} == {"cnn_lr3e-1/e05"}


def test_unit_activity_defaults_to_the_deadest_relu_layer(act):
    rows = data_rows(charts.unit_activity(act).to_dict())
    assert {r["unit"] for r in rows} == set(range(16))
    dead = act.execute(
        "SELECT layer_path FROM activation_health WHERE rectifier GROUP BY layer_path "
        "ORDER BY sum(dead_units) DESC, layer_path LIMIT 1"
    ).fetchone()[0]
    stored = act.execute(
        "SELECT m.name, u.unit, u.active_frac FROM activation_units AS u JOIN models AS m "
        "USING (model_id) WHERE u.layer_path = ?",
        [dead],
    ).fetchall()
    assert sorted((r["model"], r["unit"], r["active_frac"]) for r in rows) == sorted(stored)


def test_unit_activity_draws_dead_units_as_full_height_red_cells(act):
    spec = charts.unit_activity(act, layer="fc").to_dict()
    jsonschema.Draft7Validator(vega_lite_schema()).validate(spec)
    dead = [r for r in data_rows(spec) if r["dead"]]
    # examples/README.md, recorded when the zoo was made: 15 of 16 fc units of the lr 0.3 run
    assert sum(r["model"] == "cnn_lr3e-1/e05" for r in dead) == 15
    assert all(r["active_frac"] == 0 for r in dead)  # a bar of no height: hence the cell
    cell, _, cross = spec["spec"]["layer"]
    assert cell["mark"]["type"] == "bar" and cell["encoding"]["y"]["field"] == "whole"
    assert {"filter": "datum.dead"} in cell["transform"]
    assert {"calculate": "1", "as": "whole"} in cell["transform"]
    assert cell["encoding"]["y"]["scale"]["domain"] == [0, 1]  # full height
    assert cross["mark"]["text"] == "×"


def test_activation_histograms_are_fractions_of_each_model(act):
    rows = data_rows(charts.activation_histograms(act, layer="fc").to_dict())
    for run in RUNS:
        total = sum(r["fraction"] for r in rows if r["model"] == f"{run}/e05")
        assert total == pytest.approx(1.0)
    assert np.all([r["fraction"] >= 0 for r in rows])


def test_report_has_a_layer_outputs_section(act):
    from wpipe.report import build_report

    html = build_report(act)
    assert "Layer outputs" in html and "dead_units_by_activation" in html


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """Two demo CNNs run on blobs, then on a random probe, then on half of blobs (`half`)."""
    root = tmp_path_factory.mktemp("probed")
    for run in ("cnn_lr1e-2", "cnn_lr3e-1"):
        (root / "zoo" / run).mkdir(parents=True)
        shutil.copy2(ROOT / "examples" / "models" / run / "e05.h5", root / "zoo" / run)
    db = str(root / "p.duckdb")
    assert runner.invoke(app, ["ingest", str(root / "zoo"), "--db", db, "-j", "1"]).exit_code == 0
    blobs = ROOT / "examples" / "inputs" / "blobs.npy"
    np.save(root / "half.npy", np.load(blobs)[:64])
    for args in (["--input", str(blobs)], ["--random", "8"], ["--input", str(root / "half.npy")]):
        done = runner.invoke(app, ["activations", *args, "--db", db])
        assert done.exit_code == 0, done.output
    return db


def _subtitle(spec: dict) -> list[str]:
    sub = spec["title"]["subtitle"]
    return [sub] if isinstance(sub, str) else sub


@pytest.mark.parametrize("name", ACTIVATION_CHARTS)
def test_layer_output_charts_default_to_the_latest_real_data_and_say_so(name, probed, tmp_path):
    con = wpipe.connect(probed)
    try:
        assert [n for _, n, _ in charts.input_sets(con, charts.model_ids(con))] == [
            "half.npy",  # real data, the most recent
            "blobs.npy",
            "random:8",  # a probe comes last, however recent
        ]
        spec = charts.CHARTS[name](con).to_dict()
    finally:
        con.close()
    jsonschema.Draft7Validator(vega_lite_schema()).validate(spec)
    notes = _subtitle(spec)
    assert any(n.startswith("input set half.npy; also stored: blobs.npy, random:8") for n in notes)
    out = tmp_path / f"{name}.vl.json"
    drawn = runner.invoke(
        app, ["chart", name, "--input-set", "random:8", "--db", probed, "-o", str(out)]
    )
    assert drawn.exit_code == 0, drawn.output
    notes = _subtitle(json.loads(out.read_text()))
    assert any(n.startswith("input set random:8 (a random probe, not data)") for n in notes)


def test_input_set_option_is_refused_where_it_means_nothing_and_checked(probed, tmp_path):
    out = str(tmp_path / "x.vl.json")
    refused = runner.invoke(app, ["chart", "heatmap", "--input-set", "blobs.npy", "--db", probed,
                                  "-o", out])  # fmt: skip
    assert refused.exit_code != 0 and "takes no --input-set" in refused.output
    unknown = runner.invoke(app, ["chart", "dead-units", "--input-set", "nope", "--db", probed,
                                  "-o", out])  # fmt: skip
    assert unknown.exit_code != 0
    assert "stored: half.npy, blobs.npy, random:8" in unknown.output
    by_stem = runner.invoke(app, ["chart", "dead-units", "--input-set", "blobs", "--db", probed,
                                  "-o", out])  # fmt: skip
    assert by_stem.exit_code == 0, by_stem.output  # blobs.npy without its suffix
    assert "input set blobs.npy;" in (tmp_path / "x.vl.json").read_text()


def test_report_draws_each_real_set_or_the_one_asked_for(probed, tmp_path):
    page = tmp_path / "r.html"
    assert runner.invoke(app, ["report", "--db", probed, "-o", str(page)]).exit_code == 0
    html = page.read_text()
    heads = re.findall(r"<h3>On input set ([^<]*)</h3>", html)
    assert heads == ["half.npy", "blobs.npy"]
    assert "not drawn: random:8" in html
    done = runner.invoke(
        app, ["report", "--db", probed, "-o", str(page), "--input-set", "random:8"]
    )
    assert done.exit_code == 0, done.output
    heads = re.findall(r"<h3>On input set ([^<]*)</h3>", page.read_text())
    assert heads == ["random:8 (a random probe, not data)"]
