"""Checkpoint series only where there is evidence of training order; the same weights in
other formats or copies are never consecutive checkpoints; `stale` only inside a series."""

from __future__ import annotations

import json
import shutil

import pytest
from wpipe.compare.checkpoints import Save, checkpoint_number, format_of, series_of

from tests.conftest import EXPECTED, MODELS, Warehouse

FROZEN = json.loads((EXPECTED / "series_frozen.json").read_text())


def saves(*paths: str, sha: dict[str, str] | None = None, steps: dict | None = None) -> list:
    return [
        Save(p, f"/runs/{p}", p.split(".")[0], (steps or {}).get(p), (sha or {}).get(p))
        for p in paths
    ]


def keys(found: dict) -> dict[str, list[str]]:
    return {fmt: [s.key for s in chain] for fmt, chain in found.items()}


@pytest.mark.parametrize(
    ("names", "number"),
    [
        ("weights.05-0.42.hdf5", ("weights.", 5)),
        ("ckpt_0010.keras", ("ckpt_", 10)),
        ("model-3.h5", ("model-", 3)),
        ("model.07-val_loss0.31.weights.h5", ("model.", 7)),
        ("200", ("", 200)),  # an Orbax step folder
        ("3.h5", ("", 3)),
        ("m1.h5", None),  # no separator: a model named m1, not a counter
        ("final.h5", None),
        ("resnet50.keras", None),
    ],
)
def test_checkpoint_like_names(names, number):
    assert checkpoint_number(names) == number


def test_untagged_names_side_by_side_are_no_series():
    assert series_of(saves("a.h5", "b.h5", "c.h5"), logged=False) == {}
    # a training log in the folder says they are one run: ordered by name
    assert keys(series_of(saves("a.h5", "b.h5"), logged=True)) == {".h5": ["a.h5", "b.h5"]}


def test_checkpoint_names_and_tags_order_a_series():
    found = series_of(saves("ckpt_10.h5", "ckpt_2.h5", "ckpt_1.h5"), logged=False)
    assert keys(found) == {".h5": ["ckpt_1.h5", "ckpt_2.h5", "ckpt_10.h5"]}
    steps = {"late.h5": 9.0, "early.h5": 1.0}
    assert keys(series_of(saves("late.h5", "early.h5", steps=steps), logged=False)) == {
        ".h5": ["early.h5", "late.h5"]
    }
    # two prefixes are two kinds of file, not one counter
    assert series_of(saves("ckpt_1.h5", "best_2.h5"), logged=False) == {}


def test_each_format_is_a_series_of_its_own():
    names = [f"e0{k}{fmt}" for k in (1, 2) for fmt in (".h5", ".keras", ".weights.h5")]
    steps = {n: float(n[2]) for n in names}
    found = keys(series_of(saves(*names, steps=steps), logged=False))
    assert found == {
        ".h5": ["e01.h5", "e02.h5"],
        ".keras": ["e01.keras", "e02.keras"],
        ".weights.h5": ["e01.weights.h5", "e02.weights.h5"],
    }
    assert format_of("/a/e01.weights.h5") == ".weights.h5" and format_of("/a/e01.h5") == ".h5"


def test_copies_and_repeated_steps_are_left_out():
    steps = {"e01.h5": 1.0, "e02.h5": 2.0, "e02_again.h5": 2.0, "e03.h5": 3.0}
    sha = {"e01.h5": "x", "e02.h5": "y", "e02_again.h5": "z", "e03.h5": "y"}
    found = keys(series_of(saves(*steps, sha=sha, steps=steps), logged=False))
    assert found == {".h5": ["e01.h5", "e02.h5"]}  # e02_again: same step; e03: e02's bytes


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Every fixture saved as .h5, .keras and .weights.h5 side by side in one folder, and the
    real series with a frozen layer (three epochs in the same three formats) beneath it."""
    root = tmp_path_factory.mktemp("mixed")
    folder = root / "models"
    folder.mkdir()
    for path in MODELS.glob("k[23]_*"):
        if path.is_file() and path.name.endswith((".h5", ".keras")):
            shutil.copy2(path, folder)
    shutil.copytree(MODELS / "series_frozen", folder / "series_frozen")
    w = Warehouse(root)
    assert not w.ingest(folder).failed
    return w


def test_mixed_formats_give_no_stale_and_the_frozen_series_does(mixed):
    stale = mixed.query(
        "SELECT model, layer_path, weight_name FROM weight_health WHERE stale ORDER BY ALL"
    )
    frozen = FROZEN["unchanged_every_step"]
    n_tensors = sum(FROZEN["tensors_per_layer"][layer] for layer in frozen)
    later = FROZEN["epochs"] - 1  # every checkpoint after the first
    assert len(stale) == n_tensors * later * len(FROZEN["formats"])
    assert {m.split("/")[0] for m, _, _ in stale} == {"series_frozen"}
    assert {lp for _, lp, _ in stale} == set(frozen)
    series = mixed.query("SELECT series, count(DISTINCT model_b) FROM drift GROUP BY ALL")
    assert sorted(n for _, n in series) == [later] * len(FROZEN["formats"])
    assert sorted(s.rsplit("#", 1)[1] for s, _ in series) == sorted(FROZEN["formats"])
    changed = mixed.query(
        "SELECT DISTINCT layer_path FROM drift WHERE rel_l2 > 0 ORDER BY layer_path"
    )
    assert [lp for (lp,) in changed] == FROZEN["changed_every_step"]
