"""The ingest's driver side of the map: outcomes collected, committed to the lake in batches
(`commit_batch`, the one step that writes the lake's log) and loaded into DuckDB, copies of
identical files made from committed rows, drift rows held until their previous checkpoint's
hash is known."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from wpipe import compare, store
from wpipe.analyse.tables import file_stem, model_id_for
from wpipe.core import schema
from wpipe.core.textsafe import first_line
from wpipe.ingest import memory
from wpipe.ingest.filemap import ChunkOutcome, FileJob, Outcome, TableSink
from wpipe.ingest.plan import fingerprint_or_none
from wpipe.store import space, sync
from wpipe.store.lake import DataFile, Lake, write_data_file
from wpipe.store.space import StoreFailed

# A batch is committed and loaded when it holds this many models, this many bytes of small
# tables, or is this old: few commits, bounded driver memory, little lost to a kill. A
# batch's fixed cost (nine commits, versions recorded, served views re-pointed over a growing
# list of files) was ~0.3 ms a small checkpoint at 256 models (~10 s of driver at 10,000).
BATCH_MODELS = 2048
BATCH_BYTES = 64 << 20
BATCH_SECONDS = 30.0
# Drift rows the driver converts to Arrow at a time (a few hundred KB of dicts at most).
DRIFT_ROWS_HELD = 4096


class Driver:
    """Collects outcomes, commits them in batches, loads each batch, remembers drift."""

    def __init__(
        self, db, lake, report, on_done, progress, current: dict[str, str], known: dict
    ) -> None:
        """`current`: path -> sha256 of the models whose rows have this run's settings."""
        self.db, self.lake, self.report = db, lake, report
        self.on_done, self.progress = on_done, progress
        # sha256 -> model_id of content already in (or bound for) the lake
        self.by_sha = {sha: model_id_for(p) for p, sha in current.items()}
        self.known_ids = {model_id_for(p) for p in known}  # models the database holds
        self.pending: list[Outcome] = []
        self.shared: list[DataFile] = []  # data files of the pending chunks' small tables
        self.to_load = 0  # models the run may load (the load phase's total)
        self.held = 0  # bytes of the pending outcomes' in-memory tables
        self.since = time.monotonic()
        self.copies: list[tuple[FileJob, str]] = []  # (job, model_id whose rows it copies)
        # drift rows as Arrow a few thousand at a time: as dicts, 10,000 small checkpoints'
        # ~70,000 rows held ~150 MB of the driver until the end of the run
        self.drift: list[pa.Table] = []
        self.drift_rows: list[dict] = []
        self.shas: dict[str, str] = {}
        # model_id -> sha256 of the content its rows hold once this run is over, where known
        # already: a held drift row is stored once its previous checkpoint's is
        self.sha_by_id = {model_id_for(p): sha for p, sha in current.items()}
        self.touched: list[tuple[str, float]] = []
        self.jobs: dict[str, FileJob] = {}  # path -> job of the files being read

    def sort_hashed(self, jobs: list[FileJob], hashed: Iterable, shas: dict) -> list[FileJob]:
        """After the hash phase: unchanged content is touched, copies of known or earlier
        content are copied, the rest is read (with its hash, not hashed again)."""
        by_path = {j.path: j for j in jobs}
        results = {}
        for path, sha, error in hashed:
            self.progress.advance(1, Path(path).name)
            results[path] = (sha, error)
        work = []
        for job in jobs:  # in walk order, so the first of identical files is the one read
            sha, error = results[job.path]
            if shas.get(job.path) != sha:  # its rows change (or go): its sha is not known yet
                self.sha_by_id.pop(model_id_for(job.path), None)
            if error is not None:
                self._failed(Outcome(job.path, model_id_for(job.path), "failed",
                                     error="io-error", message=error), job)  # fmt: skip
            elif shas.get(job.path) == sha:
                self.db.touch_model(job.path, job.mtime)
                self.touched.append((job.path, job.mtime))
                self.report.unchanged += 1
            elif sha in self.by_sha:
                self.copies.append((replace(by_path[job.path], sha256=sha), self.by_sha[sha]))
            else:
                self.by_sha[sha] = model_id_for(job.path)
                work.append(replace(job, sha256=sha))
        return work

    def expect(self, work: list[FileJob]) -> None:
        """The files to be read: their rows, and so their hashes, are not known until then."""
        self.jobs = {job.path: job for job in work}
        self.to_load = len(work) + len(self.copies)
        for job in work:
            self.sha_by_id.pop(model_id_for(job.path), None)

    def take_chunk(self, chunk: ChunkOutcome) -> None:
        """A chunk's outcomes, committed in one batch (they share its data files)."""
        self.shared += chunk.files
        for outcome in chunk.outcomes:
            self.take(outcome, flush=False)
        self._maybe_flush()

    def take(self, outcome: Outcome, flush: bool = True) -> None:
        if outcome.error == "disk-full":  # every file after it would fail alike: stop here
            self.discard_pending()
            raise StoreFailed(outcome.message)
        if outcome.status == "failed":
            self._failed(outcome, self.jobs.get(outcome.path))
            return
        self.report.ingested += 1
        self.report.n_tensors += outcome.n_tensors
        self.report.n_params += outcome.n_params
        self.report.bytes_read += outcome.bytes_read
        self.shas[outcome.path] = outcome.sha256
        self.sha_by_id[outcome.model_id] = outcome.sha256
        self.by_sha.setdefault(outcome.sha256, outcome.model_id)
        self.drift_rows += outcome.drift
        outcome.drift = []
        if len(self.drift_rows) >= DRIFT_ROWS_HELD:
            self._hold_drift()
        self.pending.append(outcome)
        if self.on_done:
            self.on_done(outcome)
        self.held += outcome.held_bytes()
        if flush:
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (len(self.pending) >= BATCH_MODELS or self.held >= BATCH_BYTES
                or time.monotonic() - self.since >= BATCH_SECONDS):  # fmt: skip
            self.flush()

    def _failed(self, outcome: Outcome, job: FileJob | None) -> None:
        size, mtime = (job.size, job.mtime) if job else fingerprint_or_none(outcome.path)
        self.db.record_error(outcome.path, outcome.error, outcome.message, size, mtime)
        self.report.failed.append(outcome)
        if self.on_done:
            self.on_done(outcome)

    def discard_pending(self) -> None:
        """The data files of outcomes not committed yet (the run is stopping)."""
        self.lake.delete_uncommitted([*(f for o in self.pending for f in o.files), *self.shared])
        self.pending, self.shared = [], []

    def flush(self) -> None:
        if self.pending:
            self.progress.phase("load", max(self.to_load, len(self.pending)))
            ids = [o.model_id for o in self.pending]
            try:
                files, versions = commit_batch(self.lake, self.pending, self.known_ids,
                                               self.shared)  # fmt: skip
                self.db.load_batch(self.lake, files, ids, versions,
                                   self.known_ids.intersection(ids))  # fmt: skip
                release(self.db)  # bounded whatever the number of batches
            except Exception as exc:
                if space.is_full(exc):
                    # commits the database did not load are rolled back by the next run
                    self.discard_pending()
                    raise StoreFailed(space.full_reason(exc)) from None
                if not isinstance(exc, duckdb.Error):
                    raise
                self._unloadable(exc)
                return
            self.known_ids.update(ids)
            self.store_drift(self.sha_by_id)
            self.progress.advance(len(self.pending))
            self.pending, self.shared = [], []
            self.held = 0
            self.progress.phase("read", 0)  # back to the read phase, its count kept
        self.since = time.monotonic()

    def _unloadable(self, exc: duckdb.Error) -> None:
        """The database refused the batch (after its retry under a higher memory limit): its
        lake commits are rolled back and each of its files is recorded as `load-failed`, so
        the run goes on and the next one neither meets a lake ahead of its database nor takes
        the batch for ingested. A batch of several files is read again next time (which one
        was at fault is not known); a file alone in its batch is a failure until it changes."""
        sync.reconcile(self.db, self.lake)  # restores the versions the database holds
        failed = {o.model_id for o in self.pending}
        alone = len(self.pending) == 1
        for outcome in self.pending:
            self.report.ingested -= 1
            self.report.copied -= outcome.status == "copied"
            self.shas.pop(outcome.path, None)
            self.sha_by_id.pop(outcome.model_id, None)
            job = self.jobs.get(outcome.path)
            size, mtime = (job.size, job.mtime) if job and alone else (-1, 0.0)
            message = (f"{outcome.path}: its rows could not be loaded into the database "
                       f"({type(exc).__name__}: {first_line(exc)}); not stored")  # fmt: skip
            self.db.record_error(outcome.path, "load-failed", message, size, mtime)
            failure = Outcome(outcome.path, outcome.model_id, "failed", error="load-failed",
                              message=message)  # fmt: skip
            self.report.failed.append(failure)
            if self.on_done:
                self.on_done(failure)
        self.by_sha = {sha: m for sha, m in self.by_sha.items() if m not in failed}
        self._hold_drift()
        import pyarrow.compute as pc  # here: a run that reads nothing never loads it

        self.drift = [t.filter(pc.invert(pc.is_in(t.column("model_b"), pa.array(list(failed)))))
                      for t in self.drift]  # fmt: skip
        self.pending, self.shared, self.held = [], [], 0
        self.since = time.monotonic()
        self.progress.phase("read", 0)

    def copy_duplicates(self) -> None:
        """Files identical to another model: that model's rows under their own id and path."""
        if not self.copies:
            return
        self.progress.phase("copy", len(self.copies))
        for job, source in self.copies:
            if source not in self.known_ids:  # the file it is identical to failed
                original = next((o.path for o in self.report.failed if o.model_id == source),
                                "a file that failed")  # fmt: skip
                self._failed(Outcome(job.path, model_id_for(job.path), "failed",
                                     error="copy-of-failed", message=f"{job.path}: identical "
                                     f"to {original} (see its error)"), job)  # fmt: skip
                continue
            outcome = copy_rows(self.lake, job, source)
            self.report.ingested += 1
            self.report.copied += 1
            self.shas[job.path] = job.sha256
            self.pending.append(outcome)
            self.progress.advance(1, Path(job.path).name)
            if len(self.pending) >= BATCH_MODELS:
                self.flush()
        self.flush()

    def _hold_drift(self) -> None:
        if self.drift_rows:
            self.drift.append(pa.Table.from_pylist(self.drift_rows, schema.DRIFT.arrow_schema))
            self.drift_rows = []

    def store_drift(self, by_id: dict[str, str], final: bool = False) -> None:
        """Held drift rows whose previous checkpoint's hash is known (`by_id`: model_id ->
        sha256), stored a held table at a time (a pair's rows are in one: an outcome's are
        held together), at each batch: held to the end, 10,000 small checkpoints' drift kept
        ~17 MB of the driver and their store took ~60 MB more. The rest stay held; `final`:
        they are dropped (their previous checkpoint failed or is gone)."""
        self._hold_drift()
        if not self.drift:
            return  # nothing held (a run that read nothing never loads Arrow's compute)
        import pyarrow.compute as pc

        ids, id_shas = pa.array(list(by_id), pa.string()), pa.array(list(by_id.values()))
        held = []
        for rows in self.drift:
            found = pc.index_in(rows.column("model_a"), value_set=ids)
            known = pc.is_valid(found)
            if not final:
                waiting = rows.filter(pc.invert(known))
                if waiting.num_rows:
                    held.append(waiting)
            rows = rows.filter(known)
            if not rows.num_rows:
                continue
            sha_a = id_shas.take(found.drop_null())
            rows = rows.set_column(rows.schema.get_field_index("sha256_a"), "sha256_a", sha_a)
            pairs = rows.group_by(["model_a", "model_b"]).aggregate([])
            pairs = sorted(zip(pairs.column("model_a").to_pylist(),
                               pairs.column("model_b").to_pylist(), strict=True))  # fmt: skip
            compare.replace_drift(self.db.con, pairs, rows)
            self.report.drift_pairs += len(pairs)
        self.drift = held


