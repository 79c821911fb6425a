"""Layer pairing (sql/50_compare.sql align_layers, the one pairing of compare, --matrix, series
drift and the report's heatmaps) on real tf_keras files: a model and its fine-tune saved in two
sessions, whose auto-generated layer names are shifted by one, and a user-named
Sequential/Functional pair. Expected values: numpy on Keras's in-memory arrays, recorded by
tests/fixtures/make_pairing_fixtures.py (expected/pairing.json)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import wpipe
from typer.testing import CliRunner
from wpipe import charts, compare
from wpipe.cli import app
from wpipe.ingest import plan

from tests.charts.conftest import data_rows
from tests.conftest import EXPECTED, MODELS, Warehouse, dense_config, write_legacy_h5

runner = CliRunner()
PAIRS = MODELS / "pairing"
TRUTH = json.loads((EXPECTED / "pairing.json").read_text())


def as_a_run(folder) -> None:
    """The fine-tune saved after its base, told as Keras's CSVLogger would: a series needs
    evidence of training order (checkpoints.py), and base/tuned carry no epoch."""
    (folder / "training.log").write_text("epoch,loss\n0,1.0\n1,0.9\n")


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairing")
    shutil.copytree(PAIRS, root / "models")
    as_a_run(root / "models" / "shifted")
    w = Warehouse(root)
    report = w.ingest(root / "models")
    assert not report.failed
    return w


def compare_json(w: Warehouse, *args: str) -> list[dict]:
    result = runner.invoke(app, ["compare", *args, "--db", str(w.db_path), "-f", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_fixture_names_are_shifted_by_one():
    # the premise: pairing by name would pair each layer with its successor
    pairs = [(p["path_a"], p["path_b"]) for p in TRUTH["shifted"]["pairs"]]
    assert ("conv1d_1", "conv1d") in pairs and ("dense_3", "dense_2") in pairs


def test_compare_pairs_a_fine_tune_by_position_with_keras_distances(paired):
    rows = compare_json(paired, "shifted/base", "shifted/tuned")
    got = {(r["path_a"], r["path_b"]): r for r in rows}
    assert len(rows) == len(TRUTH["shifted"]["pairs"])
    for want in TRUTH["shifted"]["pairs"]:
        row = got[(want["path_a"], want["path_b"])]
        assert (row["matched_by"], row["comparable"], row["certain"]) == ("position", "yes", True)
        assert row["rel_l2"] == pytest.approx(want["rel_l2"], rel=1e-9)


def test_matrix_pairs_the_same_layers(paired):
    rows = compare_json(paired, "shifted/base", "shifted/tuned", "--matrix")
    got = {r["layer_path"]: r for r in rows}
    assert len(rows) == len(TRUTH["shifted"]["pairs"])
    for want in TRUTH["shifted"]["pairs"]:
        row = got[want["path_a"]]
        assert row["certain"] is True
        assert row["distance"] == pytest.approx(want["distance"], rel=1e-9)
    table = runner.invoke(app, ["compare", "shifted/base", "shifted/tuned", "--matrix", "--db",
                                str(paired.db_path)], env={"COLUMNS": "200"})  # fmt: skip
    assert "conv1d_1: paired with conv1d in shifted/tuned" in table.output


def test_user_names_pair_by_name_across_architectures(paired):
    # the Functional model has an extra layer with hidden_b's shapes before hidden_b: by class
    # and shapes first, hidden_b would pair with it
    rows = compare_json(paired, "named/seq", "named/func")
    got = {r["path_b"]: r for r in rows}
    for want in TRUTH["named"]["pairs"]:
        row = got[want["path_b"]]
        assert (row["path_a"], row["matched_by"], row["certain"]) == (want["path_a"], "path", True)
        assert row["rel_l2"] == pytest.approx(want["rel_l2"], rel=1e-9)
    assert (got["extra"]["path_a"], got["extra"]["comparable"]) == (None, "only in B")


def layer_drift(w: Warehouse) -> dict[str, float]:
    return dict(w.query("SELECT layer_path, rel_l2 FROM layer_drift WHERE name_b LIKE '%tuned'"))


def expect_series_drift(drift: dict[str, float]) -> None:
    # drift rows carry B's (the later model's) layer paths
    want = {p["path_b"]: p["rel_l2"] for p in TRUTH["shifted"]["pairs"]}
    assert drift.keys() == want.keys()
    for path, rel_l2 in want.items():
        assert drift[path] == pytest.approx(rel_l2, rel=1e-9), path


@pytest.mark.parametrize("held", [True, False], ids=["held-in-memory", "read-from-file"])
def test_series_drift_at_ingest_pairs_by_position(tmp_path, monkeypatch, held):
    shutil.copytree(PAIRS / "shifted", tmp_path / "run")
    as_a_run(tmp_path / "run")
    if not held:  # one chunk per file: the second reads the first from its file
        monkeypatch.setattr(plan, "CHUNKS_PER_WORKER", 1)
    w = Warehouse(tmp_path)
    report = w.ingest(tmp_path / "run", jobs=1 if held else 2)
    assert not report.failed and report.drift_pairs == 1
    expect_series_drift(layer_drift(w))


def test_the_series_pass_pairs_by_position(paired, tmp_path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(paired.db_path, db)
    con = wpipe.connect(db, read_only=False)
    con.execute("DELETE FROM drift")
    pairs, problems = compare.series_drift(con)
    assert (pairs, problems) == (1, [])
    rows = con.execute("SELECT layer_path, rel_l2 FROM layer_drift WHERE name_b LIKE '%tuned'")
    expect_series_drift(dict(rows.fetchall()))
    con.close()


def test_the_python_position_pairs_are_align_layers_pairs(paired):
    # ingest drift and the series pass pair in Python (no query per pair): the same pairs
    from wpipe.analyse.drift import position_pairs
    from wpipe.readers import open_model

    con = wpipe.connect(paired.db_path)
    (a, path_a), (b, path_b) = con.execute(
        "SELECT model_id, path FROM models WHERE name LIKE 'shifted/%' ORDER BY name"
    ).fetchall()
    sql = compare.comparable_layers(con, a, b)
    con.close()
    with open_model(path_a) as model_a, open_model(path_b) as model_b:
        assert position_pairs(model_a, model_b) == sql
    assert sql == {p["path_a"]: p["path_b"] for p in TRUTH["shifted"]["pairs"]}


def test_heatmap_rows_are_the_first_models_layers(paired):
    con = wpipe.connect(paired.db_path)
    spec = charts.stat_heatmap(con, models=["shifted/base", "shifted/tuned"], stat="std")
    con.close()
    rows = [r for r in data_rows(spec.to_dict()) if r["model"] == "shifted/tuned"]
    labels = {r["layer"]: r["tensor"] for r in rows}
    kernels = {p["path_b"]: p["path_a"] for p in TRUTH["shifted"]["pairs"]
               if not p["path_a"].startswith("batch")}  # fmt: skip
    assert labels == kernels


def test_box_panels_are_the_first_models_layers(paired):
    con = wpipe.connect(paired.db_path)
    spec = charts.distribution_boxes(con, models=["shifted/base", "shifted/tuned"])
    con.close()
    rows = {(r["model"], r["tensor"]): r["p50"] for r in data_rows(spec.to_dict())}
    kernels = [p["path_a"] for p in TRUTH["shifted"]["pairs"] if not p["path_a"].startswith("b")]
    assert set(rows) == {(m, k) for m in ("shifted/base", "shifted/tuned") for k in kernels}


def test_histograms_of_a_layer_take_its_pair_in_each_model(paired):
    # base's first Conv1D (conv1d_1, a 3x4x8 kernel) is tuned's conv1d; tuned's own conv1d_1
    # is its second Conv1D (3x8x8): by name the counts would be 96 and 192
    con = wpipe.connect(paired.db_path)
    spec = charts.weight_histograms(con, models=["shifted/base", "shifted/tuned"],
                                    layer="conv1d_1")  # fmt: skip
    con.close()
    counts: dict[str, float] = {}
    for r in data_rows(spec.to_dict()):
        if "count" in r and "bin" in r:
            counts[r["model"]] = counts.get(r["model"], 0) + r["count"]
    assert counts == {"shifted/base": 96, "shifted/tuned": 96}


def test_the_matrix_panels_show_the_paired_layer(paired):
    con = wpipe.connect(paired.db_path)
    spec = charts.weight_matrix(con, models=["shifted/base", "shifted/tuned"], layer="conv1d_1")
    con.close()
    # base's conv1d_1 and tuned's conv1d: 3x4x8 kernels, 12 rows in their matrix view
    rows = {(r["model"], r["rows"]) for r in data_rows(spec.to_dict()) if r.get("kind") == "cell"}
    assert rows == {("shifted/base", 12), ("shifted/tuned", 12)}


@pytest.mark.parametrize(
    ("name", "class_name", "default"),
    [
        ("conv1d_1", "Conv1D", True),  # Keras's own names, as in the fixtures
        ("conv1d", "Conv1D", True),
        ("batch_normalization", "BatchNormalization", True),
        ("cu_dnnlstm_1", "CuDNNLSTM", True),
        ("time_distributed_1", "TimeDistributed", True),
        ("hidden_b", "Dense", False),
        ("dense_head", "Dense", False),
        ("dense_13", None, True),  # a weights-only file: no class
        ("lstm", None, True),
        ("encoder", None, False),
    ],
)
def test_keras_default_names(paired, name, class_name, default):
    con = wpipe.connect(paired.db_path)
    got = con.execute("SELECT keras_default_name(?, ?)", [name, class_name]).fetchone()[0]
    con.close()
    assert got is default


def test_a_guess_is_marked_uncertain(tmp_path):
    rng = np.random.default_rng(0)

    def kernel(rows, cols):
        return rng.normal(size=(rows, cols)).astype("f4")

    # A: d1 (4x3), dense_1 (3x3); B: x (4x3), y (3x3), z (3x3), dense_1 (3x5): B has two 3x3
    # layers for A's one (which one is A's is a guess), and dense_1 pairs by its default name
    # only, its shapes differing
    write_legacy_h5(tmp_path / "a.h5", {"d1": {"d1/kernel:0": kernel(4, 3)},
                                        "dense_1": {"dense_1/kernel:0": kernel(3, 3)},
                                        "dense_2": {"dense_2/kernel:0": kernel(3, 2)}},
                    dense_config("d1", "dense_1", "dense_2"))  # fmt: skip
    write_legacy_h5(tmp_path / "b.h5", {"x": {"x/kernel:0": kernel(4, 3)},
                                        "y": {"y/kernel:0": kernel(3, 3)},
                                        "z": {"z/kernel:0": kernel(3, 3)},
                                        "dense_2": {"dense_2/kernel:0": kernel(3, 5)}},
                    dense_config("x", "y", "z", "dense_2"))  # fmt: skip
    w = Warehouse(tmp_path)
    w.ingest(tmp_path / "a.h5", tmp_path / "b.h5", drift=False)
    rows = [(r["path_a"], r["path_b"], r["matched_by"], r["certain"]) for r in
            compare_json(w, "a", "b")]  # fmt: skip
    assert rows == [
        ("d1", "x", "class and shapes", True),
        ("dense_1", "y", "class and shapes", False),
        ("dense_2", "dense_2", "auto-generated name", False),
        (None, "z", "unmatched", None),
    ]
    result = runner.invoke(app, ["compare", "a", "b", "--db", str(w.db_path)])
    assert "uncertain pairs (2: dense_1, dense_2)" in result.output
