"""Parameter counts, gate histograms and filter norms against Keras's counts and numpy."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import wpipe
from wpipe import charts

from tests.charts.conftest import (
    ZOO,
    data_rows,
    tensor,
)
from tests.conftest import Warehouse, expected, write_legacy_h5

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
    monkeypatch.setattr(charts.base, "ROW_BUDGET", 6)
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


def test_gates_without_a_layer_draw_the_lstm_and_the_gru(con):
    spec = charts.gate_histograms(con, bins=6).to_dict()
    lstm, gru = spec["vconcat"]
    assert {r["gate"] for r in data_rows(lstm)} == {charts.GATE_TITLES[g] for g in "ifco"}
    assert {r["gate"] for r in data_rows(gru)} == {charts.GATE_TITLES[g] for g in "zrh"}
    assert lstm["title"]["text"].startswith("lstm:") and gru["title"]["text"].startswith("gru:")
    assert len(data_rows(spec)) <= charts.ROW_BUDGET
