"""Lineage suggestions' cost for a few hundred models of one architecture (#27): the whole
`wpipe.lineage.suggest` (SQL features + numpy tree) against the method it replaced (nearest
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

from wpipe import lineage, store  # noqa: E402

from tests.conftest import Warehouse  # noqa: E402

FAMILY = ROOT / "tests" / "fixtures" / "lineage_tree"
REPEATS = 7


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
        sq = (vectors**2).sum(axis=1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * vectors @ vectors.T, 0))
        scale = (np.sqrt(sq)[:, None] + np.sqrt(sq)[None, :]) / 2
        rel = np.divide(dist, scale, out=np.full_like(dist, np.inf), where=scale > 0)
        for i, child in enumerate(ids):
            older = np.flatnonzero(ages < ages[i])
            if child in named or not older.size:
                continue
            order = older[np.argsort(rel[i, older])]
            out.append({"child_id": child, "base_id": ids[order[0]]})
    return out


def build(folder: Path, copies: int) -> Warehouse:
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
    w = Warehouse(folder)
    report = w.ingest(models, jobs=2)
    assert not report.failed, report.failed
    return w


def main() -> None:
    copies = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        w = build(Path(tmp), copies)
        db = store.Database(w.db_path, read_only=True)
        n = db.con.execute("SELECT count(*) FROM models").fetchall()[0][0]
        best = {"baseline": np.inf, "suggest": np.inf}
        for _ in range(REPEATS):
            for name, function in (("baseline", baseline), ("suggest", lineage.suggest)):
                start = time.perf_counter()
                function(db.con)
                best[name] = min(best[name], time.perf_counter() - start)
        db.close()
    print(f"{n} models of one architecture, best of {REPEATS}:")
    print(f"  before #27.3 (nearest lower-kurtosis model): {best['baseline']:.3f} s")
    print(f"  suggest (families, age order, angle rule):  {best['suggest']:.3f} s "
          f"({best['suggest'] / best['baseline']:.2f}x)")  # fmt: skip
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
