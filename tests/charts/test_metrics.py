"""Metric scatter: Spearman ρ of independently computed values, as wpipe correlate ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
from wpipe import charts, compare

from tests.charts.conftest import (
    RUNS,
    data_rows,
    h5_layers,
    history,
)


def test_metric_scatter_rho_is_spearman_of_independently_computed_values(sweep, sweep_zoo):
    chart = charts.metric_scatter(sweep, metric="val_accuracy", layer="conv2", stat="std")
    spec = chart.to_dict()
    rows = {r["model"]: r for r in data_rows(spec)}
    y = {k: v for run in RUNS for k, v in history(run).items()}
    x = {n: np.std(h5_layers(sweep_zoo / f"{n}.h5")["conv2"][0]) for n in y}
    assert rows.keys() == y.keys()  # one point per model with the metric (e06 has none)
    for name in y:
        assert rows[name]["x"] == pytest.approx(x[name], rel=1e-9)
        assert rows[name]["y"] == pytest.approx(y[name], rel=1e-9)
    rho = scipy.stats.spearmanr([x[n] for n in y], [y[n] for n in y]).statistic
    assert spec["title"]["text"] == (
        f"val_accuracy vs conv2/kernel: std · Spearman ρ = {rho:+.2f} (n = 15)"
    )
    assert {r["folder"] for r in rows.values()} == set(RUNS)


def test_metric_scatter_defaults_to_the_strongest_statistic_as_wpipe_correlate_ranks(sweep):
    ranked = compare.correlate(sweep, "val_accuracy")
    mine = charts.rank_correlations(sweep, "val_accuracy")
    assert [r[:2] for r in mine] == [r[:2] for r in ranked]
    assert [r[2] for r in mine] == pytest.approx([r[2] for r in ranked], abs=1e-12)
    spec = charts.metric_scatter(sweep).to_dict()  # val_accuracy: the validation metric
    feature, n, rho = ranked[0]
    assert spec["title"]["text"] == f"val_accuracy vs {feature} · Spearman ρ = {rho:+.2f} (n = {n})"
    rows = data_rows(spec)
    spearman = scipy.stats.spearmanr([r["x"] for r in rows], [r["y"] for r in rows]).statistic
    assert spearman == pytest.approx(rho, abs=1e-9)
    model = charts.metric_scatter(sweep, metric="val_loss", stat="model: max_abs").to_dict()
    assert model["title"]["text"].startswith("val_loss vs model: max_abs")
    picked = charts.metric_scatter(
        sweep, models=["cnn_lr1e-2/e01", "cnn_lr1e-2/e02"], stat="n_params"
    )
    assert "fewer than 8 models" in json.dumps(picked.to_dict()["title"])
    with pytest.raises(LookupError, match="no metric 'nope'"):
        charts.metric_scatter(sweep, metric="nope")
    with pytest.raises(ValueError, match="model statistic must be one of"):
        charts.metric_scatter(sweep, stat="bogus")


def test_metric_scatter_keeps_edge_points_whole_and_thins_crowded_ticks(sweep):
    spec = charts.metric_scatter(sweep, stat="model: zero_frac").to_dict()
    for channel in ("x", "y"):
        encoding = spec["encoding"][channel]
        assert encoding["scale"]["padding"] > 0  # a point at the data's edge is not cut
        assert encoding["axis"]["labelOverlap"] == "greedy"
