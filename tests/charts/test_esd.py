"""Spectral density: the histogram holds numpy's eigenvalues of WᵀW, the line is the stored
power law (slope −α from xmin), xmin is marked, and α and D are in the legend."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from wpipe import charts

from tests.charts.conftest import data_rows, tensor

FIT = (
    "SELECT alpha, xmin, D, num_pl_spikes, num_evals, lambda_max FROM spectra "
    "JOIN models USING (model_id) WHERE name = $m AND layer_path = $l AND weight_name = $w "
    "AND matrix = 'full'"
)


def test_esd_histogram_holds_the_eigenvalues_and_the_line_is_the_stored_fit(con):
    spec = charts.spectral_density(con, models=["k2_lstm"], layer="embedding", weight="embeddings")
    spec = spec.to_dict()
    alpha, xmin, d, tail, n, top = con.execute(
        FIT, {"m": "k2_lstm", "l": "embedding", "w": "embeddings"}
    ).fetchone()
    w = tensor("k2_lstm.h5", "embedding", "embeddings")
    numpy_eigen = np.sort(np.linalg.svd(w, compute_uv=False) ** 2)  # the ESD of WᵀW
    stored = con.execute(
        "SELECT value FROM eigenvalues JOIN models USING (model_id) WHERE name = $m "
        "AND layer_path = $l AND weight_name = $w AND matrix = 'full' ORDER BY value",
        {"m": "k2_lstm", "l": "embedding", "w": "embeddings"},
    ).fetchnumpy()["value"]
    # the stored spectrum is numpy's within the spectra's stated tolerance (a float32 Gram)...
    np.testing.assert_allclose(stored, numpy_eigen, rtol=1e-6)
    # ...and the histogram bins exactly what is stored (an eigenvalue within 1e-6 of an
    # interior bin edge could fall on either side of it in numpy's float64 spectrum)
    eigen = stored
    rows = data_rows(spec)
    hist = sorted((r for r in rows if r["kind"] == "hist"), key=lambda r: r["bin"])
    assert sum(r["count"] for r in hist) == np.sum(eigen > 0) == n
    for r in hist:
        last = r is hist[-1]
        inside = (eigen >= r["lam_lo"] * (1 - 1e-9)) & (
            eigen <= r["lam_hi"] * (1 + 1e-9) if last else eigen < r["lam_hi"]
        )
        assert r["count"] == inside.sum()
        assert r["density"] == pytest.approx(r["count"] / (n * (r["lam_hi"] - r["lam_lo"])))
    fit = sorted((r for r in rows if r["kind"] == "fit"), key=lambda r: r["lam"])
    assert fit[0]["lam"] == pytest.approx(xmin) and fit[-1]["lam"] == pytest.approx(top)
    for a, b in itertools.pairwise(fit):  # a straight line of slope −α on log–log axes
        slope = math.log(b["density"] / a["density"]) / math.log(b["lam"] / a["lam"])
        assert slope == pytest.approx(-alpha, rel=1e-9)
    # at xmin the line is the tail's share of the eigenvalues times the power law's density
    assert fit[0]["density"] == pytest.approx(tail / n * (alpha - 1) / xmin)
    assert [r["lam"] for r in rows if r["kind"] == "xmin"] == [pytest.approx(xmin)]
    legend = {r["series"] for r in rows}
    assert legend == {f"k2_lstm · α = {alpha:.2f}, D = {d:.3f}"}
    assert spec["layer"][0]["encoding"]["x"]["scale"]["type"] == "log"
    assert "log scale" in spec["layer"][0]["encoding"]["y"]["title"]


def test_esd_overlays_models_and_the_small_multiples_cover_the_layers(con):
    spec = charts.spectral_density(con, models=["k2_lstm", "k3_lstm"], layer="embedding",
                                   weight="embeddings").to_dict()  # fmt: skip
    assert {r["series"].split(" · ")[0] for r in data_rows(spec)} == {"k2_lstm", "k3_lstm"}
    layers = charts.spectral_density_layers(con, models=["k2_lstm"]).to_dict()
    fitted = con.execute(
        "SELECT count(*) FROM spectra JOIN models USING (model_id) "
        "WHERE name = 'k2_lstm' AND alpha IS NOT NULL AND xmin > 0"
    ).fetchone()[0]
    groups = {r["group"] for r in data_rows(layers)}
    assert len(groups) == fitted >= 1
    assert all("α = " in g and "D = " in g for g in groups)
    assert len(data_rows(layers)) <= charts.ROW_BUDGET
    with pytest.raises(charts.NoData):
        charts.spectral_density(con, models=["k2_lstm"], layer="dense")
    assert "xmin" in json.dumps(spec["title"])
