"""Defaults that show what the figures promise (issue #25), checked on the specs of the demo
sweep (three CNN runs, lr 0.3 with kernels ~10x larger, and two sick models): fields, scales,
sort orders, with Vega-Lite schema validation. Expected values come from the model files read
with h5py and numpy."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
from wpipe import charts
from wpipe.charts import anatomy

from tests.charts.conftest import data_rows, h5_layers, vega_lite_schema

SMALL, LARGE = "cnn_lr1e-3/e05", "cnn_lr3e-1/e05"  # the lr 0.3 kernels are far larger


def valid(chart) -> dict:
    spec = chart.to_dict()
    jsonschema.Draft7Validator(vega_lite_schema()).validate(spec)
    return spec


def _largest_kernel(path) -> str:
    """The layer of a Keras .h5 file whose kernel (its first weight) has the most values."""
    return max(h5_layers(path).items(), key=lambda kv: kv[1][0].size)[0]


def test_histogram_and_matrix_default_to_the_layer_with_the_most_parameters(sweep, sweep_zoo):
    largest = _largest_kernel(sweep_zoo / "cnn_lr1e-2" / "e01.h5")
    assert largest == "conv2"  # not the 4-unit output layer `probs`
    for draw in (charts.weight_histograms, charts.weight_matrix):
        spec = valid(draw(sweep))
        assert spec["title"]["text"].startswith(f"{largest} · kernel"), draw.__name__


def test_matrix_gives_each_model_its_scale_and_one_shared_on_request(sweep, sweep_zoo):
    chart = charts.weight_matrix(sweep, models=[SMALL, LARGE], layer="conv2")
    spec = valid(chart)
    assert spec["resolve"]["scale"]["color"] == "independent"
    color = spec["spec"]["layer"][0]["encoding"]["color"]
    assert color["scale"]["domainMid"] == 0 and "domain" not in color["scale"]
    assert color["legend"]  # each panel shows its scale
    for axis in ("x", "y"):  # rows and columns are whole numbers
        encoded = spec["spec"]["layer"][0]["encoding"][axis]["axis"]
        assert encoded["tickMinStep"] == 1 and encoded["format"] == "d"
    shared = valid(charts.weight_matrix(sweep, models=[SMALL, LARGE], layer="conv2",
                                        shared_scale=True))  # fmt: skip
    assert shared["resolve"]["scale"]["color"] == "shared"
    # the cells are pooled means (checked against numpy in test_matrix): the one scale spans
    # the largest |cell| of either panel
    cells = [r for r in data_rows(shared) if r["kind"] == "cell"]
    peak = {m: max(abs(r["mean"]) for r in cells if r["model"] == m) for m in (SMALL, LARGE)}
    domain = shared["spec"]["layer"][0]["encoding"]["color"]["scale"]["domain"]
    assert domain == pytest.approx([-max(peak.values()), max(peak.values())])
    # the two models' magnitudes differ ~10x (the files' own kernels): one scale for both
    # would blank the small one's panel
    kernels = [h5_layers(sweep_zoo / f"{m}.h5")["conv2"][0] for m in (SMALL, LARGE)]
    small, large = (np.abs(k).max() for k in kernels)
    assert large > 5 * small


def test_filter_tiles_get_a_scale_per_model_unless_shared(sweep):
    spec = valid(charts.filter_images(sweep, models=[SMALL, LARGE]))
    assert spec["resolve"]["scale"]["color"] == "independent"
    assert spec["spec"]["encoding"]["color"]["scale"]["domainMid"] == 0
    shared = valid(charts.filter_images(sweep, models=[SMALL, LARGE], shared_scale=True))
    assert shared["resolve"]["scale"]["color"] == "shared"


def test_histogram_y_axis_is_set_by_the_bins_not_the_overflow_markers(sweep):
    spec = valid(charts.weight_histograms(sweep, layer="conv2"))  # the 16 CNN checkpoints
    rows = data_rows(spec)
    bins = max(r["bin"] for r in rows)
    inside = max(r["fraction"] for r in rows if 0 <= r["bin"] < bins)
    outside = max(r["fraction"] for r in rows if r["bin"] in (-1, bins))
    assert outside > inside  # the lr 0.3 model has most of its weights beyond the range
    scale = spec["layer"][0]["encoding"]["y"]["scale"]
    assert scale["clamp"] is True
    assert scale["domain"] == pytest.approx([0, inside * 1.05])
    labels = [layer for layer in spec["layer"] if layer["mark"].get("type") == "text"]
    assert labels  # a clamped marker says its fraction


def test_heatmap_rows_in_network_order_grouped_by_architecture(sweep, sweep_zoo):
    spec = valid(charts.stat_heatmap(sweep))
    rows = spec["encoding"]["y"]["sort"]
    cnn = list(h5_layers(sweep_zoo / "cnn_lr1e-2" / "e01.h5"))  # the file's layer order
    lstm = list(h5_layers(sweep_zoo / "k2_health_lstm.h5"))
    assert rows[: len(cnn)] == cnn  # the largest group (16 CNN checkpoints) first
    rest = rows[len(cnn) :]
    assert [r for r in rest if r in lstm] == [r for r in lstm if r in rest]
    models = spec["encoding"]["x"]["sort"]
    first_other = min(k for k, m in enumerate(models) if not m.startswith("cnn_"))
    assert all(m.startswith("cnn_") for m in models[:first_other])  # columns grouped too
    assert not any(m.startswith("cnn_") for m in models[first_other:])


def test_parameters_on_a_log_axis_and_grouped_past_the_threshold(sweep, monkeypatch):
    spec = valid(charts.param_counts(sweep))
    x = spec["encoding"]["x"]
    assert x["scale"]["type"] == "log" and x["scale"]["clamp"] is True
    n_models = sweep.execute("SELECT count(*) FROM models").fetchone()[0]
    assert len(spec["encoding"]["y"]["sort"]) == n_models  # 18 models: a bar each
    monkeypatch.setattr(anatomy, "GROUP_MODELS_ABOVE", n_models - 1)
    grouped = valid(charts.param_counts(sweep))
    bars = grouped["encoding"]["y"]["sort"]
    # 3 runs x 5 epochs and e06 (one architecture), the sick CNN, the sick LSTM
    assert len(bars) == 3
    counts = sorted(int(b.rsplit("(", 1)[1].split()[0]) for b in bars)
    assert counts == [1, 1, 16]
    per_bar = {}
    for r in data_rows(grouped):
        per_bar[r["model"]] = per_bar.get(r["model"], 0) + r["n_params"]
    cnn = next(b for b in bars if "(16 models)" in b)
    path = sweep.execute("SELECT path FROM models WHERE name = ?", [SMALL]).fetchone()[0]
    truth = sum(w.size for ws in h5_layers(path).values() for w in ws)
    assert per_bar[cnn] == truth  # a group's bar is one model's count, not the sum
