"""Charts: valid Vega-Lite specs, numbers that match numpy on the fixture arrays, the row budget.

The database is built by ingesting the real Keras fixtures; expected numbers come from the
arrays Keras saved (tests/fixtures/expected/*.npz), computed here with numpy.
"""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import struct
from collections import defaultdict
from pathlib import Path

import altair as alt
import h5py
import jsonschema
import numpy as np
import pytest
import scipy.stats
import wpipe
from typer.testing import CliRunner
from wpipe import charts, compare, schema, store
from wpipe.cli import app

from tests.conftest import EXPECTED, MODELS, Warehouse, expected, write_legacy_h5

runner = CliRunner()

ZOO = [
    "k2_conv2d.h5",
    "k3_conv2d.h5",
    "k2_lstm.h5",
    "k3_lstm.h5",
    "k2_gru_reset_after.h5",
    "k2_bidi_td.h5",
    "k2_dense_bn_frozen.h5",
    "k2_mha.h5",
]


# Charts of checkpoint series, metrics and health findings draw on the demo zoo's sweep (three
# learning rates × five epochs, with Keras's history.csv), a checkpoint saved twice (e06 is a
# copy of e05: every tensor stale) and the two models made sick on purpose.
DEMO = Path(__file__).resolve().parents[1] / "examples" / "models"
RUNS = ["cnn_lr1e-2", "cnn_lr1e-3", "cnn_lr3e-1"]
SWEEP_CHARTS = ["drift", "distance", "metric", "health"]


