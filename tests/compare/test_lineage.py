"""Fine-tunes against their base (wpipe.compare.lineage, wpipe.analyse.updates, `wpipe lineage`).

Expected values are numpy on the arrays h5py reads from the Keras files; the family (a run's
checkpoints and four fine-tunes of its last one) was trained by tf_keras
(tests/fixtures/make_lineage_fixtures.py), whose truth.json names each file's real base. The
suggestions are also scored on a larger family (two unrelated runs, 20 known bases) from
tests/fixtures/make_lineage_tree_fixtures.py, against the truth.json that script wrote.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner
from wpipe import store
from wpipe.analyse.updates import tensor_update
from wpipe.cli import app
from wpipe.compare.lineage import _Tree, set_base, suggest

from tests.conftest import FIXTURES, Warehouse, dense_config, write_legacy_h5

FAMILY = FIXTURES / "lineage"
TRUTH = json.loads((FAMILY / "truth.json").read_text())
TUNES = ["tunes/low_digits", "tunes/high_digits", "tunes/low_digits_b", "tunes/frozen_h1"]
LAYERS = ("h1", "h2", "out")
runner = CliRunner()


def _arrays(name: str) -> dict[tuple[str, str], np.ndarray]:
    with h5py.File(FAMILY / f"{name}.h5", "r") as f:
        g = f["model_weights"]
        return {(la, w): g[f"{la}/{la}/{w}:0"][()].astype(np.float64)
                for la in LAYERS for w in ("kernel", "bias")}  # fmt: skip


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage")
    shutil.copytree(FAMILY, root / "family")
    lowrank = root / "family" / "tunes" / "lowrank.h5"  # a rank-3 and a rank-2 update, on purpose
    shutil.copy2(FAMILY / "series" / "e5.h5", lowrank)
    rng = np.random.default_rng(5)
    with h5py.File(lowrank, "r+") as f:
        for layer, (rows, cols), rank in (("h2", (32, 16), 3), ("out", (16, 10), 2)):
            kernel = f[f"model_weights/{layer}/{layer}/kernel:0"]
            update = rng.normal(size=(rows, rank)) @ rng.normal(size=(rank, cols)) * 0.05
            kernel[...] = (kernel[()] + update).astype(np.float32)
    w = Warehouse(root)
    assert not w.ingest(root / "family").failed
    db = store.Database(w.db_path)
    ids = {n: m for m, n in db.con.execute("SELECT model_id, name FROM models").fetchall()}
    db.close()
    return w, ids


def _db(w: Warehouse) -> store.Database:
    return store.Database(w.db_path)


def test_updates_equal_numpy_on_the_keras_arrays(family):
    w, ids = family
    db = _db(w)
    try:
        set_base(db.con, ids["tunes/low_digits"], ids["series/e5"])
        rows = db.con.execute(
            "SELECT layer_path, weight_name, base_l2, update_l2, rel_update, untouched "
            "FROM updates WHERE child_id = ?", [ids["tunes/low_digits"]]
        ).fetchall()  # fmt: skip
    finally:
        db.close()
    base, child = _arrays("series/e5"), _arrays("tunes/low_digits")
    assert len(rows) == 6
    for layer, weight, base_l2, update_l2, rel, untouched in rows:
        b, c = base[layer, weight], child[layer, weight]
        assert base_l2 == pytest.approx(np.linalg.norm(b), rel=1e-12)
        assert update_l2 == pytest.approx(np.linalg.norm(c - b), rel=1e-12)
        assert rel == pytest.approx(np.linalg.norm(c - b) / np.linalg.norm(b), rel=1e-12)
        assert untouched is False


def test_a_low_rank_update_built_on_purpose_is_reported_at_its_rank(family):
    w, ids = family
    db = _db(w)
    try:
        set_base(db.con, ids["tunes/lowrank"], ids["series/e5"])
        rows = db.con.execute(
            "SELECT layer_path, weight_name, rank, untouched, top8_share FROM updates "
            "WHERE child_id = ?", [ids["tunes/lowrank"]]
        ).fetchall()  # fmt: skip
    finally:
        db.close()
    by = {(la, wn): (rank, untouched, top8) for la, wn, rank, untouched, top8 in rows}
    assert by["h2", "kernel"][:2] == (3, False)
    assert by["out", "kernel"][:2] == (2, False)
    assert by["h2", "kernel"][2] == pytest.approx(1.0)
    assert by["h1", "kernel"][1] is True and by["h1", "kernel"][0] == 0


def test_agreement_of_the_fine_tunes_equals_numpy(family):
    w, ids = family
    db = _db(w)
    try:
        for tune in TUNES:
            set_base(db.con, ids[tune], ids["series/e5"])
        got = {
            (a, b): (cos, conflicts)
            for a, b, cos, conflicts in db.con.execute(
                "SELECT model_a, model_b, cosine, sign_conflict_rate FROM update_agreement "
                "WHERE layer_path IS NULL AND base_id = ?", [ids["series/e5"]]
            ).fetchall()
            if a in TUNES and b in TUNES
        }  # fmt: skip
        untouched = db.con.execute(
            "SELECT model, untouched_tensors FROM fine_tunes WHERE model = 'tunes/frozen_h1'"
        ).fetchall()
    finally:
        db.close()
    base = _arrays("series/e5")
    taus = {t: {k: v - base[k] for k, v in _arrays(t).items()} for t in TUNES}
    assert len(got) == len(TUNES) * (len(TUNES) - 1)
    for a in TUNES:
        for b in TUNES:
            if a == b:
                continue
            ta = np.concatenate([taus[a][k].ravel() for k in sorted(base)])
            tb = np.concatenate([taus[b][k].ravel() for k in sorted(base)])
            both = (ta != 0) & (tb != 0)
            cosine = ta @ tb / (np.linalg.norm(ta) * np.linalg.norm(tb))
            conflicts = np.count_nonzero(both & (np.sign(ta) != np.sign(tb))) / both.sum()
            assert got[a, b][0] == pytest.approx(cosine, rel=1e-9)
            assert got[a, b][1] == pytest.approx(conflicts, rel=1e-12)
    assert untouched == [("tunes/frozen_h1", 2)]  # its frozen layer's kernel and bias


def test_suggestions_recover_the_first_family(family):
    w, ids = family
    db = _db(w)
    try:
        db.con.execute("DELETE FROM lineage")
        names = {m: n for n, m in ids.items()}
        found = {names[r["child_id"]]: names[r["base_id"]] for r in suggest(db.con)}
    finally:
        db.close()
    truth = {c: b for c, b in TRUTH.items() if b is not None}
    right = [c for c in truth if found.get(c) == truth[c]]
    assert "series/e1" not in found  # the least trained: no base
    # the near-twin siblings (one task, two seeds) and the frozen-layer sibling included
    assert sorted(right) == sorted(truth), found
    assert found["tunes/lowrank"] == "series/e5"  # the update built on purpose


TREE = FIXTURES / "lineage_tree"
TREE_TRUTH = json.loads((TREE / "truth.json").read_text())


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The larger family: two independent runs, 22 models (make_lineage_tree_fixtures.py)."""
    root = tmp_path_factory.mktemp("lineage_tree")
    w = Warehouse(root)
    assert not w.ingest(TREE).failed
    names = dict(w.query("SELECT model_id, name FROM models"))
    return w, names


