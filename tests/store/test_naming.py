"""Model names: relative to the ingested folder, given once, never changed by other models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from wpipe import store
from wpipe.store.naming import assign_names

from tests.conftest import MODELS, Warehouse

DEMO = Path(__file__).resolve().parents[2] / "examples" / "models"


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for run in ("cnn_lr1e-2", "cnn_lr1e-3"):
        shutil.copytree(DEMO / run, root / run, ignore=shutil.ignore_patterns("*.csv"))
    shutil.copy2(DEMO / "lstm_classifier.h5", root / "lstm_classifier.h5")
    return root


def _names(w: Warehouse) -> dict[str, str]:
    return dict(w.query("SELECT path, name FROM models"))


def test_names_do_not_change_when_other_models_arrive(runs, warehouse):
    warehouse.ingest(runs / "cnn_lr1e-2")
    first = _names(warehouse)
    assert sorted(first.values()) == ["e01", "e02", "e03", "e04", "e05"]
    warehouse.ingest(runs / "cnn_lr1e-3")
    after = _names(warehouse)
    assert {p: after[p] for p in first} == first  # the first five keep e01…e05
    newcomers = sorted(n for p, n in after.items() if p not in first)
    assert newcomers == [f"cnn_lr1e-3/e0{i}" for i in range(1, 6)]
    assert warehouse.query("SELECT count(*) FROM model_names") == [(10,)]


def test_a_name_is_the_path_relative_to_the_ingested_folder(runs, warehouse):
    warehouse.ingest(runs)
    names = _names(warehouse)
    assert names[str(runs / "cnn_lr1e-2" / "e01.h5")] == "cnn_lr1e-2/e01"
    assert names[str(runs / "lstm_classifier.h5")] == "lstm_classifier"
    assert len(set(names.values())) == 11


def test_a_changed_file_keeps_its_name(runs, warehouse):
    warehouse.ingest(runs / "cnn_lr1e-2")
    warehouse.ingest(runs / "cnn_lr1e-3")
    target = runs / "cnn_lr1e-3" / "e01.h5"
    # Other content, written now (as a training run rewrites a checkpoint): read again. copy2
    # would keep e05's mtime, and in a fresh clone e01 and e05 have the same size and mtime.
    shutil.copyfile(runs / "cnn_lr1e-3" / "e05.h5", target)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    report = warehouse.ingest(runs)
    assert report.ingested == 2  # e01 again, and the newcomer lstm_classifier
    names = _names(warehouse)
    assert names[str(target)] == "cnn_lr1e-3/e01"
    assert names[str(runs / "lstm_classifier.h5")] == "lstm_classifier"


def test_same_stem_in_one_folder_keeps_the_suffix(tmp_path, warehouse):
    for name in ("k2_conv2d.h5", "k2_conv2d.keras"):
        shutil.copy2(MODELS / name, tmp_path / name)
    warehouse.ingest(tmp_path / "k2_conv2d.h5")
    assert set(_names(warehouse).values()) == {"k2_conv2d"}
    warehouse.ingest(tmp_path)
    assert set(_names(warehouse).values()) == {"k2_conv2d", "k2_conv2d.keras"}


def test_a_database_from_before_model_names_keeps_its_names(runs, warehouse):
    warehouse.ingest(runs / "cnn_lr1e-2")
    # as an older wpipe left it: names in models only
    warehouse.query("UPDATE models SET name = 'old_' || name; DROP TABLE model_names")
    warehouse.ingest(runs / "cnn_lr1e-3")
    names = sorted(_names(warehouse).values())
    assert names[:5] == [f"e0{i}" for i in range(1, 6)]  # free again: e01 is now old_e01
    assert names[5:] == [f"old_e0{i}" for i in range(1, 6)]


def test_newcomers_that_want_one_name_all_widen():
    taken = {"e01": "/r/a/e01.h5"}
    new = {"x": "/r/b/e01.h5", "y": "/q/b/e01.h5", "z": "/r/b/e02.h5"}
    got = assign_names(taken, new, ["/r/b", "/q/b"])
    assert got == {"x": "r/b/e01", "y": "q/b/e01", "z": "e02"}
    assert assign_names({}, {"k": "/r/m.h5"}, ["/r/m.h5"]) == {"k": "m"}


def test_the_store_names_through_one_function(tmp_path):
    # the naming rule lives in wpipe.store.naming: the store keeps no rule of its own
    assert not hasattr(store, "unique_names")
