"""`make bench` (scale-out part): the same small checkpoints ingested by the local process pool
and by a 2-worker Dask LocalCluster, from local disk and from an S3 endpoint (moto in server
mode on 127.0.0.1), with the per-file costs docs/scale.md extrapolates from.

Every ingest is the real CLI in a fresh process, into a fresh database; the best of the
repeats is reported, the cases of one repeat interleaved. Ratios are against the local pool on
local disk, measured in this run; the machine's load average is recorded before and after.
Skips (exit 0, one line) when the scale extras (s3fs, distributed, moto) are not installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
from bench_scale import make_tree  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "_data"
SEED_MODEL = ROOT / "examples" / "models" / "cnn_lr1e-3" / "e01.h5"  # the small-file case
N_FILES = int(os.environ.get("WPIPE_BENCH_SCALE_FILES", "2000"))
REPEATS = int(os.environ.get("WPIPE_BENCH_REPEATS", "2"))
JOBS = 2
BIG_MB = 50  # the large file of the copy-or-ranged-reads measurement
RESULTS = DATA / "cluster.json"
REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|HEAD|DELETE) [^"]* HTTP/1')
ESTIMATE_MODELS = 100_000


def make_big(path: Path) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        group = f.create_group("model_weights")
        for i in range(BIG_MB // 5):
            group[f"w{i}"] = rng.standard_normal((1024, 1280), dtype=np.float32)


class Moto:
    """A moto S3 server in its own process, counting the requests it serves."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=self.url,
        )

    def requests(self) -> int:
        """Requests served so far (werkzeug logs one line per request)."""
        return sum(self.by_method().values())

    def by_method(self) -> Counter:
        """Requests served so far, by HTTP method."""
        text = self.log.read_text(errors="replace")
        return Counter(m.group(1) for m in REQUEST.finditer(text))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def cli_ingest(source: str, extra: list[str]) -> float:
    """Wall time of one `wpipe ingest` into a fresh database (a fresh process)."""
    with tempfile.TemporaryDirectory(prefix="wpipe-bench-") as tmp:
        db = Path(tmp) / "b.duckdb"
        fresh = f"s3://bench/lake-{uuid.uuid4().hex[:8]}"  # a new lake for every run
        extra = [a.replace("{s3lake}", fresh) for a in extra]
        command = [str(Path(sys.executable).parent / "wpipe"), "ingest", source, "--db",
                   str(db), "-j", str(JOBS), "-q", *extra]  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
        return seconds


def copy_or_ranged(fs, key: str, repeats: int, served) -> dict[str, float]:
    """Seconds and requests per file to hash and read every dataset: a temporary local copy
    vs h5py on s3fs's file object (ranged GETs); `served()` counts the server's requests."""

    def read_all(f: h5py.File) -> None:
        f.visititems(lambda _n, o: o[()] if isinstance(o, h5py.Dataset) else None)

    def copy() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "m.h5"
            fs.get_file(key, str(local))
            hashlib.sha256(local.read_bytes()).hexdigest()
            with h5py.File(local, "r") as f:
                read_all(f)

    def ranged() -> None:
        with fs.open(key, "rb") as fo:
            digest = hashlib.sha256()
            while chunk := fo.read(1 << 20):
                digest.update(chunk)
            fo.seek(0)
            with h5py.File(fo, "r") as f:
                read_all(f)

    out = {}
    for name, fn in (("copy", copy), ("ranged", ranged)):
        best = float("inf")
        before = served()
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        out[f"{name}_s"] = best
        out[f"{name}_requests"] = (served() - before) / repeats
    return out


