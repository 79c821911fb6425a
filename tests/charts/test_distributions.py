"""Histograms, the statistic heatmap and percentile boxes against numpy on the Keras arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import wpipe
from wpipe import charts

from tests.charts.conftest import (
    data_rows,
    make_zoo,
    tensor,
)
from tests.conftest import EXPECTED, Warehouse

# ----------------------------------------------------------------------------- histograms


def test_histograms_from_values_match_numpy_on_common_bins(con):
    a = tensor("k2_lstm.h5", "lstm", "kernel")
    b = tensor("k3_lstm.h5", "lstm", "kernel")
    chart = charts.weight_histograms(
        con, models=["k2_lstm", "k3_lstm"], layer="lstm", weight="kernel", bins=12
    )
    rows = data_rows(chart.to_dict())
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    for name, array in (("k2_lstm", a), ("k3_lstm", b)):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["bin"])
        counts, edges = np.histogram(array, bins=12, range=(lo, hi))
        assert [r["count"] for r in mine] == counts.tolist()
        assert [r["lo"] for r in mine] == pytest.approx(edges[:-1].tolist())
        assert [r["hi"] for r in mine] == pytest.approx(edges[1:].tolist())
        assert sum(r["fraction"] for r in mine) == pytest.approx(1.0)
    assert "exact from weight_values" in json.dumps(chart.to_dict()["title"])


def test_merged_histograms_equal_numpy_when_bins_align_and_keep_every_value(con):
    a = tensor("k2_conv2d.h5", "conv2", "kernel")
    one = charts.weight_histograms(
        con, models=["k2_conv2d"], layer="conv2", bins=64, source="histograms"
    )
    rows = sorted(data_rows(one.to_dict()), key=lambda r: r["bin"])
    counts, _ = np.histogram(a, bins=64)
    assert [r["count"] for r in rows] == pytest.approx(counts.tolist(), abs=1e-6)

    two = charts.weight_histograms(
        con, models=["k2_conv2d", "k3_conv2d"], layer="conv2", bins=10, source="histograms"
    )
    rows = data_rows(two.to_dict())
    b = tensor("k3_conv2d.h5", "conv2", "kernel")
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    for name, array in (("k2_conv2d", a), ("k3_conv2d", b)):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["bin"])
        assert sum(r["count"] for r in mine) == pytest.approx(array.size)
        exact, _ = np.histogram(array, bins=10, range=(lo, hi))
        # Spreading a stored bin over its width moves a value at most into a neighbour bin.
        assert np.abs(np.array([r["count"] for r in mine]) - exact).sum() <= array.size * 0.5


def test_histogram_default_layer_is_the_most_common_one(con):
    spec = charts.weight_histograms(con, models=["k2_conv2d", "k3_conv2d", "k2_lstm"]).to_dict()
    # conv1, conv2 and out are in two models each; conv2 is the largest
    assert spec["title"]["text"].startswith("conv2 · kernel")
    assert {r["model"] for r in data_rows(spec)} == {"k2_conv2d", "k3_conv2d"}


# ----------------------------------------------------------------------------- heatmap, boxes


def test_heatmap_values_are_the_statistic_of_each_tensor(con):
    chart = charts.stat_heatmap(con, models=["k2_dense_bn_frozen", "k2_conv2d"], stat="l2")
    rows = {(r["model"], r["tensor"]): r["value"] for r in data_rows(chart.to_dict())}
    want = {
        ("k2_dense_bn_frozen", layer): np.linalg.norm(
            tensor("k2_dense_bn_frozen.h5", layer, "kernel")
        )
        for layer in ("d1", "frozen", "out")
    } | {
        ("k2_conv2d", layer): np.linalg.norm(tensor("k2_conv2d.h5", layer, "kernel"))
        for layer in ("conv1", "conv2", "out")
    }
    assert rows.keys() == want.keys()
    for key, value in want.items():
        assert rows[key] == pytest.approx(value, rel=1e-9)


def test_heatmap_labels_tell_tensors_of_one_layer_apart_and_filters_work(con):
    bidi = data_rows(charts.stat_heatmap(con, models=["k2_bidi_td"], stat="std").to_dict())
    assert {r["tensor"] for r in bidi} == {"bidi · forward/kernel", "bidi · backward/kernel", "td"}
    every = data_rows(
        charts.stat_heatmap(con, models=["k2_conv2d"], roles=None, layers=["conv*"]).to_dict()
    )
    assert {r["tensor"] for r in every} == {
        "conv1 · kernel",
        "conv1 · bias",
        "conv2 · kernel",
        "conv2 · bias",
    }
    std = {r["tensor"]: r["value"] for r in every}
    assert std["conv1 · bias"] == pytest.approx(np.std(tensor("k2_conv2d.h5", "conv1", "bias")))
    with pytest.raises(ValueError, match="stat must be one of"):
        charts.stat_heatmap(con, stat="std; DROP TABLE models")


def test_boxes_carry_the_percentiles_of_each_tensor(con):
    rows = data_rows(charts.distribution_boxes(con, models=["k2_lstm", "k3_lstm"]).to_dict())
    assert {(r["model"], r["tensor"]) for r in rows} == {
        (m, t) for m in ("k2_lstm", "k3_lstm") for t in ("lstm", "dense")
    }
    for row in rows:
        layer = row["tensor"]
        array = tensor(f"{row['model']}.h5", layer, "kernel")
        want = np.percentile(array, [1, 5, 25, 50, 75, 95, 99])
        got = [row[k] for k in ("p01", "p05", "p25", "p50", "p75", "p95", "p99")]
        assert got == pytest.approx(want.tolist(), rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------- data modes


def test_sampled_values_are_labelled_and_missing_values_fall_back_or_say_so(tmp_path):
    (tmp_path / "sampled").mkdir()
    (tmp_path / "none").mkdir()
    sampled = Warehouse(tmp_path / "sampled")
    sampled.ingest(make_zoo(tmp_path / "zoo", ["k2_conv2d.h5", "k2_lstm.h5"]), values="sample:20")
    con = wpipe.connect(sampled.db_path)
    auto = charts.weight_histograms(con, models=["k2_conv2d"], layer="conv2")
    assert "merged from the stored" in json.dumps(auto.to_dict()["title"])  # all values count
    hist = charts.weight_histograms(con, models=["k2_conv2d"], layer="conv2", source="values")
    assert "from a sample of 20 of 216 values" in json.dumps(hist.to_dict()["title"])
    assert sum(r["count"] for r in data_rows(hist.to_dict())) == 20
    # filter norms come from `units`, exact whatever --values kept
    norms = charts.filter_norms(con, models=["k2_conv2d"])
    assert "exact" in json.dumps(norms.to_dict()["title"])
    kernel = tensor("k2_conv2d.h5", "conv2", "kernel")
    got = sorted((r for r in data_rows(norms.to_dict()) if r["layer"] == "conv2"),
                 key=lambda r: r["first"])  # fmt: skip
    want = np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]).astype(np.float64), axis=0)
    assert [r["norm"] for r in got] == pytest.approx(want.tolist(), rel=1e-6)
    assert "sample" in json.dumps(charts.gate_histograms(con).to_dict()["title"])
    con.close()

    none = Warehouse(tmp_path / "none")
    none.ingest(tmp_path / "zoo", values="none")
    con = wpipe.connect(none.db_path)
    hist = charts.weight_histograms(con, models=["k2_conv2d"], layer="conv2", bins=64)
    assert "merged from the stored" in json.dumps(hist.to_dict()["title"])
    counts, _ = np.histogram(tensor("k2_conv2d.h5", "conv2", "kernel"), bins=64)
    got = [r["count"] for r in sorted(data_rows(hist.to_dict()), key=lambda r: r["bin"])]
    assert got == pytest.approx(counts.tolist(), abs=1e-6)
    with pytest.raises(charts.NoData):
        charts.gate_histograms(con)
    assert len(data_rows(charts.filter_norms(con, models=["k2_conv2d"]).to_dict())) > 0
    con.close()


# ----------------------------------------------------------------------------- defaults


def test_default_histogram_and_boxes_keep_one_architecture(con):
    arch = dict(con.execute("SELECT name, arch_id FROM models").fetchall())
    for chart in (charts.weight_histograms(con), charts.distribution_boxes(con)):
        spec = chart.to_dict()
        drawn = {r["model"] for r in data_rows(spec)}
        assert len({arch[m] for m in drawn}) == 1, drawn
    # the boxes' layer is in models of other architectures too: they are left out, and said so
    assert "of other architectures left out" in json.dumps(spec["title"])
    # models named explicitly are all drawn, whatever their architecture
    chosen = ["k2_conv2d", "k2_lstm"]
    spec = charts.distribution_boxes(con, models=chosen).to_dict()
    assert {r["model"] for r in data_rows(spec)} == set(chosen)
    axis = spec["spec"]["layer"][0]["encoding"]["x"]["axis"]
    assert axis["labelAngle"] and "labels" not in axis  # the boxes are named on the x axis


def test_common_range_is_numpys_for_alike_models_and_fences_off_an_outlier():
    rng = np.random.default_rng(7)
    arrays = [rng.normal(0, s, size=2000) for s in (0.05, 0.06, 0.08)]

    def spread(arrays):
        return [(a.min(), a.max(), np.percentile(a, 5), np.percentile(a, 95)) for a in arrays]

    lo, hi = charts.distributions.common_range(spread(arrays))
    assert (lo, hi) == (min(a.min() for a in arrays), max(a.max() for a in arrays))
    outlier = rng.normal(0, 5.0, size=2000)
    lo, hi = charts.distributions.common_range(spread([*arrays, outlier]))
    assert lo <= min(a.min() for a in arrays) and hi >= max(a.max() for a in arrays)
    assert hi < outlier.max() / 5 and lo > outlier.min() / 5  # not stretched by the outlier


def test_values_beyond_the_common_range_are_counted_in_overflow_markers(tmp_path):
    warehouse = Warehouse(tmp_path)
    warehouse.ingest(make_zoo(tmp_path / "zoo", ["k2_health_cnn.h5"]))
    con = wpipe.connect(warehouse.db_path)
    spec = charts.weight_histograms(con, layer="explode", bins=20).to_dict()
    con.close()
    kernel = np.load(EXPECTED / "k2_health_cnn.h5.npz")["explode/0"].astype(np.float64).ravel()
    rows = {r["bin"]: r for r in data_rows(spec)}
    inside = [rows[b] for b in range(20)]
    lo, hi = inside[0]["lo"], inside[-1]["hi"]
    assert hi < kernel.max() / 100  # the one huge weight does not stretch the bins
    assert rows[20]["count"] == np.sum(kernel > hi) == 1
    assert -1 not in rows or rows[-1]["count"] == np.sum(kernel < lo)
    counts, _ = np.histogram(kernel[(kernel >= lo) & (kernel <= hi)], bins=20, range=(lo, hi))
    assert [r["count"] for r in inside] == counts.tolist()
    title = json.dumps(spec["title"], ensure_ascii=False)
    assert "the triangles at its ends count the values beyond it" in title
