"""Comparing models: drift against numpy on Keras's arrays, alignment, series, tags,
metrics and rank correlation (against scipy)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import wpipe
from scipy import stats as sps
from typer.testing import CliRunner
from wpipe import store
from wpipe.cli import app
from wpipe.compare import MetricsError, add_metrics, correlate, pair_drift
from wpipe.core.tags import parse_tags

from tests.conftest import EXAMPLES, MODELS, Warehouse, dense_config, expected, write_legacy_h5

runner = CliRunner()


def model_id(w: Warehouse, suffix: str) -> str:
    return w.query("SELECT model_id FROM models WHERE path LIKE ?", [f"%/{suffix}"])[0][0]


def test_drift_between_two_models_equals_numpy_on_keras_arrays(tmp_path):
    # the same architecture trained by Keras 3 on TensorFlow and on JAX: different values
    w = Warehouse(tmp_path)
    w.ingest(MODELS / "k3_dense_bn_frozen.h5", MODELS / "k3j_dense_bn_frozen.h5", drift=False)
    a, b = model_id(w, "k3_dense_bn_frozen.h5"), model_id(w, "k3j_dense_bn_frozen.h5")
    con = wpipe.connect(w.db_path)  # read-only: an on-demand pair is stored nowhere
    table = pair_drift(con, a, b).to_pylist()
    con.close()
    assert w.query("SELECT count(*) FROM drift") == [(0,)]
    spec_a, arrays_a = expected("k3_dense_bn_frozen.h5")
    _, arrays_b = expected("k3j_dense_bn_frozen.h5")
    fields = ("rel_l2", "cosine", "mean_abs_change", "sign_flip_frac", "max_abs_change")
    rows = {
        (r["layer_path"], r["weight_name"]): tuple(r[f] for f in fields)
        for r in table
        if (r["model_a"], r["model_b"]) == (a, b)
    }
    assert len(rows) == len(spec_a["weights"])
    for weight in spec_a["weights"]:
        x = arrays_a[weight["key"]].astype(np.float64).ravel()
        y = arrays_b[weight["key"]].astype(np.float64).ravel()
        want = [
            np.linalg.norm(y - x) / np.linalg.norm(x),
            x @ y / (np.linalg.norm(x) * np.linalg.norm(y)),
            np.abs(y - x).mean(),
            np.mean(x * y < 0),
            np.abs(y - x).max(),
        ]
        got = rows[(weight["layer_path"], weight["weight_name"])]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_a_checkpoint_saved_twice_has_no_drift(tmp_path):
    w = Warehouse(tmp_path)
    w.ingest(MODELS / "k3_dense_bn_frozen.h5", MODELS / "k3_dense_bn_frozen.keras", drift=False)
    result = runner.invoke(app, ["compare", "k3_dense_bn_frozen.h5", "k3_dense_bn_frozen.keras",
                                 "--db", str(w.db_path), "-f", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and all(r["matched_by"] == "position" for r in rows)  # one arch_id
    assert all(r["rel_l2"] == 0 and r["cosine"] == pytest.approx(1) for r in rows)
    assert all(r["comparable"] == "yes" for r in rows)
    assert w.query("SELECT count(*) FROM drift") == [(0,)]  # compare stores nothing


def test_alignment_matches_renamed_layers_and_reports_removed_ones(tmp_path):
    rng = np.random.default_rng(3)
    shapes = {"d1": (4, 3), "d2": (3, 5), "d3": (5, 2)}
    arrays = {n: rng.normal(size=s).astype("f4") for n, s in shapes.items()}

    def layers(names):
        return {new: {f"{new}/kernel:0": arrays[old]} for new, old in names}

    write_legacy_h5(tmp_path / "a.h5", layers([("d1", "d1"), ("d2", "d2"), ("d3", "d3")]),
                    dense_config("d1", "d2", "d3"))  # fmt: skip
    # b: d1 renamed to "first", d3 removed
    write_legacy_h5(tmp_path / "b.h5", layers([("first", "d1"), ("d2", "d2")]),
                    dense_config("first", "d2"))  # fmt: skip
    w = Warehouse(tmp_path)
    w.ingest(tmp_path / "a.h5", tmp_path / "b.h5", drift=False)
    result = runner.invoke(app, ["compare", "a", "b", "--db", str(w.db_path), "-f", "json"])
    assert result.exit_code == 0, result.output
    rows = [(r["path_a"], r["path_b"], r["matched_by"], r["rel_l2"]) for r in
            json.loads(result.output)]  # fmt: skip
    assert rows == [("d1", "first", "class and shapes", 0.0), ("d2", "d2", "path", 0.0),
                    ("d3", None, "unmatched", None)]  # fmt: skip
    a, b = model_id(w, "a.h5"), model_id(w, "b.h5")
    assert w.query("SELECT model_id, layer_path FROM unmatched_layers(?, ?)", [a, b]) == [(a, "d3")]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    shutil.copytree(EXAMPLES, root / "models")
    w = Warehouse(root)
    report = w.ingest(root / "models")
    assert not report.failed and report.drift_pairs == 12
    return w, root / "models"


def test_series_are_ordered_by_epoch_and_drift_is_incremental(zoo):
    w, models = zoo
    pairs = w.query(
        "SELECT name_a, name_b FROM layer_drift WHERE layer_path = 'conv1' "
        "AND name_a LIKE 'cnn_lr1e-3/%' ORDER BY epoch_b"
    )
    assert pairs == [(f"cnn_lr1e-3/e0{i}", f"cnn_lr1e-3/e0{i + 1}") for i in range(1, 5)]
    # a byte copy is never the next checkpoint of what it copies: no drift pair, no stale
    shutil.copy2(models / "cnn_lr1e-3" / "e05.h5", models / "cnn_lr1e-3" / "e06.h5")
    report = w.ingest(models)
    assert report.ingested == 1
    assert w.query("SELECT count(*) FROM weight_health WHERE stale") == [(0,)]
    assert w.query("SELECT count(DISTINCT (model_a, model_b)) FROM drift") == [(12,)]
    (models / "cnn_lr1e-3" / "e06.h5").unlink()
    w.ingest(models, prune=True)
    assert w.query("SELECT count(DISTINCT (model_a, model_b)) FROM drift") == [(12,)]


def test_training_log_is_attached_by_epoch(zoo):
    w, models = zoo
    log = (models / "cnn_lr1e-2" / "history.csv").read_text().splitlines()
    header, first = log[0].split(","), log[1].split(",")  # CSVLogger epoch 0 = checkpoint e01
    got = dict(
        w.query(
            "SELECT metric, value FROM model_metrics JOIN models USING (model_id) "
            "WHERE name = 'cnn_lr1e-2/e01'"
        )
    )
    assert got == {k: pytest.approx(float(v)) for k, v in zip(header, first, strict=True)
                   if k != "epoch"}  # fmt: skip


def test_correlate_equals_scipy_spearman(zoo):
    w, _ = zoo
    db = store.Database(w.db_path)
    rows = {f: (n, rho) for f, n, rho in correlate(db.con, "val_accuracy")}
    db.close()
    data = w.query(
        "SELECT w.std, x.value FROM weights w JOIN model_metrics x USING (model_id) "
        "WHERE x.metric = 'val_accuracy' AND w.layer_path = 'fc' AND w.weight_name = 'kernel'"
    )
    rho = sps.spearmanr([d[0] for d in data], [d[1] for d in data]).statistic
    assert rows["fc/kernel: std"] == (15, pytest.approx(rho))


def test_metrics_join_by_name_and_path_and_refuse_unknown_or_ambiguous(zoo, tmp_path):
    w, models = zoo
    good = tmp_path / "results.csv"
    good.write_text(
        "model,val_acc,notes\n"
        f"lstm_classifier,0.91,first\n{models / 'gru_classifier.h5'},0.88,second\n"
    )
    db = store.Database(w.db_path)
    try:
        assert add_metrics(db.con, good) == 2
        bad = tmp_path / "bad.csv"
        bad.write_text("name,val_acc\nno_such_model,0.5\ne01.h5,0.7\n")
        with pytest.raises(MetricsError) as err:
            add_metrics(db.con, bad)
    finally:
        db.close()
    assert "bad.csv:2: name 'no_such_model' matches no model" in str(err.value)
    assert "bad.csv:3: name 'e01.h5' matches 3 models" in str(err.value)
    got = w.query(
        "SELECT name, value FROM model_metrics JOIN models USING (model_id) "
        "WHERE metric = 'val_acc' ORDER BY name"
    )
    assert got == [("gru_classifier", 0.88), ("lstm_classifier", 0.91)]
    cli = runner.invoke(app, ["metrics", "add", str(tmp_path / "bad.csv"), "--db",
                              str(w.db_path)])  # fmt: skip
    assert cli.exit_code == 2 and "matches no model" in cli.output


@pytest.mark.parametrize(
    ("path", "tags"),
    [
        ("runs/lr1e-2_dropout0.6/e05.h5", {"lr": 0.01, "dropout": 0.6, "epoch": 5}),
        ("sweep/l2_1e-3/ckpt-ep12.keras", {"l2": 0.001, "epoch": 12}),
        ("exp/bs128-lr0.1/weights.epoch-03.hdf5", {"bs": 128, "lr": 0.1, "epoch": 3}),
        ("a/lr=0.001/step3000.weights.h5", {"lr": 0.001, "step": 3000}),
        ("models/cnn_lr3e-1/e01.h5", {"lr": 0.3, "epoch": 1}),
        ("x/final_model.h5", {}),
        ("wd.5/model_epoch_10.keras", {"wd": 0.5, "epoch": 10}),
    ],
)
def test_tags_from_real_world_names(path, tags):
    assert parse_tags(path) == pytest.approx(tags)


def test_custom_tag_pattern():
    assert parse_tags("runs/seed-7/m.h5", pattern=r"(?P<key>seed)-(?P<value>\d+)") == {"seed": 7}


def test_distance_matrix_is_symmetric_with_zero_diagonal(zoo):
    w, _ = zoo
    result = runner.invoke(app, ["compare", "cnn_lr1e-3/e05", "cnn_lr1e-2/e05", "cnn_lr3e-1/e05",
                                 "--matrix", "--db", str(w.db_path), "-f", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["layer_path"] for r in rows} == {"conv1", "conv2", "fc", "probs"}
    assert len(rows) == 4 * 3 and all(r["distance"] > 0 for r in rows)


def test_correlate_warns_below_eight_models(zoo, tmp_path):
    w, _ = zoo
    result = runner.invoke(app, ["correlate", "val_acc", "--db", str(w.db_path)],
                           env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0 and "only 2 models" in result.output, result.output
    missing = runner.invoke(app, ["correlate", "nope", "--db", str(w.db_path)])
    assert missing.exit_code == 2


def test_unchanged_folder_keeps_drift_without_rereading(zoo):
    w, models = zoo
    before = w.query("SELECT count(*) FROM drift")
    os.utime(models / "lstm_classifier.h5")  # touched, same bytes
    report = w.ingest(models)
    assert (report.ingested, report.drift_pairs) == (0, 0)
    assert w.query("SELECT count(*) FROM drift") == before


def _every_view(db: str) -> dict[str, list[str]]:
    con = wpipe.connect(db)
    try:
        listed = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1")
        names = [v for (v,) in listed.fetchall()]
        return {v: sorted(map(repr, con.execute(f"SELECT * FROM {v}").fetchall())) for v in names}
    finally:
        con.close()


def test_compare_changes_no_view(zoo):
    w, _ = zoo
    db = str(w.db_path)
    before = _every_view(db)
    mean_drift = "SELECT round(avg(rel_l2), 3) FROM layer_drift WHERE name_b = 'cnn_lr3e-1/e05'"
    drift_before = w.query(mean_drift)
    for pair in (["cnn_lr1e-3/e05", "cnn_lr3e-1/e05"], ["cnn_lr1e-2/e01", "cnn_lr3e-1/e05"]):
        result = CliRunner().invoke(app, ["compare", *pair, "--db", db, "-f", "csv"])
        assert result.exit_code == 0, result.output
        assert "rel_l2" in result.output.splitlines()[0]
    assert w.query(mean_drift) == drift_before
    assert _every_view(db) == before


def test_series_drift_from_the_chunked_map_equals_numpy_on_the_files(tmp_path, monkeypatch):
    """Checkpoints read in one chunk are diffed against the previous one still in memory,
    the first of a chunk against its predecessor's file: both equal numpy on h5py's arrays."""
    import h5py
    from wpipe.ingest import plan

    monkeypatch.setattr(plan, "CHUNKS_PER_WORKER", 1)  # chunks e01-e03, e04-e05
    shutil.copytree(EXAMPLES / "cnn_lr1e-3", tmp_path / "run")
    w = Warehouse(tmp_path / "w")
    (tmp_path / "w").mkdir()
    report = w.ingest(tmp_path / "run", jobs=2)
    assert not report.failed and report.drift_pairs == 4
    rows = w.query(
        "SELECT ma.path, mb.path, wb.source_name, d.rel_l2, d.cosine, d.max_abs_change "
        "FROM drift d JOIN models ma ON ma.model_id = d.model_a "
        "JOIN models mb ON mb.model_id = d.model_b JOIN weights wb ON wb.model_id = d.model_b "
        "AND wb.layer_path = d.layer_path AND wb.weight_name = d.weight_name"
    )
    per_model = w.query("SELECT count(*) FROM weights GROUP BY model_id LIMIT 1")[0][0]
    assert len(rows) == 4 * per_model
    assert {(Path(a).name, Path(b).name) for a, b, *_ in rows} == {
        (f"e0{i}.h5", f"e0{i + 1}.h5") for i in range(1, 5)
    }
    for path_a, path_b, source, rel_l2, cosine, max_abs in rows:
        with h5py.File(path_a, "r") as fa, h5py.File(path_b, "r") as fb:
            x = fa[source][()].astype(np.float64).ravel()
            y = fb[source][()].astype(np.float64).ravel()
        want = [np.linalg.norm(y - x) / np.linalg.norm(x),
                x @ y / (np.linalg.norm(x) * np.linalg.norm(y)), np.abs(y - x).max()]  # fmt: skip
        assert [rel_l2, cosine, max_abs] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_training_log_is_attached_by_modelcheckpoint_numbers(tmp_path):
    # Keras's documented pattern weights.{epoch:02d}-{val_loss:.2f}: no epoch tag in the names,
    # the counter is the epoch (CSVLogger's epoch 0 is the file numbered 01)
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    for epoch, loss in ((1, "0.50"), (2, "0.40")):
        kernel = rng.standard_normal((4, 3), dtype="f4")
        write_legacy_h5(run / f"weights.{epoch:02d}-{loss}.h5", {"d": {"d/kernel:0": kernel}},
                        dense_config("d"))  # fmt: skip
    (run / "training.log").write_text("epoch,loss,val_loss\n0,0.61,0.50\n1,0.45,0.40\n")
    w = Warehouse(tmp_path)
    report = w.ingest(run)
    assert not report.warnings, report.warnings
    got = w.query(
        "SELECT name, metric, value FROM model_metrics JOIN models USING (model_id) "
        "WHERE metric = 'val_loss' ORDER BY name"
    )
    assert got == [("weights.01-0.50", "val_loss", 0.5), ("weights.02-0.40", "val_loss", 0.4)]
