"""Every chart: valid Vega-Lite, renders to PNG, stays under the row budget at 500 models;
the registry, model references and the `wpipe chart` command."""

from __future__ import annotations

import json
import shutil

import altair as alt
import jsonschema
import pytest
import wpipe
from typer.testing import CliRunner
from wpipe import charts
from wpipe.cli import app

from tests.charts.conftest import (
    ACTIVATION_CHARTS,
    DEMO,
    LINEAGE_CHARTS,
    SWEEP_CHARTS,
    data_rows,
    png_size,
    vega_lite_schema,
)
from tests.conftest import Warehouse

runner = CliRunner()

# ----------------------------------------------------------------------------- every chart


@pytest.mark.parametrize(
    "name",
    [n for n in charts.CHARTS if n not in SWEEP_CHARTS + ACTIVATION_CHARTS + LINEAGE_CHARTS],
)
def test_every_chart_is_valid_vega_lite_and_renders_to_png(name, con, tmp_path):
    chart = charts.CHARTS[name](con)
    spec = chart.to_dict()  # Altair validates against the Vega-Lite schema here
    jsonschema.Draft7Validator(vega_lite_schema()).validate(spec)
    assert spec["$schema"].endswith(f"{alt.SCHEMA_VERSION}.json")
    rows = data_rows(spec)
    assert 0 < len(rows) <= charts.ROW_BUDGET
    assert "title" in spec
    png = charts.save_chart(chart, tmp_path / f"{name}.png")
    width, height = png_size(png.read_bytes())
    assert width > 300 and height > 150


def test_chart_list_names_every_chart_with_a_summary():
    assert set(charts.CHARTS) == {
        "histogram",
        "heatmap",
        "boxes",
        "params",
        "compute",
        "gates",
        "filter-norms",
        "matrix",
        "filters",
        "esd",
        "esd-layers",
        *SWEEP_CHARTS,
        *ACTIVATION_CHARTS,
        *LINEAGE_CHARTS,
    }
    for name in charts.CHARTS:
        assert len(charts.summary(name)) > 20


@pytest.mark.parametrize("name", SWEEP_CHARTS)
def test_series_metric_and_health_charts_are_valid_and_render_to_png(name, sweep, tmp_path):
    chart = charts.CHARTS[name](sweep)
    spec = chart.to_dict()
    jsonschema.Draft7Validator(vega_lite_schema()).validate(spec)
    rows = data_rows(spec)
    assert 0 < len(rows) <= charts.ROW_BUDGET
    assert spec["title"]["text"]
    png = charts.save_chart(chart, tmp_path / f"{name}.png")
    width, height = png_size(png.read_bytes())
    assert width > 300 and height > 150


def test_models_are_named_by_name_path_or_id_prefix(con):
    path, model_id = con.execute(
        "SELECT path, model_id FROM models WHERE name = 'k2_conv2d'"
    ).fetchone()
    for ref in ("k2_conv2d", path, model_id[:7]):
        rows = data_rows(charts.param_counts(con, models=[ref]).to_dict())
        assert {r["model"] for r in rows} == {"k2_conv2d"}
    with pytest.raises(LookupError, match="no model is named"):
        charts.param_counts(con, models=["no-such-model"])
    with pytest.raises(charts.NoData):
        charts.gate_histograms(con, models=["k2_conv2d"])


@pytest.mark.parametrize(
    "name", [n for n in charts.CHARTS if n not in ACTIVATION_CHARTS + LINEAGE_CHARTS]
)
def test_charts_over_500_models_stay_under_the_row_budget(name, many_db):
    con = wpipe.connect(many_db)
    assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 500
    spec = charts.CHARTS[name](con).to_dict()
    rows = data_rows(spec)
    assert 0 < len(rows) <= charts.ROW_BUDGET
    drawn = {r.get("model") or r.get("a") for r in rows}
    if name == "heatmap":  # every model the budget allows
        assert len(drawn) > 250
    elif name == "params":  # past 40 models one bar per architecture group: 4 originals
        assert sorted(drawn) == sorted(spec["encoding"]["y"]["sort"])
        assert len(drawn) == 4 and all(b.endswith("(125 models)") for b in drawn)
    elif name == "compute":  # one bar per architecture past 40 models: 4 originals
        assert len(drawn) == 4 and all(b.endswith("(125 models)") for b in drawn)
    elif name == "metric":  # every model having the best-ranked statistic (2 of 4 kinds or more)
        assert len(drawn) >= 250
    elif name == "drift":  # four series of 125 checkpoints, every layer
        assert len({r["series"] for r in rows}) == 4 and len(drawn) == 4 * 124
    elif name == "health":  # every model with a finding (a stale checkpoint)
        assert len(drawn) == 4 * 12
    elif name == "esd-layers":  # the layers of one model
        assert len(drawn) == 1
    else:  # gates stacks an LSTM and a GRU panel, each with its own title
        assert "evenly spaced" in json.dumps([spec["title"], *spec.get("vconcat", [])])
    con.close()


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_db(db_path, tmp_path):
    copy = tmp_path / "cli.duckdb"
    shutil.copy2(db_path, copy)
    return str(copy)