def make_zoo(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(MODELS / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def db_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("charts")
    warehouse = Warehouse(root)
    report = warehouse.ingest(make_zoo(root / "zoo", ZOO))
    assert report.ingested == len(ZOO) and not report.failed
    return warehouse.db_path


@pytest.fixture(scope="module")
def con(db_path):
    connection = wpipe.connect(db_path)
    yield connection
    connection.close()


def tensor(fixture: str, layer_path: str, weight_name: str) -> np.ndarray:
    """The array Keras saved for a tensor of a fixture, as float64."""
    spec, arrays = expected(fixture)
    for w in spec["weights"]:
        if w["layer_path"] == layer_path and w["weight_name"] == weight_name:
            return arrays[w["key"]].astype(np.float64)
    raise KeyError((fixture, layer_path, weight_name))


def data_rows(spec: dict) -> list[dict]:
    """Every inline data row of a Vega-Lite spec (top-level, nested and named datasets)."""
    rows: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and isinstance(data.get("values"), list):
                rows.extend(data["values"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    for values in spec.get("datasets", {}).values():
        rows.extend(values)
    return rows


def vega_lite_schema() -> dict:
    major = alt.SCHEMA_VERSION.split(".")[0]
    return importlib.import_module(f"altair.vegalite.{major}.schema.core").load_schema()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------- every chart


@pytest.mark.parametrize("name", [n for n in charts.CHARTS if n not in SWEEP_CHARTS])
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
        "gates",
        "filter-norms",
        *SWEEP_CHARTS,
    }
    for name in charts.CHARTS:
        assert len(charts.summary(name)) > 20


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


# ----------------------------------------------------------------------------- params


def test_param_counts_sum_each_layer_class_as_keras_counts(con):
    rows = data_rows(charts.param_counts(con).to_dict())
    got = {(r["model"], r["class_name"]): r["n_params"] for r in rows}
    for fixture in ZOO:
        spec, _ = expected(fixture)
        want: dict[str, int] = defaultdict(int)
        for layer in spec["layers"]:
            if layer["n_params"]:
                want[layer["class_name"]] += layer["n_params"]
        model = fixture.removesuffix(".h5")
        assert {c: n for (m, c), n in got.items() if m == model} == want
        assert sum(want.values()) == spec["count_params"]


# ----------------------------------------------------------------------------- gates


def test_lstm_gates_split_the_kernel_columns_into_i_f_c_o(con):
    chart = charts.gate_histograms(con, models=["k2_lstm"], bins=8)
    rows = data_rows(chart.to_dict())
    for weight in ("kernel", "recurrent_kernel"):
        array = tensor("k2_lstm.h5", "lstm", weight)
        units = array.shape[1] // 4
        for g, gate in enumerate(charts.LSTM_GATES):
            block = array[:, g * units : (g + 1) * units]
            counts, _ = np.histogram(block, bins=8, range=(array.min(), array.max()))
            mine = sorted(
                (
                    r
                    for r in rows
                    if r["weight"] == weight and r["gate"] == charts.GATE_TITLES[gate]
                ),
                key=lambda r: r["bin"],
            )
            assert [r["count"] for r in mine] == counts.tolist(), (weight, gate)


def test_gru_gates_are_z_r_h_and_bidirectional_halves_are_separate_rows(con):
    gru = data_rows(charts.gate_histograms(con, models=["k2_gru_reset_after"], bins=5).to_dict())
    array = tensor("k2_gru_reset_after.h5", "gru", "recurrent_kernel")
    units = array.shape[1] // 3
    for g, gate in enumerate(charts.GRU_GATES):
        block = array[:, g * units : (g + 1) * units]
        mine = [
            r
            for r in gru
            if r["weight"] == "recurrent_kernel" and r["gate"] == charts.GATE_TITLES[gate]
        ]
        assert sum(r["count"] for r in mine) == block.size
        counts, _ = np.histogram(block, bins=5, range=(array.min(), array.max()))
        assert [r["count"] for r in sorted(mine, key=lambda r: r["bin"])] == counts.tolist()
    bidi = data_rows(charts.gate_histograms(con, models=["k2_bidi_td"]).to_dict())
    assert {r["weight"] for r in bidi} == {
        "forward/kernel",
        "forward/recurrent_kernel",
        "backward/kernel",
        "backward/recurrent_kernel",
    }
    assert {r["gate"] for r in bidi} == {charts.GATE_TITLES[g] for g in charts.LSTM_GATES}


# ----------------------------------------------------------------------------- filter norms


def test_filter_norms_are_the_l2_norm_of_each_output_filter(con):
    rows = data_rows(charts.filter_norms(con, models=["k2_conv2d"]).to_dict())
    for layer in ("conv1", "conv2"):
        kernel = tensor("k2_conv2d.h5", layer, "kernel")
        want = np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0)
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["first"])
        assert [r["first"] for r in mine] == list(range(kernel.shape[-1]))
        assert [r["norm"] for r in mine] == pytest.approx(want.tolist(), rel=1e-6)


def test_transposed_conv_filters_are_on_the_axis_before_last(tmp_path):
    kernel = np.random.default_rng(1).normal(size=(2, 2, 6, 5)).astype(np.float32)
    config = {
        "class_name": "Sequential",
        "config": {
            "name": "up",
            "layers": [{"class_name": "Conv2DTranspose", "config": {"name": "up", "filters": 6}}],
        },
    }
    (tmp_path / "zoo").mkdir()
    write_legacy_h5(
        tmp_path / "zoo" / "up.h5",
        {"up": {"up/kernel:0": kernel, "up/bias:0": np.zeros(6, np.float32)}},
        config=config,
    )
    warehouse = Warehouse(tmp_path)
    warehouse.ingest(tmp_path / "zoo")
    con = wpipe.connect(warehouse.db_path)
    rows = sorted(data_rows(charts.filter_norms(con).to_dict()), key=lambda r: r["first"])
    want = np.linalg.norm(np.moveaxis(kernel.astype(np.float64), 2, -1).reshape(-1, 6), axis=0)
    assert [r["norm"] for r in rows] == pytest.approx(want.tolist(), rel=1e-6)
    con.close()


def test_filters_share_cells_when_the_budget_is_small(con, monkeypatch):
    monkeypatch.setattr(charts, "ROW_BUDGET", 6)
    rows = data_rows(charts.filter_norms(con, models=["k2_conv2d"]).to_dict())
    assert len(rows) <= 6
    kernel = tensor("k2_conv2d.h5", "conv2", "kernel")
    norms = np.linalg.norm(kernel.reshape(-1, 6), axis=0)
    cells = sorted((r for r in rows if r["layer"] == "conv2"), key=lambda r: r["first"])
    size = cells[0]["last"] - cells[0]["first"] + 1
    assert size > 1
    for cell in cells:
        group = norms[cell["first"] : cell["last"] + 1]
        assert cell["norm"] == pytest.approx(group.mean(), rel=1e-6)
        assert cell["max_norm"] == pytest.approx(group.max(), rel=1e-6)


# ----------------------------------------------------------------------------- series, health


@pytest.fixture(scope="module")
def sweep_zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    zoo = make_zoo(root / "zoo", ["k2_health_cnn.h5", "k2_health_lstm.h5"])
    for run in RUNS:
        shutil.copytree(DEMO / run, zoo / run)
    shutil.copy2(zoo / "cnn_lr1e-2" / "e05.h5", zoo / "cnn_lr1e-2" / "e06.h5")
    result = Warehouse(root).ingest(zoo)
    assert result.ingested == 18 and not result.failed
    return zoo


@pytest.fixture(scope="module")
def sweep(sweep_zoo):
    connection = wpipe.connect(sweep_zoo.parent / "w.duckdb")
    yield connection
    connection.close()


def h5_layers(path: Path) -> dict[str, list[np.ndarray]]:
    """Every weight array of a Keras 2 .h5 file by layer, read with h5py alone, as float64."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            for name in group[layer].attrs["weight_names"]:
                name = name.decode() if isinstance(name, bytes) else name
                out[layer].append(np.asarray(group[layer][name], dtype=np.float64))
    return {k: v for k, v in out.items() if v}


def history(run: str) -> dict[str, float]:
    """val_accuracy per checkpoint name from Keras's CSVLogger file (epoch k is e0{k+1})."""
    with open(DEMO / run / "history.csv", newline="") as fh:
        return {
            f"{run}/e{int(r['epoch']) + 1:02d}": float(r["val_accuracy"])
            for r in csv.DictReader(fh)
        }


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
    monkeypatch.setattr(charts, "ROW_BUDGET", 30)
    spec = charts.checkpoint_drift(sweep).to_dict()
    rows = data_rows(spec)
    assert len(rows) <= 30
    assert "(and the last) of each series" in json.dumps(spec["title"])
    kept = {(r["series"], r["epoch"]) for r in rows}
    assert ("cnn_lr1e-2", 6) in kept and ("cnn_lr1e-3", 5) in kept  # the last ones stay


def test_distance_matrix_matches_numpy_and_is_symmetric(sweep, sweep_zoo):
    # e06 is the only file of its name, so its model name is not widened with its folder
    names = ["cnn_lr1e-2/e01", "cnn_lr1e-2/e05", "e06", "cnn_lr3e-1/e05"]
    spec = charts.distance_heatmap(sweep, models=names, layer="conv2").to_dict()
    got = {(r["a"], r["b"]): r["distance"] for r in data_rows(spec)}
    files = {n: sweep_zoo / f"{'cnn_lr1e-2/e06' if n == 'e06' else n}.h5" for n in names}
    arrays = {n: np.concatenate([x.ravel() for x in h5_layers(files[n])["conv2"]]) for n in names}
    assert len(got) == 16
    for a in names:
        for b in names:
            x, y = arrays[a], arrays[b]
            want = np.linalg.norm(x - y) / ((np.linalg.norm(x) + np.linalg.norm(y)) / 2)
            assert got[(a, b)] == pytest.approx(want, rel=1e-6, abs=1e-12), (a, b)
    assert got[("cnn_lr1e-2/e05", "e06")] == 0
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
        ("e06", "stale"): trainable,
    }
    dead = next(r for r in rows if r["model"] == "k2_health_cnn" and r["flag"] == "dead_units")
    n_dead = sum(len(truth[k]["index"]) for k in ("dead_filters", "dead_gammas", "dead_units"))
    assert dead["dead"] == f"{n_dead} of {6 + 6 + 8}"
    assert {r["flag"] for r in rows} == {f for f, _, _ in charts.HEALTH_FLAGS}
    assert len(rows) == 3 * len(charts.HEALTH_FLAGS)  # only models with findings
    with pytest.raises(charts.NoData):
        charts.health_overview(sweep, models=["cnn_lr1e-3/e01"])


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
    assert "estimated" in json.dumps(charts.filter_norms(con).to_dict()["title"])
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
    for draw in (charts.gate_histograms, charts.filter_norms):
        with pytest.raises(charts.NoData):
            draw(con)
    con.close()


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


