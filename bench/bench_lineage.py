"""Lineage suggestions' cost for a few hundred models of one architecture (#27): the whole
`wpipe.compare.lineage.suggest` (SQL features + numpy tree) against the method it replaced (nearest
model with lower mean kernel kurtosis; its loop is kept below as the baseline), in one run.

The database holds COPIES copies of the lineage test family (tests/fixtures/lineage_tree,
22 files of one MLP), each file's kernels nudged by a seeded amount so that no two models are
identical: 22 × COPIES models of one arch_id. Best of REPEATS, interleaved; the load average
is printed before and after.

    .venv/bin/python bench/bench_lineage.py [COPIES]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wpipe import store  # noqa: E402
from wpipe.compare import lineage  # noqa: E402

from tests.conftest import Warehouse  # noqa: E402

FAMILY = ROOT / "tests" / "fixtures" / "lineage_tree"
REPEATS = 15


def baseline(con) -> list[dict]:
    """The method before #27 part 3: nearest model (relative distance over tile means) among
    those with lower mean kernel kurtosis."""
    named = {c for (c,) in con.execute("SELECT child_id FROM lineage").fetchall()}
    groups = con.execute(
        "SELECT arch_id, list(model_id ORDER BY ingested_at DESC) FROM models "
        "GROUP BY arch_id HAVING count(*) > 1"
    ).fetchall()
    out = []
    for _, ids in groups:
        vectors, ages, _ = lineage._features(con, ids)
        out += [{"child_id": ids[i], "base_id": ids[b]}
                for i, b in baseline_tree(vectors, ages) if ids[i] not in named]  # fmt: skip
    return out


def baseline_tree(vectors, ages) -> list[tuple[int, int]]:
    sq = (vectors**2).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * vectors @ vectors.T, 0))
    scale = (np.sqrt(sq)[:, None] + np.sqrt(sq)[None, :]) / 2
    rel = np.divide(dist, scale, out=np.full_like(dist, np.inf), where=scale > 0)
    out = []
    for i in range(len(ages)):
        older = np.flatnonzero(ages < ages[i])
        if older.size:
            out.append((i, int(older[np.argsort(rel[i, older])][0])))
    return out


def new_tree(vectors, kurtosis, shapes) -> list[dict]:
    return list(lineage._Tree(vectors, kurtosis, shapes).grow({}))


def build(folder: Path, copies: int) -> Warehouse:
    w = Warehouse(folder)
    report = w.ingest(make_copies(folder, copies), jobs=2)
    assert not report.failed, report.failed
    return w


def make_copies(folder: Path, copies: int) -> Path:
    """The folder of the family's nudged copies (module docstring)."""
    models = folder / "models"
    rng = np.random.default_rng(0)
    for k in range(copies):
        for source in FAMILY.rglob("*.h5"):
            target = models / f"c{k}" / source.relative_to(FAMILY)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            with h5py.File(target, "r+") as f:
                kernel = f["model_weights/h1/h1/kernel:0"]
                kernel[0, 0] += np.float32(rng.normal(0, 1e-3))
    return models


def main() -> None:
    copies = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        w = build(Path(tmp), copies)
        db = store.Database(w.db_path, read_only=True)
        ids = [m for (m,) in db.con.execute("SELECT model_id FROM models").fetchall()]
        features = lineage._features(db.con, ids)
        cases = {
            "baseline": lambda: baseline(db.con),
            "suggest": lambda: lineage.suggest(db.con),
            "baseline tree": lambda: baseline_tree(*features[:2]),
            "new tree": lambda: new_tree(*features),
        }
        best = dict.fromkeys(cases, np.inf)
        for _ in range(REPEATS):
            for name, function in cases.items():
                start = time.perf_counter()
                function()
                best[name] = min(best[name], time.perf_counter() - start)
        db.close()
    print(f"{len(ids)} models of one architecture ({features[0].shape[1]} cells), "
          f"best of {REPEATS}:")  # fmt: skip
    print(f"  whole, before #27.3 (nearest lower-kurtosis model): {best['baseline']:.3f} s")
    print(f"  whole, suggest now: {best['suggest']:.3f} s "
          f"({best['suggest'] / best['baseline']:.2f}x)")  # fmt: skip
    print(f"  numpy only, before: {best['baseline tree']:.3f} s; now: {best['new tree']:.3f} s "
          f"({best['new tree'] / best['baseline tree']:.2f}x)")  # fmt: skip
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
