"""Planning an ingest: which found saves must be read (new or changed since they were
stored), which to hash first because they may be copies, each file's previous checkpoint in
its series, and the order and chunks the map reads them in. What a run did is its `Report`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from wpipe import compare, store
from wpipe.analyse.tables import file_stem, model_id_for
from wpipe.compare.checkpoints import Save, has_training_log, series_of, step_tag
from wpipe.core.textsafe import display, stored, to_os
from wpipe.ingest.filemap import FileJob, Outcome, Settings
from wpipe.readers import ModelReadError, lists_shards, model_files
from wpipe.readers.safefile import stat_problem
from wpipe.readers.walk import Skipped
from wpipe.store import remote
from wpipe.store.lake import Lake

# Small files are read a chunk per task (few tasks, one data file per table per chunk, the
# previous checkpoint's tensors still in memory): at most CHUNK_FILES files and CHUNK_BYTES;
# a file above CHUNK_FILE_BYTES is a task of its own. Chunks shrink so that every worker
# gets several (progress and balance on a small run). 256 small checkpoints take ~2 s: 10,000
# of them make ~40 data files per table, under the end-of-run compaction's 64.
CHUNK_FILES = 256
CHUNK_BYTES = 64 << 20
CHUNK_FILE_BYTES = 16 << 20
CHUNKS_PER_WORKER = 8


@dataclass
class Report:
    files: int = 0
    ingested: int = 0
    unchanged: int = 0
    copied: int = 0
    failed: list[Outcome] = field(default_factory=list)
    pruned: int = 0
    missing: int = 0  # models under the paths whose files are gone, kept (no --prune)
    n_tensors: int = 0
    n_params: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    drift_pairs: int = 0
    warnings: list[str] = field(default_factory=list)


def fingerprint(path: Path) -> tuple[int, float]:
    """(total bytes, newest mtime) of the files a save consists of."""
    if path.is_file() and not lists_shards(path):
        st = path.stat()  # the common case: one stat
        return st.st_size, st.st_mtime
    stats = [p.stat() for p in model_files(path)]
    return sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0)


def fingerprint_or_none(stored: str) -> tuple[int, float]:
    try:
        return fingerprint(Path(to_os(stored)))
    except OSError:  # gone since it was read
        return 0, 0.0


def predecessors(paths: list[str], pattern: str | None) -> dict[str, tuple[str, str]]:
    """path -> (previous checkpoint's path, series label) within each folder and format, by
    the rule of compare.series (wpipe.compare.checkpoints) before architectures and hashes are
    known.
    The series pass after the map checks architectures and fixes what this guess got wrong."""
    folders: dict[str, list[Save]] = {}
    for path in paths:
        save = Save(path, path, file_stem(path), step_tag(path, pattern))
        folders.setdefault(compare.folder_of(path), []).append(save)
    out = {}
    for folder, members in folders.items():
        if len(members) < 2:
            continue
        logged = has_training_log(folder)
        for chain in series_of(members, logged).values():
            for a, b in pairwise(chain):
                out[b.key] = (a.key, folder)
    return out


@dataclass
class Plan:
    """What the map has to do: files to read, files to hash first, unchanged files."""

    work: list[FileJob] = field(default_factory=list)
    to_hash: list[FileJob] = field(default_factory=list)


def key_of(found: Path | remote.RemoteSave) -> str:
    return found.url if isinstance(found, remote.RemoteSave) else stored(str(found))


def make_plan(
    files: list[Path | remote.RemoteSave], db: store.Database, lake: Lake, settings: Settings,
    pattern: str | None, report: Report, drift: bool, on_done=None, known: dict | None = None,
) -> Plan:  # fmt: skip
    """`known`: db.known_files(), when the caller has it already."""
    known = dict(db.known_files() if known is None else known)
    failures = db.known_failures()
    plan = Plan()
    new: list[tuple[str, int, float]] = []
    saves = {f.url: f for f in files if isinstance(f, remote.RemoteSave)}
    for path in files:
        if isinstance(path, remote.RemoteSave):  # listed with its size and LastModified
            key, size, mtime = path.url, path.size, path.mtime
        else:
            key = stored(str(path))  # one spelling per name: undecodable bytes \xHH (textsafe)
            try:
                size, mtime = fingerprint(path)
            except OSError as exc:  # vanished or changed kind since the walk
                problem = stat_problem(path, key) or ModelReadError("io-error", f"{key}: {exc}")
                record_skipped(Skipped(path, problem.code, problem.message, 0, 0.0), db,
                                report, on_done)  # fmt: skip
                continue
        if key in known and known[key][3] != settings.text:
            known.pop(key)  # rows computed with other options: read the file again
        previous = known.get(key) or failures.get(key)
        if previous and previous[0] == size and previous[1] == mtime:
            if key in known:
                report.unchanged += 1
            else:  # failed before and unchanged since: still a failure, not retried
                report.failed.append(
                    Outcome(key, model_id_for(key), "failed", error="unchanged-failure",
                            message=previous[2])
                )  # fmt: skip
            continue
        new.append((key, size, mtime))
    if not new:
        return plan
    chain = predecessors([key_of(p) for p in files], pattern) if drift else {}
    # Files that may be copies: a size another new file or an ingested model has.
    sizes = Counter(size for _, size, _ in new)
    known_sizes = {v[0] for v in known.values()}
    for key, size, mtime in new:
        previous, series = chain.get(key, (None, None))
        job = FileJob(key, lake.location, size, mtime, settings, None, previous, series,
                      saves.get(key), saves.get(previous or ""))  # fmt: skip
        # an object would be fetched twice (to hash, to read): the worker hashes what it reads
        if job.remote is None and (sizes[size] > 1 or size in known_sizes):
            plan.to_hash.append(job)
        else:
            plan.work.append(job)
    return plan


def record_skipped(
    entry: Skipped, db: store.Database, report: Report, on_done: Callable[[Outcome], None] | None
) -> None:
    """A path the walk found but could not read (a FIFO, a dangling symlink): its row."""
    raw, key = str(entry.path), stored(str(entry.path))
    # the message names the file as it is stored (and so as its row and other lines do)
    message = display(key + entry.message[len(raw) :] if entry.message.startswith(raw) else
                      entry.message)  # fmt: skip
    outcome = Outcome(key, model_id_for(key), "failed", error=entry.code, message=message)
    db.record_error(key, entry.code, message, entry.size, entry.mtime)
    report.failed.append(outcome)
    if on_done:
        on_done(outcome)


def series_order(jobs: list[FileJob]) -> list[FileJob]:
    """The jobs with each file right after its previous checkpoint where both are read (a
    series' run of files in order), series in the order their first file comes."""
    by_path = {j.path: j for j in jobs}
    following = {j.previous: j for j in jobs if j.previous in by_path}
    out = []
    for job in jobs:
        if job.previous in by_path:
            continue  # placed after its previous checkpoint
        while job is not None:
            out.append(job)
            job = following.get(job.path)
    placed = {j.path for j in out}
    return out + [j for j in jobs if j.path not in placed]  # a cycle: never, but never lost


def chunked(items: list, sizes: list[int], workers: int) -> list[list]:
    """`items` cut into runs of small ones (CHUNK_FILES, CHUNK_BYTES), a large one alone."""
    per_chunk = max(1, min(CHUNK_FILES, -(-len(items) // (max(1, workers) * CHUNKS_PER_WORKER))))
    chunks: list[list] = []
    run: list = []
    held = 0
    for item, size in zip(items, sizes, strict=True):
        if size > CHUNK_FILE_BYTES:
            chunks.append([item])
            continue
        if run and (len(run) >= per_chunk or held + size > CHUNK_BYTES):
            chunks.append(run)
            run, held = [], 0
        run.append(item)
        held += size
    return chunks + ([run] if run else [])
