"""Checkpoint drift and model distance against numpy on the model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from wpipe import charts

from tests.charts.conftest import (
    RUNS,
    data_rows,
    h5_layers,
)


def test_drift_is_the_relative_change_of_each_layer_between_checkpoints(sweep, sweep_zoo):
    spec = charts.checkpoint_drift(sweep, series=["cnn_lr1e-2"]).to_dict()
    rows = data_rows(spec)
    arrays = {e: h5_layers(sweep_zoo / "cnn_lr1e-2" / f"e{e:02d}.h5") for e in range(1, 7)}
    want = {}
    for epoch in range(2, 7):
        a, b = arrays[epoch - 1], arrays[epoch]
        for layer in a:
            diff = sum(np.sum((y - x) ** 2) for x, y in zip(a[layer], b[layer], strict=True))
            want[(epoch, layer)] = np.sqrt(diff) / np.sqrt(sum(np.sum(x**2) for x in a[layer]))
    got = {(r["epoch"], r["layer"]): r["rel_l2"] for r in rows}
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    assert all(got[(6, layer)] == 0 for layer in arrays[1])  # e06 is e05 saved again
    assert {r["series"] for r in rows} == {"cnn_lr1e-2"}
    assert spec["spec"]["encoding"]["x"]["field"] == "epoch"
    # a layer that did not move is drawn at 0, which a log scale cannot show
    assert spec["spec"]["encoding"]["y"]["scale"]["type"] == "symlog"
    assert "(log scale, linear near 0)" in spec["spec"]["encoding"]["y"]["title"]


def test_drift_filters_series_layers_and_models(sweep):
    every = data_rows(charts.checkpoint_drift(sweep).to_dict())
    assert {r["series"] for r in every} == set(RUNS)
    some = data_rows(
        charts.checkpoint_drift(
            sweep,
            series=["*lr3e-1"],
            layers=["conv*"],
            models=[f"cnn_lr3e-1/e0{e}" for e in (1, 2, 4, 5)],
        ).to_dict()
    )
    # pairs whose two checkpoints were both chosen: e01→e02 and e04→e05
    assert {(r["from"], r["model"]) for r in some} == {
        ("cnn_lr3e-1/e01", "cnn_lr3e-1/e02"),
        ("cnn_lr3e-1/e04", "cnn_lr3e-1/e05"),
    }
    assert {r["layer"] for r in some} == {"conv1", "conv2"}
    with pytest.raises(LookupError, match="no checkpoint series is named 'nope'"):
        charts.checkpoint_drift(sweep, series=["nope"])
    with pytest.raises(charts.NoData):
        charts.checkpoint_drift(sweep, models=["k2_health_cnn", "k2_health_lstm"])


def test_drift_thins_checkpoints_to_the_row_budget(sweep, monkeypatch):
    monkeypatch.setattr(charts.base, "ROW_BUDGET", 30)
    spec = charts.checkpoint_drift(sweep).to_dict()
    rows = data_rows(spec)
    assert len(rows) <= 30
    assert "(and the last) of each series" in json.dumps(spec["title"])
    kept = {(r["series"], r["epoch"]) for r in rows}
    assert ("cnn_lr1e-2", 6) in kept and ("cnn_lr1e-3", 5) in kept  # the last ones stay


def test_distance_matrix_matches_numpy_and_is_symmetric(sweep, sweep_zoo):
    names = ["cnn_lr1e-2/e01", "cnn_lr1e-2/e05", "cnn_lr1e-2/e06", "cnn_lr3e-1/e05"]
    spec = charts.distance_heatmap(sweep, models=names, layer="conv2").to_dict()
    got = {(r["a"], r["b"]): r["distance"] for r in data_rows(spec)}
    files = {n: sweep_zoo / f"{n}.h5" for n in names}
    arrays = {n: np.concatenate([x.ravel() for x in h5_layers(files[n])["conv2"]]) for n in names}
    assert len(got) == 16
    for a in names:
        for b in names:
            x, y = arrays[a], arrays[b]
            want = np.linalg.norm(x - y) / ((np.linalg.norm(x) + np.linalg.norm(y)) / 2)
            assert got[(a, b)] == pytest.approx(want, rel=1e-6, abs=1e-12), (a, b)
    assert got[("cnn_lr1e-2/e05", "cnn_lr1e-2/e06")] == 0
    assert spec["title"]["text"] == "conv2: distance between models"


def test_distance_matrix_keeps_one_architecture_and_at_most_twelve_models(sweep):
    spec = charts.distance_heatmap(sweep).to_dict()
    drawn = {r["a"] for r in data_rows(spec)}
    assert len(drawn) == charts.MAX_DISTANCE_MODELS
    assert not any(n.startswith("k2_health") for n in drawn)  # the CNN checkpoints only
    notes = json.dumps(spec["title"])
    assert "12 of 16 models" in notes and "2 selected models of other architectures" in notes
    # the default layer holds the most parameters (conv2: 5·5·8·16 + 16)
    assert spec["title"]["text"].startswith("conv2")
    with pytest.raises(charts.NoData, match="share an architecture"):
        charts.distance_heatmap(sweep, models=["k2_health_cnn", "cnn_lr1e-2/e01"])
