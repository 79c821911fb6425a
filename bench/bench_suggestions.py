"""What storing the lineage suggestions adds to an ingest (#27): the ingest of a model set, and
`wpipe.compare.suggestions.refresh` on the database it wrote, computed from scratch (every
architecture) and with nothing changed (one grouped query), in one run. Sets: the demo
(examples/models); 22 × COPIES nudged copies of the lineage test family (one architecture,
bench_lineage.make_copies); the same with one file added (its architecture computed again).
Best of REPEATS for the refreshes; each ingest once (jobs=2, the refresh included).

    .venv/bin/python bench/bench_suggestions.py [COPIES]
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
from wpipe.compare import suggestions  # noqa: E402

from bench.bench_lineage import make_copies  # noqa: E402
from tests.conftest import Warehouse  # noqa: E402

REPEATS = 5


def refresh_times(db_path: Path) -> tuple[float, float, int]:
    """(best from scratch, best with nothing changed, architectures computed)."""
    db = store.Database(db_path)
    scratch, unchanged, archs = float("inf"), float("inf"), 0
    try:
        for _ in range(REPEATS):
            db.con.execute("DELETE FROM ingest_state WHERE starts_with(name, ?)",
                           [suggestions.STATE_PREFIX])  # fmt: skip
            start = time.perf_counter()
            archs = suggestions.refresh(db.con)
            scratch = min(scratch, time.perf_counter() - start)
            start = time.perf_counter()
            assert suggestions.refresh(db.con) == 0
            unchanged = min(unchanged, time.perf_counter() - start)
    finally:
        db.close()
    return scratch, unchanged, archs


def report(name: str, w: Warehouse, seconds: float) -> None:
    n = w.query("SELECT count(*) FROM models")[0][0]
    scratch, unchanged, archs = refresh_times(w.db_path)
    print(f"{name}: {n} models, ingest {seconds:.2f} s (refresh included); refresh of "
          f"{archs} architectures {scratch:.3f} s ({scratch / seconds:.1%} of the ingest), "
          f"nothing changed {unchanged * 1000:.1f} ms")  # fmt: skip


def main() -> None:
    copies = int(sys.argv[1]) if len(sys.argv) > 1 else 14
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "demo").mkdir()
        w = Warehouse(Path(tmp) / "demo")
        done = w.ingest(ROOT / "examples" / "models", jobs=2)
        assert not done.failed
        report("demo", w, done.seconds)
        models = make_copies(Path(tmp) / "family", copies)
        w = Warehouse(Path(tmp) / "family")
        done = w.ingest(models, jobs=2)
        assert not done.failed
        report("family copies", w, done.seconds)
        extra = models / "extra" / "ckpt.h5"  # one model more: its architecture is computed again
        extra.parent.mkdir()
        shutil.copy2(next(models.rglob("*.h5")), extra)
        with h5py.File(extra, "r+") as f:
            f["model_weights/h1/h1/kernel:0"][0, 1] += np.float32(1e-3)
        done = w.ingest(models, jobs=2)
        assert done.ingested == 1 and not done.failed
        report("family copies + 1 file", w, done.seconds)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