# ----------------------------------------------------------------------------- save formats


def test_save_chart_writes_every_format(con, tmp_path):
    chart = charts.stat_heatmap(con, models=["k2_conv2d", "k3_conv2d"])
    spec = chart.to_dict()
    for name in ("h.vl.json", "h.json"):
        assert json.loads(charts.save_chart(chart, tmp_path / name).read_text()) == spec
    svg = charts.save_chart(chart, tmp_path / "h.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "conv1" in svg
    page = charts.save_chart(chart, tmp_path / "h.html").read_text()
    assert "window.vegaEmbed" in page  # the JavaScript is inlined: it opens offline
    assert "<script src" not in page and "<link" not in page
    with pytest.raises(ValueError, match="unknown chart format"):
        charts.save_chart(chart, tmp_path / "h.gif")


def test_html_escapes_model_supplied_names_inside_the_spec(tmp_path):
    evil = "</script><script>alert(1)</script>"
    spec = {"data": {"values": [{"name": evil}]}, "mark": "point"}
    text = charts.script_json(spec)
    assert "<" not in text and ">" not in text and json.loads(text) == spec


# ----------------------------------------------------------------------------- 500 models


def many_models(root: Path, n_models: int = 500) -> Path:
    """A database of n_models: a few real fixtures ingested with sampled values, then their
    rows copied under new model_ids and names (a cheap stand-in for a big sweep).

    Each original and its copies form a checkpoint series (epoch k = copy k) with made-up
    drift (every 10th checkpoint unchanged, so stale) and a val_accuracy; a copy's file is
    a link to its original's, so charts that read files (distance) can."""
    originals = ["k2_conv2d.h5", "k2_lstm.h5", "k2_gru_reset_after.h5", "k2_dense_bn_frozen.h5"]
    warehouse = Warehouse(root)
    warehouse.ingest(make_zoo(root / "zoo", originals), values="sample:50")
    copies = n_models // len(originals) - 1
    db = store.Database(warehouse.db_path)
    try:
        new_id = "left(md5(model_id || '#' || k.range::VARCHAR), 16)"
        for table in schema.MODEL_TABLES:
            columns = []
            for column in table.column_names:
                if column == "model_id":
                    columns.append(f"{new_id} AS model_id")
                elif column in ("name", "path"):
                    columns.append(f"{column} || '#' || lpad(k.range::VARCHAR, 3, '0')")
                else:  # qualified: eigenvalues has a column k, the alias below
                    columns.append(f'{table.name}."{column}"')
            db.con.execute(
                f"INSERT INTO {table.name} SELECT {', '.join(columns)} "
                f"FROM {table.name}, range(1, {copies + 1}) AS k"
            )
        _many_series(db.con, copies)
        for (path,) in db.con.execute("SELECT path FROM models WHERE path LIKE '%#%'").fetchall():
            Path(path).symlink_to(path.rsplit("#", 1)[0])
    finally:
        db.close()
    return warehouse.db_path


def _many_series(con, copies: int) -> None:
    copy = (
        "CASE WHEN {k} = 0 THEN m.model_id "
        "ELSE left(md5(m.model_id || '#' || {k}::VARCHAR), 16) END"
    )
    originals = "m.name NOT LIKE '%#%'"
    con.execute("DELETE FROM drift; DELETE FROM model_tags; DELETE FROM model_metrics")
    con.execute(
        f"INSERT INTO model_tags SELECT {copy.format(k='k.range')}, 'epoch', k.range "
        f"FROM models AS m, range(0, {copies + 1}) AS k WHERE {originals}"
    )
    con.execute(
        "INSERT INTO model_metrics SELECT t.model_id, 'val_accuracy', "
        "0.5 + 0.003 * t.value + (hash(t.model_id) % 100) / 1000, 'many.csv' "
        "FROM model_tags AS t"
    )
    con.execute(
        f"""
        INSERT INTO drift (model_a, model_b, layer_path, weight_name, size, rel_l2, cosine,
                           mean_abs_change, sign_flip_frac, max_abs_change, l2_a, l2_b,
                           l2_diff, series, sha256_a, sha256_b)
        SELECT {copy.format(k="(k.range - 1)")}, {copy.format(k="k.range")},
               w.layer_path, w.weight_name, w.size, r.rel, 1 - r.rel * r.rel / 2,
               r.rel * w.abs_mean, r.rel / 4, r.rel * w.max_abs, w.l2, w.l2, r.rel * w.l2,
               '/many/' || m.name, m.sha256, m.sha256
        FROM weights AS w JOIN models AS m USING (model_id), range(1, {copies + 1}) AS k,
        LATERAL (SELECT CASE WHEN k.range % 10 = 0 THEN 0.0
                 ELSE (1 + (hash(w.layer_path || k.range::VARCHAR) % 100) / 100) / (1 + k.range)
                 END AS rel) AS r
        WHERE {originals}
        """
    )


@pytest.fixture(scope="module")
def many_db(tmp_path_factory) -> Path:
    return many_models(tmp_path_factory.mktemp("many"))


@pytest.mark.parametrize("name", list(charts.CHARTS))
def test_charts_over_500_models_stay_under_the_row_budget(name, many_db):
    con = wpipe.connect(many_db)
    assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 500
    spec = charts.CHARTS[name](con).to_dict()
    rows = data_rows(spec)
    assert 0 < len(rows) <= charts.ROW_BUDGET
    drawn = {r.get("model") or r.get("a") for r in rows}
    if name in ("heatmap", "params"):  # these draw every model the budget allows
        assert len(drawn) > 250
    elif name == "metric":  # every model having the best-ranked statistic (2 of 4 kinds or more)
        assert len(drawn) >= 250
    elif name == "drift":  # four series of 125 checkpoints, every layer
        assert len({r["series"] for r in rows}) == 4 and len(drawn) == 4 * 124
    elif name == "health":  # every model with a finding (a stale checkpoint)
        assert len(drawn) == 4 * 12
    else:
        assert "evenly spaced" in json.dumps(spec["title"])
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
