"""Identical files: recorded as duplicates of one model, counted once across models."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.conftest import EXAMPLES, Warehouse

runner = CliRunner()


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """Five distinct checkpoints, each saved again under two other folders (15 files)."""
    root = tmp_path_factory.mktemp("dups")
    for copy in ("a", "b", "c"):
        shutil.copytree(EXAMPLES / "cnn_lr1e-2", root / "runs" / copy,
                        ignore=shutil.ignore_patterns("*.csv"))  # fmt: skip
    w = Warehouse(root)
    assert not w.ingest(root / "runs").failed
    return w, root / "runs"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copies_are_listed_with_the_model_they_duplicate(copies):
    w, runs = copies
    files = sorted(runs.rglob("*.h5"))
    distinct = {_sha(f) for f in files}
    assert (len(files), len(distinct)) == (15, 5)
    rows = w.query("SELECT model, duplicate_of_model, n_copies FROM duplicate_models")
    assert len(rows) == len(files) - len(distinct)
    assert all(n == 3 for _, _, n in rows)
    by_name = {f"{f.parent.name}/{f.stem}": _sha(f) for f in files}
    assert all(by_name[m] == by_name[o] and m != o for m, o, _ in rows)
    originals = w.query("SELECT count(*) FROM model_summary WHERE duplicate_of IS NULL")
    assert originals == [(len(distinct),)]


def test_correlate_counts_distinct_models_and_says_how_many_it_left_out(copies, tmp_path):
    w, runs = copies
    # every file gets a metric; copies get their original's value (they are the same model)
    lines = ["model,val_accuracy"]
    for f in sorted(runs.rglob("*.h5")):
        lines.append(f"{f.parent.name}/{f.stem},{int(f.stem[1:]) / 10}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    db = str(w.db_path)
    added = runner.invoke(app, ["metrics", "add", str(tmp_path / "m.csv"), "--db", db])
    assert added.exit_code == 0, added.output
    result = runner.invoke(app, ["correlate", "val_accuracy", "--db", db, "-f", "csv"])
    assert result.exit_code == 0, result.output
    lines = [line.split(",") for line in result.output.splitlines() if line.count(",") == 2]
    assert lines[0] == ["statistic", "n_models", "spearman_rho"]
    counts = {fields[1] for fields in lines[1:]}
    assert counts == {"5"}  # 15 files, 5 distinct models
    table = runner.invoke(app, ["correlate", "val_accuracy", "--db", db],
                          env={"COLUMNS": "120"})  # fmt: skip
    assert "10 duplicates left out" in table.output