def per_file_costs(sweep: Path, bucket_url: str, served, n: int = 200) -> dict[str, float]:
    """Driver and worker costs per file, measured in this process on `n` files."""
    from wpipe import store
    from wpipe.analyse.spectra import SpectraOptions
    from wpipe.analyse.stats import StatsOptions
    from wpipe.analyse.tables import ValuesMode
    from wpipe.ingest.driver import BATCH_MODELS, commit_batch, discover, ingest_options
    from wpipe.ingest.filemap import FileJob, Settings, process_file
    from wpipe.store import remote
    from wpipe.store.remote import open_lake

    costs: dict[str, float] = {}
    started = time.perf_counter()
    listing = remote.discover([bucket_url], discover)
    costs["list_s_per_1000"] = (time.perf_counter() - started) / len(listing.saves) * 1000
    costs["list_requests_per_1000"] = listing.requests / len(listing.saves) * 1000
    saves = listing.saves[:n]
    started = time.perf_counter()
    for save in saves:
        with remote.fetched(save):
            pass
    costs["fetch_s"] = (time.perf_counter() - started) / len(saves)
    costs["file_bytes"] = sum(s.size for s in saves) / len(saves)
    options, values, spectra = StatsOptions(), ValuesMode.default(), SpectraOptions()
    settings = Settings(options, values, spectra, ingest_options(options, values, spectra))
    for where in ("local", "s3"):
        with tempfile.TemporaryDirectory(prefix="wpipe-bench-") as tmp:
            lake = open_lake(Path(tmp) / "lake" if where == "local" else "s3://bench/costlake")
            lake.versions()  # creates the tables, as an ingest's start does
            db = store.Database(Path(tmp) / "c.duckdb")
            files = sorted(discover([sweep]))[:n]
            jobs = [FileJob(str(p), lake.location, p.stat().st_size, p.stat().st_mtime, settings)
                    for p in files]  # fmt: skip
            started = time.perf_counter()
            outcomes = [process_file(job) for job in jobs]
            costs[f"worker_{where}_lake_s"] = (time.perf_counter() - started) / len(jobs)
            before, commit_s, load_s = served(), 0.0, 0.0
            for i in range(0, len(outcomes), BATCH_MODELS):
                batch = outcomes[i : i + BATCH_MODELS]
                started = time.perf_counter()
                files_in, versions = commit_batch(lake, batch, set())
                commit_s += time.perf_counter() - started
                started = time.perf_counter()
                db.load_batch(lake, files_in, [o.model_id for o in batch], versions)
                load_s += time.perf_counter() - started
            costs[f"driver_{where}_lake_commit_s"] = commit_s / len(jobs)
            costs[f"driver_{where}_lake_load_s"] = load_s / len(jobs)
            costs[f"driver_{where}_lake_s"] = (commit_s + load_s) / len(jobs)
            for method, count in (served() - before).items():
                costs[f"driver_{where}_lake_{method}_per_file"] = count / len(jobs)
            db.close()
    return costs