def test_cli_chart_list_has_one_line_per_chart():
    result = runner.invoke(app, ["chart", "--list"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(charts.CHARTS)


@pytest.mark.parametrize(
    ("args", "suffix"),
    [
        (["heatmap", "-s", "max_abs", "-m", "k2_conv2d", "-m", "k3_conv2d"], ".png"),
        (["histogram", "-l", "lstm", "-w", "recurrent_kernel", "--bins", "16"], ".vl.json"),
        (["gates", "-l", "bidi"], ".svg"),
        (["boxes", "-r", "kernel", "-r", "bias", "-l", "conv*"], ".html"),
    ],
)
def test_cli_chart_writes_the_file_in_the_suffix_format(args, suffix, cli_db, tmp_path):
    out = tmp_path / f"chart{suffix}"
    result = runner.invoke(app, ["chart", *args, "-o", str(out), "--db", cli_db])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    if suffix == ".png":
        assert png_size(data)[0] > 100
    elif suffix == ".vl.json":
        spec = json.loads(data)
        assert {r["bin"] for r in data_rows(spec)} == set(range(16))
        assert "recurrent_kernel" in spec["title"]["text"]
    elif suffix == ".svg":
        assert data.lstrip().startswith(b"<svg")
    else:
        assert b"window.vegaEmbed" in data


def test_cli_chart_errors(cli_db, tmp_path):
    out = str(tmp_path / "x.png")
    cases = [
        (["chart", "-o", out], 2, "name the chart"),
        (["chart", "nope", "-o", out], 2, "no chart is named 'nope'"),
        (["chart", "heatmap"], 2, "-o FILE"),
        (["chart", "heatmap", "-o", str(tmp_path / "x.gif")], 2, "unknown format"),
        (["chart", "gates", "-s", "std", "-o", out], 2, "takes no --stat"),
        (["chart", "histogram", "-l", "a", "-l", "b", "-o", out], 2, "give --layer once"),
        (["chart", "heatmap", "-s", "bogus", "-o", out], 2, "stat must be one of"),
        (["chart", "params", "-m", "nope", "-o", out], 2, "no model is named"),
        (["chart", "gates", "-m", "k2_conv2d", "-o", out], 1, "nothing to draw"),
        (["chart", "metric", "-o", out], 1, "wpipe metrics add"),
        (["chart", "heatmap", "--series", "x", "-o", out], 2, "takes no --series"),
        (["chart", "params", "--metric", "x", "-o", out], 2, "takes no --metric"),
        (["chart", "drift", "--series", "nope", "-o", out], 2, "no checkpoint series"),
        (["chart", "distance", "-l", "a", "-l", "b", "-o", out], 2, "give --layer once"),
        (["chart", "--no-such-option"], 2, ""),
    ]
    for args, code, message in cases:
        result = runner.invoke(app, [*args, "--db", cli_db])
        assert result.exit_code == code, (args, result.output)
        assert message in result.output, (args, result.output)
    missing = runner.invoke(app, ["chart", "params", "-o", out, "--db", str(tmp_path / "no.db")])
    assert missing.exit_code == 2 and "wpipe ingest" in missing.output


def test_cli_draws_the_series_metric_and_health_charts(sweep, sweep_zoo, tmp_path):
    db = str(sweep_zoo.parent / "w.duckdb")
    cases = [
        (["drift", "--series", "cnn_lr3e-1", "-l", "conv*"], "Drift from checkpoint"),
        (["distance", "-l", "conv1", "-m", "cnn_lr1e-2/e05", "-m", "cnn_lr3e-1/e05"], "conv1:"),
        (["metric", "--metric", "val_loss", "-l", "fc", "-s", "max_abs"], "val_loss vs fc/kernel"),
        (["metric", "-s", "conv1/kernel: mean"], "val_accuracy vs conv1/kernel: mean ·"),
        (["health", "-m", "k2_health_cnn"], "Health findings per model"),
    ]
    for args, title in cases:
        out = tmp_path / f"{args[0]}.vl.json"
        result = runner.invoke(app, ["chart", *args, "-o", str(out), "--db", db])
        assert result.exit_code == 0, (args, result.output)
        spec = json.loads(out.read_text())
        assert spec["title"]["text"].startswith(title), (args, spec["title"])
    assert {
        r["layer"] for r in data_rows(json.loads((tmp_path / "drift.vl.json").read_text()))
    } == {
        "conv1",
        "conv2",
    }
    metric = runner.invoke(app, ["chart", "metric", "--metric", "nope", "-o", str(out), "--db", db])
    assert metric.exit_code == 2 and "no metric 'nope'" in metric.output


@pytest.fixture(scope="module")
def demo_without_values(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("demo-none")
    warehouse = Warehouse(root)
    result = warehouse.ingest(DEMO, values="none")
    assert result.ingested == 17 and not result.failed
    return str(warehouse.db_path)


@pytest.mark.parametrize("name", ["matrix", "filters", "esd", "esd-layers"])
def test_cli_draws_the_matrix_filter_and_esd_charts_with_and_without_values(
    name, sweep_zoo, demo_without_values, tmp_path
):
    specs = []
    for db in (str(sweep_zoo.parent / "w.duckdb"), demo_without_values):
        out = tmp_path / f"{name}.vl.json"
        result = runner.invoke(app, ["chart", name, "-o", str(out), "--db", db])
        assert result.exit_code == 0, result.output
        specs.append(json.loads(out.read_text()))
        assert 0 < len(data_rows(specs[-1])) <= charts.ROW_BUDGET
    lstm = runner.invoke(
        app,
        ["chart", "matrix", "-l", "lstm", "-s", "peak", "-o", str(tmp_path / "m.png"),
         "--db", demo_without_values],
    )  # fmt: skip
    assert lstm.exit_code == 0, lstm.output
