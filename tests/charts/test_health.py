"""Health overview: flagged tensors per model against the sick fixtures' truth."""

from __future__ import annotations

import json

import pytest
from wpipe import charts

from tests.charts.conftest import (
    data_rows,
    h5_layers,
)
from tests.conftest import EXPECTED


def test_health_overview_counts_the_flagged_tensors_of_each_model(sweep, sweep_zoo):
    rows = data_rows(charts.health_overview(sweep).to_dict())
    got = {(r["model"], r["flag"]): r["tensors"] for r in rows if r["tensors"]}
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
    assert {r["flag"] for r in rows} == {f for f, _, _ in charts.HEALTH_FLAGS}
    assert len(rows) == 3 * len(charts.HEALTH_FLAGS)  # only models with findings
    with pytest.raises(charts.NoData):
        charts.health_overview(sweep, models=["cnn_lr1e-3/e01"])
