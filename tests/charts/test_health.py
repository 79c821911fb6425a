"""Health overview: flagged tensors per model against the sick fixtures' truth."""

from __future__ import annotations

import json
import shutil

import pytest
import wpipe
from typer.testing import CliRunner
from wpipe import charts
from wpipe.cli import app
from wpipe.report import build_report

from tests.charts.conftest import DEMO, data_rows, h5_layers
from tests.conftest import EXPECTED, MODELS

runner = CliRunner()


def test_health_overview_counts_the_flagged_tensors_of_each_model(sweep, sweep_zoo):
    rows = data_rows(charts.health_overview(sweep).to_dict())
    got = {(r["model"], r["flag"]): r["findings"] for r in rows if r["findings"]}
    truth = json.loads((EXPECTED / "health_truth.json").read_text())
    trainable = sum(len(v) for v in h5_layers(sweep_zoo / "cnn_lr1e-2" / "e06.h5").values())
    assert got == {
        ("k2_health_cnn", "nan_or_inf"): 1,
        ("k2_health_cnn", "exploding"): 1,
        ("k2_health_cnn", "dead_units"): 3,  # conv filters, BN gammas, Dense units
        ("k2_health_lstm", "saturating_forget_gate"): 1,
        ("cnn_lr1e-2/e06", "stale"): trainable,
    }
    dead = next(r for r in rows if r["model"] == "k2_health_cnn" and r["flag"] == "dead_units")
    n_dead = sum(len(truth[k]["index"]) for k in ("dead_filters", "dead_gammas", "dead_units"))
    assert dead["dead"] == f"{n_dead} of {6 + 6 + 8}"
    flags = ["nan_or_inf", "exploding", "dead_units", "saturating_forget_gate", "stale"]
    assert {r["flag"] for r in rows} == set(flags)  # the flags that occur: no sparse
    assert len(rows) == 3 * len(flags)  # only models with findings
    with pytest.raises(charts.NoData):
        charts.health_overview(sweep, models=["cnn_lr1e-3/e01"])


@pytest.fixture(scope="module")
def both_kinds(tmp_path_factory):
    """A sick CNN (weight findings) and the lr 0.3 demo CNN after `wpipe activations` on
    blobs (layer-output findings: 15 of 16 units of conv2 and of fc never fire)."""
    root = tmp_path_factory.mktemp("both")
    zoo = root / "zoo"
    (zoo / "run").mkdir(parents=True)
    shutil.copy2(MODELS / "k2_health_cnn.h5", zoo)
    shutil.copy2(DEMO / "cnn_lr3e-1" / "e05.h5", zoo / "run" / "e05.h5")
    db = str(root / "b.duckdb")
    assert runner.invoke(app, ["ingest", str(zoo), "--db", db, "-j", "1"]).exit_code == 0
    blobs = str(DEMO.parent / "inputs" / "blobs.npy")
    done = runner.invoke(app, ["activations", "-m", "run/e05", "--input", blobs, "--db", db])
    assert done.exit_code == 0, done.output
    return db


def test_summary_chart_and_health_command_agree_on_both_kinds_of_findings(both_kinds):
    # the sick CNN's truth (health_truth.json, written with the fixture) and the demo's:
    # (findings, models) per flag
    want = {
        "nan_or_inf": (1, 1),
        "exploding": (1, 1),
        "dead_units": (3, 1),  # conv filters, BN gammas, Dense units
        "dead_units_by_activation": (2, 1),  # conv2 and fc of the lr 0.3 CNN
    }
    listed = runner.invoke(app, ["health", "--db", both_kinds, "-f", "json"])
    assert listed.exit_code == 0
    from_command: dict[str, list] = {}
    for row in json.loads(listed.output):
        for flag in row["flags"].split(", "):
            from_command.setdefault(flag, []).append(row["model"])
    assert {f: (len(m), len(set(m))) for f, m in from_command.items()} == want

    con = wpipe.connect(both_kinds)
    try:
        rows = data_rows(charts.health_overview(con).to_dict())
        page = build_report(con)
    finally:
        con.close()
    assert [f for f in charts.HEALTH_FLAGS if f in want] == list(want)
    assert {r["flag"] for r in rows} == set(want)  # a column per flag that occurs, no other
    drawn: dict[str, list] = {}
    for r in rows:
        if r["findings"]:
            drawn.setdefault(r["flag"], []).append((r["model"], r["findings"]))
    assert {f: (sum(n for _, n in v), len(v)) for f, v in drawn.items()} == want
    summary = page[page.index('id="overview"') : page.index('id="parameters"')]
    for flag, (n, m) in want.items():
        noun = "finding" if n == 1 else "findings"
        assert f"{flag} in {m} models ({n} {noun})" in summary
    assert "No health findings" not in page
