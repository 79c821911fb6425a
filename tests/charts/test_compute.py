"""The compute chart: parameters and multiply-adds per model, as Keras and the papers count."""

from __future__ import annotations

from wpipe import charts

from tests.charts.conftest import data_rows, expected


def test_bars_are_keras_parameter_counts_and_the_models_multiply_adds(con):
    rows = data_rows(charts.compute_costs(con).to_dict())
    params = {r["model"]: r["value"] for r in rows if r["measure"] == "parameters"}
    macs = {r["model"]: r["value"] for r in rows if r["measure"] == "multiply-adds per sample"}
    spec, _ = expected("k3_conv2d.h5")
    assert params["k3_conv2d"] == spec["count_params"]
    # 8×8×3 input: conv 3×3 3→4 (6×6×4 × 27), conv 3×3 4→6 (4×4×6 × 36), Dense 6→3
    assert macs["k3_conv2d"] == 6 * 6 * 4 * 27 + 4 * 4 * 6 * 36 + 18
    assert set(macs) <= set(params)
