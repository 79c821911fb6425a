"""Weight anatomy and health flags on models made sick on purpose through Keras's own
set_weights (tests/fixtures/make_health_fixtures.py): each flag fires exactly where the truth
says and nowhere else; gate and unit slices equal numpy slices of Keras's get_weights()."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.conftest import EXPECTED, MODELS, Warehouse

TRUTH = json.loads((EXPECTED / "health_truth.json").read_text())
SICK = [f"{w}_health_{kind}.h5" for w in ("k2", "k3") for kind in ("cnn", "lstm")]
HEALTHY = ["k2_conv2d.h5", "k3_lstm.h5", "k2_mha.h5", "k2_bidi_td.h5", "k2_nested.h5"]
FLAGS = ["nan_or_inf", "exploding", "has_dead_units", "saturating_forget_gate", "sparse"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    w = Warehouse(tmp_path_factory.mktemp("health"))
    # not a checkpoint series: k2_ and k3_ twins hold equal arrays and would read as "stale"
    assert not w.ingest(*[MODELS / n for n in SICK + HEALTHY], drift=False).failed
    return w


def flagged(w: Warehouse, flag: str) -> set[tuple[str, str, str]]:
    rows = w.query(f"SELECT model, layer_path, weight_name FROM weight_health WHERE {flag}")
    return set(rows)


def test_each_flag_fires_exactly_where_the_truth_says(loaded):
    where = {
        "nan_or_inf": [TRUTH["nan_or_inf"]],
        "exploding": [TRUTH["exploding"]],
        "has_dead_units": [TRUTH[k] for k in ("dead_filters", "dead_gammas", "dead_units")],
        "saturating_forget_gate": [TRUTH["saturating_forget_gate"]],
        "sparse": [],
    }
    for flag in FLAGS:
        want = {
            (f"{writer}_health_{'lstm' if t['layer_path'] == 'lstm' else 'cnn'}",
             t["layer_path"], t["weight_name"])
            for writer in ("k2", "k3") for t in where[flag]
        }  # fmt: skip
        assert flagged(loaded, flag) == want, flag


@pytest.mark.parametrize("kind", ["dead_filters", "dead_gammas", "dead_units"])
def test_dead_unit_indices(loaded, kind):
    t = TRUTH[kind]
    rows = loaded.query(
        "SELECT index FROM units JOIN models USING (model_id) WHERE name = 'k2_health_cnn' "
        "AND layer_path = ? AND weight_name = ? AND max_abs < "
        "(SELECT value FROM settings WHERE name = 'dead_abs') ORDER BY index",
        [t["layer_path"], t["weight_name"]],
    )
    assert [i for (i,) in rows] == t["index"]


def test_thresholds_live_in_the_settings_table(loaded):
    before = flagged(loaded, "exploding")
    loaded.query("UPDATE settings SET value = 1e9 WHERE name IN ('explode_abs', 'explode_ratio')")
    try:
        assert before and flagged(loaded, "exploding") == set()
    finally:
        loaded.query("UPDATE settings SET value = 100 WHERE name = 'explode_abs'")
        loaded.query("UPDATE settings SET value = 1000 WHERE name = 'explode_ratio'")


def test_lstm_gate_slices_equal_numpy_slices_of_keras_arrays(loaded):
    with np.load(EXPECTED / "k2_health_lstm.h5.npz") as arrays:
        kernel, recurrent, bias = (arrays[f"lstm/{i}"] for i in range(3))
    u = bias.size // 4
    for name, array in (("kernel", kernel), ("recurrent_kernel", recurrent), ("bias", bias)):
        rows = loaded.query(
            "SELECT gate, index, mean, l2, max_abs FROM units JOIN models USING (model_id) "
            "WHERE name = 'k2_health_lstm' AND layer_path = 'lstm' AND weight_name = ? "
            "AND axis = ? ORDER BY gate, index",
            [name, "gate"],
        )
        cols = array.reshape(-1, 4 * u).astype(np.float64)
        for gate, g in zip("ifco", range(4), strict=True):
            block = cols[:, g * u : (g + 1) * u]
            row = next(r for r in rows if r[0] == gate)
            assert row[2:] == pytest.approx(
                [block.mean(), np.linalg.norm(block), np.abs(block).max()]
            )
        units = loaded.query(
            "SELECT gate, index, std FROM units JOIN models USING (model_id) "
            "WHERE name = 'k2_health_lstm' AND layer_path = 'lstm' AND weight_name = ? "
            "AND axis = 'unit'",
            [name],
        )
        assert len(units) == 4 * u
        for gate, index, std in units:
            column = cols[:, "ifco".index(gate) * u + index]
            # stored at the float32 weights' own precision (docs: values): half an ulp
            assert std == pytest.approx(column.std(), rel=2**-24, abs=1e-12)


def test_conv_filters_and_mha_heads_are_numpy_slices(loaded):
    with np.load(EXPECTED / "k2_health_cnn.h5.npz") as arrays:
        kernel = arrays["conv/0"].astype(np.float64)
    rows = loaded.query(
        "SELECT index, l2, size FROM units JOIN models USING (model_id) "
        "WHERE name = 'k2_health_cnn' AND layer_path = 'conv' AND weight_name = 'kernel' "
        "ORDER BY index"
    )
    assert [(i, s) for i, _, s in rows] == [(f, kernel[..., f].size) for f in range(6)]
    assert [r[1] for r in rows] == pytest.approx([np.linalg.norm(kernel[..., f]) for f in range(6)])
    heads = loaded.query(
        "SELECT count(*), min(size) FROM units JOIN models USING (model_id) "
        "WHERE name = 'k2_mha' AND weight_name = 'query/kernel' AND axis = 'head'"
    )
    assert heads == [(2, 8 * 4)]


def test_bidirectional_halves_carry_their_direction(loaded):
    rows = loaded.query(
        "SELECT DISTINCT direction, weight_name FROM units JOIN models USING (model_id) "
        "WHERE name = 'k2_bidi_td' AND layer_path = 'bidi' ORDER BY ALL"
    )
    assert {d for d, _ in rows} == {"forward", "backward"}
    assert all(n.startswith(d + "/") for d, n in rows)


def test_health_command_lists_findings_worst_first(loaded):
    runner = CliRunner()
    result = runner.invoke(app, ["health", "--db", str(loaded.db_path), "-f", "json"])
    assert result.exit_code == 0
    findings = json.loads(result.output)
    assert findings[0]["flags"] == "nan_or_inf"
    assert {f["model"] for f in findings} == {n.removesuffix(".h5") for n in SICK}
    one = runner.invoke(app, ["health", "-m", "k3_health_lstm", "--db", str(loaded.db_path), "-f",
                              "csv"])  # fmt: skip
    assert one.exit_code == 0 and one.output.count("\n") == 2
    assert "saturating_forget_gate" in one.output


def test_a_changed_default_reaches_old_databases_but_a_users_value_stays(loaded):
    """explode_ratio's default went from 50 to 1000 (docs/health.md): a database still at the
    old default and text takes the new one when the views are applied; a user's value stays."""
    from wpipe import store, views

    old_doc = (
        "or when max |w| exceeds this many robust standard deviations (IQR / 1.349) of its tensor"
    )
    db = store.Database(loaded.db_path)
    try:
        con = db.con
        for value, want in ((50.0, 1000.0), (77.0, 77.0)):
            con.execute(
                "UPDATE settings SET value = ?, doc = ? WHERE name = 'explode_ratio'",
                [value, old_doc],
            )
            views.apply(con)
            got = con.execute("SELECT value FROM settings WHERE name = 'explode_ratio'").fetchone()
            assert got == (want,)
        con.execute("UPDATE settings SET value = 1000 WHERE name = 'explode_ratio'")
    finally:
        db.close()
