"""Hostile moments, the affordable form (`make fuzz` runs more of each): a run killed late
leaves drift that the next run completes, and a worker pool started and stopped over and over
beside busy processes prints nothing."""

from __future__ import annotations

from tests.fuzz.late_kills import run_late_kills
from tests.fuzz.pool_races import run_pool_races


def test_a_run_killed_after_its_commit_leaves_drift_the_next_run_completes(tmp_path):
    result = run_late_kills(2, tmp_path, early=False)
    assert result.problems == []
    assert set(result.outcome.values()) == {"ok"} and len(result.outcome) == 2


def test_a_pool_started_and_stopped_under_load_prints_nothing():
    assert run_pool_races(rounds=20, busy_processes=2) == ""
