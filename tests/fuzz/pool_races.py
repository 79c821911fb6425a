"""Pool start/stop races: start a worker pool, take one result, stop it, many times over, while
busy processes load the machine; nothing may reach stderr (a worker still starting when the
pool stops used to print a `SemLock._rebuild` FileNotFoundError traceback).

Run as a script (`python tests/fuzz/pool_races.py ROUNDS [BUSY]`): its workers then import it
as their main module, as they import `wpipe`'s console script, and each one sleeps a random
moment there first, as a worker starting on a loaded machine does.

`run_pool_races(rounds, busy)` runs it and returns what it printed on stderr.
"""

from __future__ import annotations

import multiprocessing
import random
import subprocess
import sys
import time

from wpipe.ingest import workers

START_DELAY = 0.2  # seconds a starting worker sleeps, give or take START_JITTER
START_JITTER = 0.02


def square(x: int) -> int:
    return x * x


if __name__ == "__mp_main__":  # a worker starting, slowly
    time.sleep(START_DELAY + random.random() * START_JITTER)


def churn(rounds: int) -> None:
    for _ in range(rounds):
        results = workers.map_files(square, list(range(4)), jobs=2, timeout=30.0,
                                    preload=["wpipe.ingest.workers"])  # fmt: skip
        next(results)
        results.close()  # stops the pool; its second worker may still be starting


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def run_pool_races(rounds: int, busy_processes: int = 2, limit: float = 600.0) -> str:
    """stderr of `rounds` pool starts and stops beside `busy_processes` CPU-bound ones."""
    load = [multiprocessing.get_context("spawn").Process(target=busy, args=(limit,))
            for _ in range(busy_processes)]  # fmt: skip
    for p in load:
        p.start()
    try:
        run = subprocess.run([sys.executable, __file__, str(rounds)], capture_output=True,
                             text=True, timeout=limit)  # fmt: skip
    finally:
        for p in load:
            p.kill()
            p.join()
    if run.returncode != 0:
        return f"exit {run.returncode}: {run.stderr}"
    return run.stderr


if __name__ == "__main__":
    churn(int(sys.argv[1]))