def test_suggestions_recover_at_least_nine_in_ten_bases_of_the_larger_family(tree):
    w, names = tree
    db = _db(w)
    try:
        rows = {names[r["child_id"]]: r for r in suggest(db.con)}
    finally:
        db.close()
    truth = {c: b for c, b in TREE_TRUTH.items() if b is not None}
    right = [c for c in truth if c in rows and names[rows[c]["base_id"]] == truth[c]]
    assert len(truth) == 20 and len(right) / len(truth) >= 0.9, {
        c: names[r["base_id"]] for c, r in rows.items()
    }
    assert "a/ckpt1" not in rows and "b/ckpt1" not in rows  # two unrelated runs: two roots
    assert all(c.split("/")[0] == names[r["base_id"]].split("/")[0] for c, r in rows.items())
    # a checkpoint's update continues its base's: the path bends little at the base
    assert all(rows[f"{run}/ckpt{k}"]["angle_at_base"] > 120 for run in "ab" for k in (3, 4, 5))
    assert rows["a/ckpt2"]["angle_at_base"] is None  # its base is a root
    assert {rows[c]["rule"] for c in ("a/low", "a/low_b")} == {"nearest", "sibling"}


def test_a_named_base_is_kept_and_serves_the_rules(tree):
    w, names = tree
    ids = {n: m for m, n in names.items()}
    db = _db(w)
    try:
        db.con.execute("INSERT INTO lineage (child_id, base_id, source) VALUES (?, ?, 'user')",
                       [ids["a/low"], ids["a/ckpt5"]])  # fmt: skip
        rows = {names[r["child_id"]]: names[r["base_id"]] for r in suggest(db.con)}
        db.con.execute("DELETE FROM lineage")
    finally:
        db.close()
    assert "a/low" not in rows
    assert rows["a/low_then_012"] == "a/low" and rows["a/low_b"] == "a/ckpt5"


