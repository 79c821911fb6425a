"""The matrix chart: cells equal the Keras arrays (pooled: numpy's mean of each block), gate
separators at the gate columns, Bidirectional halves as panels, one scale centred at 0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import wpipe
from wpipe import charts, store
from wpipe.analyse import tiles
from wpipe.analyse.tables import ValuesMode
from wpipe.ingest.driver import ingest

from tests.charts.conftest import data_rows, make_zoo, tensor
from tests.conftest import Warehouse


def cells(spec: dict, panel: str | None = None) -> list[dict]:
    return [
        r for r in data_rows(spec) if r["kind"] == "cell" and (panel is None or r["panel"] == panel)
    ]


def test_matrix_cells_are_the_weights_and_conv_kernels_are_kh_kw_in_by_out(con):
    spec = charts.weight_matrix(con, models=["k2_conv2d"], layer="conv2").to_dict()
    kernel = tensor("k2_conv2d.h5", "conv2", "kernel")  # (3, 3, 4, 6)
    matrix = kernel.reshape(-1, kernel.shape[-1])
    got = cells(spec)
    assert len(got) == matrix.size
    for r in got:
        assert r["mean"] == pytest.approx(matrix[r["row_start"], r["col_start"]], rel=1e-6)
    assert "drawn as (3 × 3 × 4) × 6" in json.dumps(spec["title"], ensure_ascii=False)
    scale = spec["spec"]["layer"][0]["encoding"]["color"]["scale"]
    assert scale["domainMid"] == 0 and "domain" not in scale  # its own scale, centred at 0
    shared = charts.weight_matrix(con, models=["k2_conv2d"], layer="conv2", shared_scale=True)
    scale = shared.to_dict()["spec"]["layer"][0]["encoding"]["color"]["scale"]
    assert scale["domain"] == [-np.abs(matrix).max(), np.abs(matrix).max()]  # centred at 0


@pytest.mark.parametrize(
    ("fixture", "layer", "weight", "gates"),
    [
        ("k2_lstm.h5", "lstm", "kernel", "ifco"),
        ("k2_lstm.h5", "lstm", "recurrent_kernel", "ifco"),
        ("k2_gru_reset_after.h5", "gru", "recurrent_kernel", "zrh"),
        ("k2_gru_reset_after.h5", "gru", "bias", "zrh"),  # (2, 3u): input and recurrent bias
    ],
)
def test_gate_separators_fall_between_the_gate_blocks(con, fixture, layer, weight, gates):
    model = fixture.removesuffix(".h5")
    spec = charts.weight_matrix(con, models=[model], layer=layer, weight=weight).to_dict()
    units = tensor(fixture, layer, weight).shape[-1] // len(gates)
    rows = data_rows(spec)
    rules = sorted(r["col_start"] for r in rows if r["kind"] == "gate")
    assert rules == [g * units for g in range(1, len(gates))]
    labels = {r["gate"]: r["col_start"] for r in rows if r["kind"] == "label"}
    assert labels == {g: (k + 0.5) * units for k, g in enumerate(gates)}


def test_gru_without_reset_after_and_bidirectional_halves(tmp_path, con):
    warehouse = Warehouse(tmp_path)
    warehouse.ingest(make_zoo(tmp_path / "zoo", ["k2_gru_reset_before.h5"]), values="none")
    before = wpipe.connect(warehouse.db_path)
    spec = charts.weight_matrix(before, layer="gru", weight="kernel").to_dict()
    before.close()
    units = tensor("k2_gru_reset_before.h5", "gru", "kernel").shape[-1] // 3
    assert sorted(r["col_start"] for r in data_rows(spec) if r["kind"] == "gate") == [
        units,
        2 * units,
    ]
    bidi = charts.weight_matrix(con, models=["k2_bidi_td"], layer="bidi").to_dict()
    panels = {r["panel"] for r in cells(bidi)}
    assert panels == {"k2_bidi_td · forward", "k2_bidi_td · backward"}
    for half in ("forward", "backward"):
        array = tensor("k2_bidi_td.h5", "bidi", f"{half}/kernel")
        got = cells(bidi, f"k2_bidi_td · {half}")
        assert sorted(r["mean"] for r in got) == pytest.approx(sorted(array.ravel().tolist()))
        gate_rows = [r for r in data_rows(bidi) if r["kind"] == "gate" and half in r["panel"]]
        assert sorted(r["col_start"] for r in gate_rows) == [4, 8, 12]  # LSTM, 4 units


def test_pooled_tiles_are_numpys_mean_of_each_block(tmp_path, monkeypatch):
    # the fixtures are small: pool them as a large tensor is pooled, at ingest
    monkeypatch.setattr(tiles, "TILE_EXACT", 100)
    monkeypatch.setattr(tiles, "TILE_GRID", 7)
    warehouse = Warehouse(tmp_path)
    db = store.Database(warehouse.db_path)
    zoo = make_zoo(tmp_path / "zoo", ["k2_lstm.h5"])
    # file_timeout=None reads the file in this process, where the patch holds
    ingest([zoo], db, warehouse.lake, values=ValuesMode("none"), file_timeout=None)
    db.close()
    con = wpipe.connect(warehouse.db_path)
    stored = con.execute(
        "SELECT row_start, row_end, col_start, col_end, mean, peak FROM weight_tiles "
        "WHERE layer_path = 'embedding' AND weight_name = 'embeddings'"
    ).fetchall()
    embeddings = tensor("k2_lstm.h5", "embedding", "embeddings")  # (50, 8)
    edges_r = [k * 50 // 7 for k in range(8)]
    edges_c = [k * 8 // 7 for k in range(8)]
    assert len(stored) == 49
    for r0, r1, c0, c1, mean, peak in stored:
        assert r0 in edges_r and r1 == edges_r[edges_r.index(r0) + 1]
        assert c0 in edges_c and c1 == edges_c[edges_c.index(c0) + 1]
        block = embeddings[r0:r1, c0:c1]
        assert mean == pytest.approx(block.mean(), rel=1e-6)
        assert peak == pytest.approx(block.flat[np.argmax(np.abs(block))], rel=1e-6)
    spec = charts.weight_matrix(con, layer="embedding", weight="embeddings").to_dict()
    assert len(cells(spec)) == 49 and "pooled" in json.dumps(spec["title"])
    con.close()


def test_matrix_pools_again_to_stay_within_the_row_budget(con, monkeypatch):
    monkeypatch.setattr(charts.base, "ROW_BUDGET", 60)
    spec = charts.weight_matrix(con, models=["k2_lstm"], layer="embedding", weight="embeddings")
    rows = data_rows(spec.to_dict())
    assert len(rows) <= 60
    embeddings = tensor("k2_lstm.h5", "embedding", "embeddings")
    for r in rows:
        block = embeddings[r["row_start"] : r["row_end"], r["col_start"] : r["col_end"]]
        assert r["mean"] == pytest.approx(block.mean(), rel=1e-6)
    with pytest.raises(ValueError, match="stat must be one of"):
        charts.weight_matrix(con, stat="std")
