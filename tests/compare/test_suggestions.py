"""The stored lineage suggestions (wpipe.compare.suggestions, the `lineage_suggestions` view):
written by a plain `wpipe ingest`, kept while nothing changes, computed again for the
architecture whose models changed only, gone with the models, accepted with `lineage set`.

The family is tests/fixtures/lineage_tree (two unrelated tf_keras runs, 22 models of one MLP,
make_lineage_tree_fixtures.py); the expected bases are the truth.json that script wrote.
"""

from __future__ import annotations

import json
import shutil

import duckdb
import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.conftest import FIXTURES, REPO

TREE = FIXTURES / "lineage_tree"
TRUTH = {c: b for c, b in json.loads((TREE / "truth.json").read_text()).items() if b}
runner = CliRunner()


def _ingest(models, db, *options: str) -> None:
    result = runner.invoke(app, ["ingest", str(models), "--db", str(db), "-j", "1", *options])
    assert result.exit_code == 0, result.output


def _query(db, sql: str, params=()) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def _suggested(db) -> dict[str, tuple]:
    """model -> (suggested_base, computed_at) from the view."""
    rows = _query(db, "SELECT model, suggested_base, computed_at FROM lineage_suggestions")
    return {model: (base, at) for model, base, at in rows}


@pytest.fixture
def family(tmp_path):
    """A copy of the family (so that files can be added and removed), ingested."""
    models = tmp_path / "models"
    shutil.copytree(TREE, models)
    db = tmp_path / "w.duckdb"
    _ingest(models, db)
    return models, db


def test_a_plain_ingest_fills_the_view_with_nine_in_ten_true_bases(family):
    _, db = family
    found = {m: base for m, (base, _) in _suggested(db).items()}
    right = [c for c in TRUTH if found.get(c) == TRUTH[c]]
    assert len(TRUTH) == 20 and len(right) / len(TRUTH) >= 0.9, found
    assert "a/ckpt1" not in found and "b/ckpt1" not in found  # the roots have no base
    accepted = _query(db, "SELECT count(*) FROM lineage_suggestions WHERE accepted OR "
                          "named_base IS NOT NULL")  # fmt: skip
    assert accepted == [(0,)]


def test_nothing_changed_computes_nothing_again(family):
    models, db = family
    before = _suggested(db)
    _ingest(models, db)
    assert _suggested(db) == before  # the same rows, the same computed_at
    listed = runner.invoke(app, ["lineage", "suggest", "-f", "json", "--db", str(db)])
    assert listed.exit_code == 0, listed.output
    assert _suggested(db) == before
    assert {r["model"] for r in json.loads(listed.stdout)} == set(before)


def test_only_the_architecture_that_changed_is_computed_again(family):
    models, db = family
    before = _suggested(db)
    for name in ("gru_a.h5", "gru_b.h5"):  # two models of another architecture
        shutil.copy2(REPO / "examples" / "models" / "gru_classifier.h5", models / name)
    _ingest(models, db)
    after = _suggested(db)
    gru = {m: after.pop(m)[0] for m in ("gru_a", "gru_b") if m in after}
    assert gru in ({"gru_a": "gru_b"}, {"gru_b": "gru_a"})  # identical weights: either way
    assert after == before
    (models / "a" / "mid_odd.h5").unlink()
    _ingest(models, db, "--prune")
    after = _suggested(db)
    assert set(after) == set(before) - {"a/mid_odd"} | set(gru)
    # its architecture, computed again
    assert all(at > before[m][1] for m, (_, at) in after.items() if m not in gru)


def test_a_removed_base_takes_its_rows_with_it(family):
    models, db = family
    assert _suggested(db)["a/low_then_012"][0] == "a/low"
    (models / "a" / "low.h5").unlink()
    _ingest(models, db, "--prune")
    after = _suggested(db)
    assert "a/low" not in after and "a/low" not in {base for base, _ in after.values()}
    assert "a/low_then_012" in after  # placed again, under another model
    ids = {m for (m,) in _query(db, "SELECT model_id FROM models")}
    stored = _query(db, "SELECT child_id, base_id FROM suggested_bases")
    assert stored and all(c in ids and b in ids for c, b in stored)


def test_a_suggestion_is_accepted_from_the_view(family):
    _, db = family
    model, base = _query(db, "SELECT model, suggested_base FROM lineage_suggestions "
                             "WHERE model = 'a/ckpt3'")[0]  # fmt: skip
    assert base == TRUTH[model]
    done = runner.invoke(app, ["lineage", "set", model, base, "--db", str(db)])
    assert done.exit_code == 0, done.output
    row = _query(db, "SELECT named_base, accepted, named_by FROM lineage_suggestions "
                     "WHERE model = ?", [model])  # fmt: skip
    assert row == [(base, True, "user")]
    confident = _query(db, "SELECT model, suggested_base FROM lineage_suggestions "
                           "WHERE named_base IS NULL AND confidence >= 0.5")  # fmt: skip
    args = ["lineage", "suggest", "--accept", "--min-confidence", "0.5", "--db", str(db)]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    named = dict(_query(db, "SELECT c.name, b.name FROM lineage AS l "
                            "JOIN models AS c ON c.model_id = l.child_id "
                            "JOIN models AS b ON b.model_id = l.base_id "
                            "WHERE l.source = 'suggested'"))  # fmt: skip
    assert confident and named == dict(confident)
    # the view keeps them after its refresh (the named bases changed the fingerprint)
    shown = _query(db, "SELECT model FROM lineage_suggestions WHERE accepted")
    assert {m for (m,) in shown} == {model, *named}


def test_an_architecture_over_the_ingest_limit_waits_for_lineage_suggest(tmp_path, monkeypatch):
    from wpipe.compare import suggestions

    monkeypatch.setattr(suggestions, "AT_INGEST_MAX_MODELS", 21)  # the family has 22
    db = tmp_path / "w.duckdb"
    _ingest(TREE, db)
    assert _suggested(db) == {}  # the n x n distances are not spent at ingest
    listed = runner.invoke(app, ["lineage", "suggest", "-f", "json", "--db", str(db)])
    assert listed.exit_code == 0, listed.output
    found = {m: base for m, (base, _) in _suggested(db).items()}
    assert sum(found.get(c) == b for c, b in TRUTH.items()) / len(TRUTH) >= 0.9, found