def main() -> int:
    if sys.argv[1:] == ["--estimate"]:  # again, from the last run's figures
        estimate(json.loads(RESULTS.read_text()))
        return 0
    costs_only = sys.argv[1:] == ["--costs"]  # the per-file costs alone, without the ingests
    try:
        import distributed  # noqa: F401
        import moto  # noqa: F401
        import s3fs
    except ImportError as exc:
        print(f"scale bench skipped: {exc.name} is not installed (pip install -e '.[dev]')")
        return 0
    DATA.mkdir(parents=True, exist_ok=True)
    sweep = DATA / f"cluster_tree{N_FILES}"
    make_tree(sweep, N_FILES)  # series of 10 checkpoints, as the other scale cases
    big = DATA / f"big{BIG_MB}mb.h5"
    make_big(big)
    from distributed.deploy.subprocess import SubprocessCluster

    moto_server = Moto(DATA / "moto.log")
    stack = contextlib.ExitStack()
    results: dict = {"files": N_FILES, "jobs": JOBS, "repeats": REPEATS,
                     "load_before": os.getloadavg()}  # fmt: skip
    try:
        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        started = time.perf_counter()
        fs.put(str(sweep), "bench/sweep", recursive=True)
        fs.put_file(str(SEED_MODEL), "bench/small.h5")
        fs.put_file(str(big), "bench/big.h5")
        results["upload_s"] = time.perf_counter() - started
        for key in ("small", "big"):
            repeats = 10 if key == "small" else 2
            timing = copy_or_ranged(fs, f"bench/{key}.h5", repeats, moto_server.requests)
            results.update({f"{key}_{k}": v for k, v in timing.items()})
        results.update(per_file_costs(sweep, "s3://bench/sweep", moto_server.by_method))
        if costs_only:
            print(json.dumps(results, indent=2))
            return 0
        RESULTS.write_text(json.dumps(results, indent=2))  # after every step: a slow run
        # a cluster whose scheduler runs in its own process, started before the ingest: what
        # --dask local costs beyond it is the LocalCluster's start and its in-process scheduler
        cluster = SubprocessCluster(n_workers=JOBS, threads_per_worker=1,
                                    dashboard_address=":0", silence_logs=40)  # fmt: skip
        stack.callback(cluster.close)
        cases = {  # that is stopped still leaves its figures
            "local_pool": (str(sweep), []),
            "local_dask": (str(sweep), ["--dask", "local"]),
            "local_dask_tcp": (str(sweep), ["--dask", cluster.scheduler_address]),
            "s3_pool": ("s3://bench/sweep/", []),
            "s3_dask_s3_lake": ("s3://bench/sweep/", ["--dask", "local", "--lake", "{s3lake}"]),
        }
        best = {name: float("inf") for name in cases}
        for _ in range(REPEATS):
            for name, (source, extra) in cases.items():
                before = moto_server.by_method()
                best[name] = min(best[name], cli_ingest(source, extra))
                for method, count in (moto_server.by_method() - before).items():
                    results[f"{name}_{method}_per_file"] = count / N_FILES
                print(f"  {name}: {best[name]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
                results[f"{name}_s"] = best[name]
                RESULTS.write_text(json.dumps(results, indent=2))
        results.update({f"{k}_s": v for k, v in best.items()})
        results["load_after"] = os.getloadavg()
    finally:
        stack.close()
        moto_server.stop()
    RESULTS.write_text(json.dumps(results, indent=2))
    report(results, best)
    return 0


def report(r: dict, best: dict[str, float]) -> None:
    base = best["local_pool"]
    print(f"load average before {r['load_before'][0]:.1f}, after {r['load_after'][0]:.1f}")
    print(f"\n{r['files']:,} small checkpoints ({r['file_bytes'] / 1e3:.0f} KB each), -j {JOBS}, "
          f"best of {r['repeats']}; ratios against the local pool on local disk")  # fmt: skip
    print("| source | executor | seconds | ratio |\n|---|---|---|---|")
    for name, label in (("local_pool", "local disk | process pool"),
                        ("local_dask", "local disk | Dask LocalCluster, 2 workers"),
                        ("local_dask_tcp", "local disk | Dask, scheduler in its own process, "
                                           "started before"),
                        ("s3_pool", "moto S3 | process pool"),
                        ("s3_dask_s3_lake", "moto S3, lake on S3 | Dask LocalCluster, 2 workers"),
                        ):  # fmt: skip
        print(f"| {label} | {best[name]:.1f} | {best[name] / base:.2f}× |")
    print("\nper-file costs (one process):")
    for key in ("list_s_per_1000", "list_requests_per_1000", "fetch_s", "worker_local_lake_s",
                "driver_local_lake_s", "worker_s3_lake_s", "driver_s3_lake_s"):  # fmt: skip
        print(f"  {key}: {r[key]:.4g}")
    for key in ("small", "big"):
        print(f"  {key} file, temporary copy {r[f'{key}_copy_s'] * 1e3:.1f} ms vs ranged reads "
              f"{r[f'{key}_ranged_s'] * 1e3:.1f} ms "
              f"({r[f'{key}_ranged_s'] / r[f'{key}_copy_s']:.2f}×); requests "
              f"{r[f'{key}_copy_requests']:g} vs {r[f'{key}_ranged_requests']:g}")  # fmt: skip
    print(f"results: {RESULTS}")
    estimate(r)


def estimate(r: dict, n: int = ESTIMATE_MODELS) -> None:
    """docs/scale.md's table: n models like the measured ones, from the per-file costs."""
    worker = r["worker_s3_lake_s"] + r["fetch_s"]  # one file: copy it, read, analyse, write
    driver = r["driver_s3_lake_s"]  # its share of a batch's commits and DuckDB load
    gets = r.get("s3_dask_s3_lake_GET_per_file", 0.0)
    puts = r.get("s3_dask_s3_lake_PUT_per_file", 0.0)
    print(f"\nestimate for {n:,} models of {r['file_bytes'] / 1e3:.0f} KB (lake on S3):")
    print(f"  listing: {n / 1000:,.0f} LIST pages, {r['list_s_per_1000'] * n / 1000:,.0f} s")
    print(f"  requests: {gets * n:,.0f} GET, {puts * n:,.0f} PUT "
          f"({gets:.2f} and {puts:.3f} per file, measured)")  # fmt: skip
    # each file once, and its series predecessor once more for drift (9 of 10 in a series)
    print(f"  bytes read: {r['file_bytes'] * n * 1.9 / 1e9:,.1f} GB of checkpoints")
    print(f"  worker time: {worker * n / 3600:,.1f} core-hours ({worker:.3f} s per file)")
    print(f"  driver time: {driver * n / 3600:,.2f} hours ({driver:.4f} s per file)")
    print(f"  the driver is the bottleneck above {worker / driver:.1f} workers")
    for workers in (2, 8, 32, 128):
        wall = max(worker * n / workers, driver * n) + r["list_s_per_1000"] * n / 1000
        print(f"  {workers:>4} workers: {wall / 3600:,.2f} h")


if __name__ == "__main__":
    sys.exit(main())
