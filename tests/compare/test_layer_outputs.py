"""`wpipe activations` and its tables: rows equal numpy statistics of Keras's own layer outputs,
status rows for layers that cannot run, incremental re-runs, dead units flagged from data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from wpipe.analyse.stats import StatsOptions
from wpipe.cli import app
from wpipe.compare import layer_outputs as lo

from tests.conftest import EXAMPLES
from tests.forward.keras_cases import MODELS as FORWARD_MODELS
from tests.forward.keras_cases import expected

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "examples" / "inputs"
runner = CliRunner()


def _query(db: str, sql: str, params=None) -> list[tuple]:
    import duckdb

    con = duckdb.connect(db)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_rows_are_numpy_statistics_of_keras_outputs() -> None:
    """Each activations/activation_units row against numpy on the array Keras computed."""
    inputs, want = expected("k3_conv2d")
    sample = lo.InputSet("probe", "file", None, {"x": inputs[0]})
    outcome = lo.compute("m", str(FORWARD_MODELS / "k3_conv2d.h5"), "sha", sample, 2,
                         StatsOptions())  # fmt: skip
    assert outcome is not None and outcome.run["status"] == "complete"
    rows = outcome.tables["activations"].to_pylist()
    assert {f"{r['layer_path']}:{r['call_index']}:{r['output_index']}" for r in rows} == set(want)
    units = outcome.tables["activation_units"].to_pylist()
    for row in rows:
        a = want[f"{row['layer_path']}:0:0"].astype(np.float64)
        assert row["shape"] == list(a.shape) and row["size"] == a.size
        for column, value in [
            ("mean", a.mean()), ("std", a.std()), ("min", a.min()), ("max", a.max()),
            ("abs_mean", np.abs(a).mean()), ("p05", np.percentile(a, 5)),
            ("p50", np.median(a)), ("p99", np.percentile(a, 99)),
            ("zero_frac", np.mean(a == 0)), ("near_zero_frac", np.mean(np.abs(a) < 1e-3)),
        ]:  # fmt: skip
            assert row[column] == pytest.approx(value, abs=1e-4, rel=1e-4), column
        per_unit = a.reshape(-1, a.shape[-1])
        mine = sorted((u for u in units if u["layer_path"] == row["layer_path"]),
                      key=lambda u: u["unit"])  # fmt: skip
        assert len(mine) == a.shape[-1] == row["n_units"]
        np.testing.assert_allclose([u["active_frac"] for u in mine], (per_unit > 0).mean(0))
        np.testing.assert_allclose([u["max"] for u in mine], per_unit.max(0), atol=1e-4)
        assert row["dead_units"] == int(((per_unit > 0).sum(0) == 0).sum())
    hist = outcome.tables["activation_histograms"].to_pylist()
    first = rows[0]
    counts = [h["count"] for h in hist if h["layer_path"] == first["layer_path"]]
    a = want[f"{first['layer_path']}:0:0"]
    assert counts == np.histogram(a.astype(np.float64), bins=64)[0].tolist()


@pytest.fixture
def db(tmp_path: Path) -> str:
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("k2_lambda.h5", "k3_graph.h5", "k2_rnn.h5"):
        shutil.copy2(FORWARD_MODELS / name, zoo / name)
    path = str(tmp_path / "t.duckdb")
    result = runner.invoke(app, ["ingest", str(zoo), "--db", path, "-j", "1"])
    assert result.exit_code == 0, result.output
    return path


def test_lambda_model_gets_rows_before_it_and_a_status_row(db, tmp_path, monkeypatch) -> None:
    sentinel = tmp_path / "sentinel"
    monkeypatch.setenv("WPIPE_LAMBDA_SENTINEL", str(sentinel))
    inputs, _ = expected("k2_lambda")
    np.save(tmp_path / "x.npy", inputs[0])
    result = runner.invoke(app, ["activations", "-m", "k2_lambda", "--input",
                                 str(tmp_path / "x.npy"), "--db", db, "-f", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["status"] == "stopped" and "Lambda" in row["reason"]
    assert _query(db, "SELECT layer_path FROM activations") == [("before",)]
    assert _query(db, "SELECT layer_path, class_name, status, reason FROM activation_status") == [
        ("lam", "Lambda", "stopped", "Lambda: code stored in the file is never run")
    ]
    assert not sentinel.exists()


def test_npz_by_input_name_reruns_incrementally_and_random_probes(db, tmp_path) -> None:
    inputs, _ = expected("k3_graph")
    np.savez(tmp_path / "ab.npz", b=inputs[1], a=inputs[0])  # by name, not in order
    args = ["activations", "-m", "k3_graph", "--input", str(tmp_path / "ab.npz"), "--db", db,
            "--name", "pair", "-f", "json"]  # fmt: skip
    first = json.loads(runner.invoke(app, args).output)
    assert first[0]["status"] == "complete" and first[0]["outputs"] == 15
    again = json.loads(runner.invoke(app, args).output)
    assert again[0]["status"] == "unchanged"
    assert _query(db, "SELECT count(*) FROM activation_runs") == [(1,)]
    probe = runner.invoke(app, ["activations", "--random", "4", "--db", db, "-f", "json"])
    assert probe.exit_code == 0, probe.output
    runs = _query(db, "SELECT input_name, source, n_samples, status FROM activation_runs "
                      "WHERE source = 'random' ORDER BY ALL")  # fmt: skip
    assert [r[1:] for r in runs] == [("random", 4, "complete"), ("random", 4, "complete"),
                                     ("random", 4, "stopped")]  # fmt: skip


def test_a_random_probe_too_large_fails_its_models_in_one_line(db) -> None:
    # 10**8 samples of k3_graph's inputs were a MemoryError, reported as a bug in wpipe
    res = runner.invoke(app, ["activations", "-m", "k3_graph", "--random", str(10**8), "--db", db,
                              "-f", "json"])  # fmt: skip
    assert res.exit_code == 1 and "Traceback" not in res.output
    (row,) = json.loads(res.stdout)
    assert row["status"] == "failed"
    assert row["reason"].startswith("--random 100000000: ") and "give fewer" in row["reason"]
    assert f": {row['reason']}" in res.stderr  # whole on stderr, where a table would cut it


def test_bad_input_is_one_line_and_a_mismatch_fails_the_model_only(db, tmp_path) -> None:
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    bad = runner.invoke(app, ["activations", "--input", str(tmp_path / "junk.npy"), "--db", db])
    assert bad.exit_code == 2 and "junk.npy" in bad.output and "Traceback" not in bad.output
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3), np.float32))
    res = runner.invoke(app, ["activations", "-m", "k2_rnn", "--input", str(tmp_path / "wrong.npy"),
                              "--db", db, "-f", "json"])  # fmt: skip
    assert res.exit_code == 1
    assert _query(db, "SELECT status FROM activation_status") == [("failed",)]
    both = runner.invoke(app, ["activations", "--db", db])
    assert both.exit_code == 2


def test_dead_units_by_activation_flags_the_sick_run_only(tmp_path) -> None:
    """The demo's lr 0.3 CNN run kills most ReLU units; the lr 1e-2 and 1e-3 runs do not."""
    zoo = tmp_path / "zoo"
    for run in ("cnn_lr1e-3", "cnn_lr1e-2", "cnn_lr3e-1"):
        (zoo / run).mkdir(parents=True)
        shutil.copy2(EXAMPLES / run / "e05.h5", zoo / run / "e05.h5")
    db = str(tmp_path / "demo.duckdb")
    assert runner.invoke(app, ["ingest", str(zoo), "--db", db, "-j", "1"]).exit_code == 0
    result = runner.invoke(app, ["activations", "--input", str(SAMPLES / "blobs.npy"), "--db", db])
    assert result.exit_code == 0, result.output
    flagged = _query(db, "SELECT DISTINCT model FROM health_findings "
                         "WHERE flags = 'dead_units_by_activation'")  # fmt: skip
    assert flagged == [("cnn_lr3e-1/e05",)]
    health = runner.invoke(app, ["health", "--db", db, "-f", "json"])
    assert any(r["flags"] == "dead_units_by_activation" for r in json.loads(health.output))