def commit_batch(
    lake: Lake, outcomes: list[Outcome], in_lake: set[str], shared: Iterable[DataFile] = ()
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Commit the outcomes' rows to the lake: per table, the workers' data files (`shared`:
    files holding rows of several of these outcomes) plus one file of the small tables still
    in memory, replacing the older rows of models in `in_lake` in the same commit; `models`
    last, so its rows never name a model whose other rows are missing.
    Returns (table -> new files to load, table -> version committed)."""
    replaced = {o.model_id for o in outcomes} & in_lake
    files: dict[str, list[str]] = {}
    versions: dict[str, int] = {}
    shared = list(shared)
    for table in (*schema.MODEL_TABLES[1:], schema.MODELS):
        adds: list[DataFile] = [f for o in outcomes for f in o.files if f.table == table.name]
        adds += [f for f in shared if f.table == table.name]
        held = [o.tables[table.name] for o in outcomes if table.name in o.tables]
        if held:
            adds.append(write_data_file(lake.location, table.name, pa.concat_tables(held)))
        versions[table.name] = lake.replace(table.name, replaced, adds)
        files[table.name] = [f.name for f in adds]
    return files, versions


def copy_rows(lake: Lake, job: FileJob, source: str) -> Outcome:
    """An outcome for `job`'s file holding the committed rows of model `source` (the same
    content) under the file's own model_id, path and times."""
    model_id = model_id_for(job.path)
    outcome = Outcome(job.path, model_id, "copied", sha256=job.sha256)
    for table in schema.MODEL_TABLES:
        rows = lake.rows_of(table.name, {source})
        if not rows.num_rows:
            continue
        rows = rows.set_column(0, "model_id", pa.array([model_id] * rows.num_rows))
        if table is schema.MODELS:
            now = datetime.now(timezone.utc)
            for name, value in (("name", file_stem(job.path)), ("path", job.path),
                                ("mtime", job.mtime), ("ingested_at", now)):  # fmt: skip
                i = rows.schema.get_field_index(name)
                rows = rows.set_column(i, name, pa.array([value], rows.schema.field(i).type))
        sink = TableSink(job.lake, table)
        sink.write(rows)
        held, written = sink.finish()
        if held is not None:
            outcome.tables[table.name] = held
        if written is not None:
            outcome.files.append(written)
    return outcome


def release(db: store.Database) -> None:
    """Before a step that allocates afresh: DuckDB's cache evicted, and what the allocators
    hold freed given back."""
    db.release_memory()
    memory.give_back()