def test_a_suggestion_never_closes_a_loop_with_a_named_base():
    # two related models; the user named the less trained one's base: the other one, whose
    # only older relative is then its own descendant, gets no suggestion
    tree = _Tree(np.array([[0.0, 1.0], [0.0, 2.0]]), np.array([0.0, 1.0]), [(1, 2)])
    assert list(tree.grow({0: 1})) == []
    assert [(r["child"], r["base"]) for r in _Tree(tree.vectors, np.array([0.0, 1.0]),
            [(1, 2)]).grow({})] == [(1, 0)]  # fmt: skip


def test_spread_is_the_participation_ratio_of_the_singular_values():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    v, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    sigma = np.array([3.0, 2.0, 1.0, 0.5])
    update = (u[:, :4] * sigma) @ v[:, :4].T  # singular values 3, 2, 1, 0.5 exactly
    vectors = np.stack([np.zeros(96), update.ravel(), np.outer(u[:, 0], v[:, 0]).ravel()])
    tree = _Tree(vectors, np.zeros(3), [(12, 8)])
    expected = (sigma**2).sum() ** 2 / (sigma**4).sum()
    assert tree._spreads(0, [1, 2]) == pytest.approx([expected, 1.0], rel=1e-12)  # 2: rank 1
    assert tree._spreads(0, [0]) == [0.0]  # no update


def test_the_command_line(family):
    w, _ = family
    db = ["--db", str(w.db_path)]
    result = runner.invoke(app, ["lineage", "set", "tunes/high_digits", "series/e5", *db])
    assert result.exit_code == 0, result.output
    loop = runner.invoke(app, ["lineage", "set", "series/e5", "tunes/high_digits", *db])
    assert loop.exit_code == 2 and "loop" in loop.output
    shown = runner.invoke(app, ["lineage", "show", "-f", "json", *db])
    assert any(r["model"] == "tunes/high_digits" for r in json.loads(shown.output))
    agreement = runner.invoke(app, ["lineage", "agreement", "series/e5", "-f", "csv", *db])
    assert agreement.exit_code == 0 and "cosine" in agreement.output
    suggested = runner.invoke(app, ["lineage", "suggest", "-f", "json", *db])
    assert suggested.exit_code == 0, suggested.output
    assert {"model", "suggested_base", "distance", "confidence", "kurtosis_gap",
            "angle_at_base", "rule"} <= set(json.loads(suggested.stdout)[0])  # fmt: skip
    assert runner.invoke(app, ["lineage", "clear", "tunes/high_digits", *db]).exit_code == 0


def test_tensor_update_of_a_vector_has_no_spectrum():
    row = tensor_update(np.ones(4), np.ones(4) * 2)
    assert row["rank"] is None and row["rel_update"] == pytest.approx(1.0)


def test_compare_against_a_base_equals_numpy(family):
    w, _ = family
    args = ["tunes/low_digits", "tunes/high_digits", "--base", "series/e5", "-f", "json"]
    result = runner.invoke(app, ["compare", *args, "--db", str(w.db_path)])
    assert result.exit_code == 0, result.output
    rows = {r["layer_path"]: r for r in json.loads(result.stdout)}
    base, a, b = (_arrays(n) for n in ("series/e5", "tunes/low_digits", "tunes/high_digits"))
    for layer in LAYERS:
        keys = [(layer, "kernel"), (layer, "bias")]
        ta = np.concatenate([(a[k] - base[k]).ravel() for k in keys])
        tb = np.concatenate([(b[k] - base[k]).ravel() for k in keys])
        norm = np.sqrt(sum((base[k] ** 2).sum() for k in keys))
        both = (ta != 0) & (tb != 0)
        assert rows[layer]["rel_update_a"] == pytest.approx(np.linalg.norm(ta) / norm)
        assert rows[layer]["cosine"] == pytest.approx(
            ta @ tb / (np.linalg.norm(ta) * np.linalg.norm(tb))
        )
        assert rows[layer]["sign_conflict_rate"] == pytest.approx(
            np.count_nonzero(both & (np.sign(ta) != np.sign(tb))) / both.sum()
        )


def test_a_base_of_another_architecture_is_refused(tmp_path):
    # a new user's `lineage set cnn/e05 lstm_classifier` said "0 tensors compared" and exit 0
    rng = np.random.default_rng(0)
    for name, shape in (("a", (4, 3)), ("b", (6, 5))):
        kernel = rng.standard_normal(shape, dtype="f4")
        write_legacy_h5(tmp_path / f"{name}.h5", {"d": {"d/kernel:0": kernel}}, dense_config("d"))
    (tmp_path / "lake").mkdir()
    w = Warehouse(tmp_path / "lake")
    w.ingest(tmp_path / "a.h5", tmp_path / "b.h5")
    result = runner.invoke(app, ["lineage", "set", "a", "b", "--db", str(w.db_path)])
    assert result.exit_code == 2 and "no tensor" in result.output, result.output
    assert w.query("SELECT count(*) FROM lineage") == [(0,)]
