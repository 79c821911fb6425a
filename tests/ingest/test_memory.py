"""The memory bound of an ingest (docs: performance): peak RSS ≤ 3 × the largest tensor + 300 MB.

Measured on a synthetic file holding one large tensor, ingested in a fresh process with
every stage in that process (-j 1 without a time limit: reader, statistics, units, tiles,
spectra, drift, lake commit and DuckDB load together, the worst case). The bound itself is the
check: the ingest peaks near 347 MB against its 529 MB budget, and a stage that copies the
tensor a few times over (pooling tiles in float64 did: 650 MB) exceeds it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import duckdb
import numpy as np
from wpipe import store
from wpipe.ingest.memory import MALLOC_SETTINGS

from tests.conftest import dense_config, write_legacy_h5

ROWS, COLS = 200_000, 100  # 20M float32 weights: an 80 MB tensor, cheap spectra (100 x 100)

_CHILD = """
import json, sys
from pathlib import Path
from wpipe.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
status = Path("/proc/self/status").read_text().splitlines()
print(json.dumps({"hwm_kb": next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))}))
"""


def test_ingest_peak_rss_stays_within_three_tensors_and_300_mb(tmp_path):
    kernel = np.random.default_rng(0).standard_normal((ROWS, COLS), dtype=np.float32)
    model = write_legacy_h5(
        tmp_path / "big.h5",
        {"dense": {"dense/kernel:0": kernel, "dense/bias:0": np.zeros(COLS, np.float32)}},
        dense_config("dense"),
    )
    tensor_mb = kernel.nbytes / 2**20
    del kernel
    db = tmp_path / "big.duckdb"
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, "ingest", str(model), "--db", str(db), "-q", "-j", "1",
         "--file-timeout", "0"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    peak_mb = json.loads(out.strip().splitlines()[-1])["hwm_kb"] / 1024
    budget_mb = 3 * tensor_mb + 300
    assert peak_mb <= budget_mb, f"peak RSS {peak_mb:.0f} MB, budget {budget_mb:.0f} MB"
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT size FROM weights WHERE weight_name LIKE '%kernel%'").fetchall() \
        == [(ROWS * COLS,)]  # fmt: skip
    con.close()


def test_release_memory_drops_duckdbs_block_cache_and_keeps_its_limit(tmp_path):
    # an ingest loads batch after batch into one connection: without the release, every
    # batch's blocks stay cached up to the memory limit (the driver grew to 972 MB on 10,000
    # small models)
    db = store.Database(tmp_path / "cache.duckdb")
    try:
        limit = db.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        db.con.execute("CREATE TABLE t AS SELECT range AS i, random() AS x FROM range(4000000)")
        db.con.execute("CHECKPOINT")
        assert db.con.execute("SELECT count(*), sum(i) FROM t").fetchone() \
            == (4_000_000, 4_000_000 * 3_999_999 // 2)  # fmt: skip
        cached = "SELECT sum(memory_usage_bytes) FROM duckdb_memory()"
        assert db.con.execute(cached).fetchone()[0] > 20 << 20  # the table's blocks, cached
        db.release_memory()
        assert db.con.execute(cached).fetchone()[0] < 4 << 20
        assert db.con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == limit
        assert db.con.execute("SELECT count(*) FROM t").fetchone()[0] == 4_000_000
    finally:
        db.close()


def test_workers_of_an_ingest_get_its_malloc_settings() -> None:
    # a fresh interpreter: the forkserver must start after the settings are made, as in `wpipe`
    names = list(MALLOC_SETTINGS)
    script = (
        "import os, sys\n"
        "from wpipe.ingest import memory, workers\n"
        "memory.tune_malloc()\n"
        f"print(dict(workers.map_files(os.getenv, {names!r}, 1, timeout=60)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in names}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout  # fmt: skip
    got = ast.literal_eval(out.strip())  # in the order the workers answered
    assert got == {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "16777216",
                   "MALLOC_TRIM_THRESHOLD_": "4194304"}  # fmt: skip


def _allocate_in_a_bound(gib: float) -> str:
    import numpy as np
    from wpipe.ingest import memory

    try:
        with memory.bounded(30_000):  # a 30 KB file
            np.ones(int(gib * (1 << 30)), dtype=np.uint8)
    except MemoryError:
        return "refused"
    return "allocated"


def _reserve_after_a_bound() -> str:
    import numpy as np
    from wpipe.ingest import memory

    with memory.bounded(30_000):
        pass
    np.empty(4 << 30, dtype=np.uint8)  # address space only: raises if the limit stayed
    return "reserved"


def test_a_worker_reading_a_small_file_cannot_take_gigabytes():
    import multiprocessing

    from wpipe.ingest import memory

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_allocate_in_a_bound, (4.0,)) == "refused"
        assert pool.apply(_allocate_in_a_bound, (0.25,)) == "allocated"  # within its base
        assert pool.apply(_reserve_after_a_bound) == "reserved"  # the limit is lifted after
    import resource

    before = resource.getrlimit(resource.RLIMIT_AS)
    with memory.bounded(30_000):  # the driver (no parent process): unchanged
        assert resource.getrlimit(resource.RLIMIT_AS) == before