def test_random_ids_for_an_embedding_whatever_the_input_dtype(tmp_path) -> None:
    # tf_keras made this Sequential text model's InputLayer float32 (asserted by
    # make_float_ids_fixture.py): --random still feeds integer ids in [0, input_dim)
    from wpipe.forward import graph_of
    from wpipe.readers import open_model

    want = np.load(FORWARD_MODELS.parent / "expected" / "k2_float_ids.npz")
    with open_model(str(FORWARD_MODELS / "k2_float_ids.h5")) as model:
        graph = graph_of(model)
    (ids,) = lo.random_inputs(graph, 64, seed=3).arrays.values()
    vocab = want["embeddings"].shape[0]
    assert ids.dtype.kind == "i" and ids.min() >= 0 and ids.max() < vocab
    assert len(np.unique(ids)) > vocab // 2  # spread over the vocabulary, not 0/1 only
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy2(FORWARD_MODELS / "k2_float_ids.h5", zoo)
    db = str(tmp_path / "t.duckdb")
    assert runner.invoke(app, ["ingest", str(zoo), "--db", db, "-j", "1"]).exit_code == 0
    probe = runner.invoke(app, ["activations", "--random", "16", "--db", db, "-f", "json"])
    assert probe.exit_code == 0, probe.output
    assert _query(db, "SELECT source, status FROM activation_runs") == [("random", "complete")]
    # Keras's own ids, given as a file of integers: Keras's predictions
    np.save(tmp_path / "ids.npy", want["ids"])
    run = runner.invoke(app, ["activations", "--input", str(tmp_path / "ids.npy"), "--db", db,
                              "-f", "json"])  # fmt: skip
    assert run.exit_code == 0, run.output
    (mean,) = _query(db, "SELECT a.mean FROM activations AS a JOIN activation_runs AS r "
                         "USING (model_id, input_set) WHERE r.source = 'file' "
                         "AND a.class_name = 'Dense'")[0]  # fmt: skip
    assert mean == pytest.approx(float(want["predictions"].astype(np.float64).mean()), rel=1e-5)
