"""Comparing unrelated models (a CNN, an LSTM, a GRU): drift only between comparable layers,
whole-model statistics that compare any architectures, readable architecture labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.charts.conftest import h5_layers
from tests.conftest import MODELS, Warehouse, dense_config, expected, write_legacy_h5

DEMO = Path(__file__).resolve().parents[2] / "examples" / "models"
runner = CliRunner()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("unrelated")
    models = root / "models"
    models.mkdir()
    shutil.copy2(DEMO / "cnn_lr1e-2" / "e05.h5", models / "cnn.h5")
    for name in ("lstm_classifier.h5", "gru_classifier.h5"):
        shutil.copy2(DEMO / name, models / name)
    shutil.copy2(MODELS / "k2_dense_bn_frozen.h5", models / "frozen.h5")
    w = Warehouse(root)
    assert not w.ingest(models).failed
    return w, models


def test_only_comparable_layers_get_drift(zoo):
    w, models = zoo
    result = runner.invoke(
        app, ["compare", "cnn", "lstm_classifier", "gru_classifier", "--db", str(w.db_path),
              "-f", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    probs = [r for r in rows if r["path_a"] == "probs"]
    # matched by path, but the CNN's probs kernel is 16x4 and the LSTM's 16x2
    cnn, lstm = h5_layers(models / "cnn.h5"), h5_layers(models / "lstm_classifier.h5")
    assert {a.shape for a in cnn["probs"]} == {(16, 4), (4,)}
    assert {a.shape for a in lstm["probs"]} == {(16, 2), (2,)}
    assert [r["comparable"] for r in probs] == ["no: shapes differ"] * 2
    assert all(r["rel_l2"] is None and r["cosine"] is None for r in rows)
    assert {r["comparable"] for r in rows} <= {"only in A", "only in B", "no: shapes differ"}
    # statistics are still shown for every layer of either model
    assert all(r["std_a"] is not None for r in rows if r["path_a"])
    assert all(r["std_b"] is not None for r in rows if r["path_b"])


def test_a_layer_sharing_only_its_bias_shape_is_not_compared(tmp_path):
    # one Dense layer by path in both, kernels 4x3 and 5x3, biases both of 3: drift over the
    # biases alone would pass for the layer's drift
    rng = np.random.default_rng(0)
    for name, rows in (("a", 4), ("b", 5)):
        write_legacy_h5(tmp_path / f"{name}.h5", {"d": {
            "d/kernel:0": rng.normal(size=(rows, 3)).astype("f4"),
            "d/bias:0": rng.normal(size=3).astype("f4")}}, dense_config("d"))  # fmt: skip
    w = Warehouse(tmp_path)
    w.ingest(tmp_path / "a.h5", tmp_path / "b.h5", drift=False)
    result = runner.invoke(app, ["compare", "a", "b", "--db", str(w.db_path), "-f", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["matched_by"], row["comparable"]) == ("path", "no: shapes differ")
    assert row["rel_l2"] is None and row["cosine"] is None


def test_the_comparison_says_so_in_plain_words(zoo):
    w, _ = zoo
    result = runner.invoke(app, ["compare", "lstm_classifier", "gru_classifier", "--db",
                                 str(w.db_path)], env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("B = gru_classifier"))
    assert "different architectures (Embedding → LSTM → Dense vs Embedding → GRU → Dense)" in line
    assert "layers comparable (same class, roles and shapes)" in line


def test_a_model_without_the_layer_has_no_distance_to_itself(zoo):
    w, _ = zoo
    result = runner.invoke(app, ["compare", "cnn", "lstm_classifier", "--matrix", "--db",
                                 str(w.db_path)], env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index(next(x for x in lines if x.startswith("conv1: distance")))
    grid = {}
    for line in lines[start:]:
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            grid[cells[0]] = cells[1:]
        if line.startswith("└"):
            break
    assert grid == {"cnn": ["0", "–"], "lstm_classifier": ["–", "–"]}
    assert "conv1: not in (or shaped otherwise in) lstm_classifier" in result.output


def test_whole_model_statistics_equal_numpy_over_the_trainable_weights(zoo):
    w, _ = zoo
    spec, arrays = expected("k2_dense_bn_frozen.h5")
    trainable = [w_ for w_ in spec["weights"] if w_["trainable"]]
    assert len(trainable) < len(spec["weights"])  # BN statistics and a frozen layer left out
    values = np.concatenate([arrays[t["key"]].astype(np.float64).ravel() for t in trainable])
    got = w.query(
        "SELECT trainable_mean, trainable_std, trainable_abs_mean, trainable_l2 "
        "FROM model_summary WHERE model = 'frozen'"
    )[0]
    want = (values.mean(), values.std(), np.abs(values).mean(), np.linalg.norm(values))
    assert got == pytest.approx(want, rel=1e-9)
    for role in ("kernel", "bias"):
        of_role = [t for t in trainable if t["role"] == role]
        v = np.concatenate([arrays[t["key"]].astype(np.float64).ravel() for t in of_role])
        row = w.query(
            "SELECT n_tensors, size, mean, std, abs_mean, l2 FROM model_role_summary "
            "WHERE model = 'frozen' AND role = ?",
            [role],
        )[0]
        assert row[:2] == (len(of_role), v.size)
        assert row[2:] == pytest.approx((v.mean(), v.std(), np.abs(v).mean(), np.linalg.norm(v)))


def test_every_model_of_any_architecture_gets_the_whole_model_row(zoo):
    w, _ = zoo
    rows = w.query("SELECT model, trainable_std, trainable_l2 FROM model_summary ORDER BY model")
    assert [r[0] for r in rows] == ["cnn", "frozen", "gru_classifier", "lstm_classifier"]
    assert all(r[1] > 0 and r[2] > 0 for r in rows)


def test_architectures_have_readable_labels(zoo):
    w, _ = zoo
    labels = dict(w.query("SELECT label, n_models FROM architectures"))
    assert labels == {
        "Conv2D×2 → Dense×2": 1,
        "Embedding → LSTM → Dense": 1,
        "Embedding → GRU → Dense": 1,
        "Dense → BatchNormalization → Dense×2": 1,
    }
