"""The fuzz suite's quick form (every family, a few cases each, fixed seeds) in one ingest
beside two good files; `make fuzz` runs every case (python -m tests.fuzz.runner --full)."""

from __future__ import annotations

from tests.fuzz import runner
from tests.fuzz.cases import FAMILIES


def test_quick_fuzz_every_family_is_bounded_clean_and_reported():
    results = runner.run(full=False, damage=4, batch=200, per_family=4)
    [result] = results
    # hdf5-loops: each case holds a worker for its whole time limit (full run only)
    assert {c.family for c in result.cases} == set(FAMILIES) - {"hdf5-loops"}
    assert result.problems == []
    assert result.wall < runner.MAX_WALL and result.peak_rss < runner.MAX_RSS
