"""The per-file map of an ingest: one model file -> its rows and its drift.

`process_file(job)` reads a file, analyses every tensor, computes drift against the previous
checkpoint of its series (each tensor compared as it is loaded, so the file is read once) and
returns the rows: small tables as Arrow, large ones as data files it wrote into the lake
(uncommitted, so invisible until the driver commits them). It touches no database and never
raises, so it runs unchanged in a local process pool or on a cluster; run twice, it only
leaves an extra uncommitted file that compaction deletes.

`process_chunk(jobs)` is the same map over a run of small files in one task: the files'
small tables go into one data file per table for the whole chunk (not one per model, and
nothing large travels back to the driver), and a file whose previous checkpoint was the
chunk's file before it diffs against that file's tensors still in memory (no second open).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from wpipe.analyse.drift import drift_row, positions, weighted_layers
from wpipe.analyse.spectra import SpectraOptions
from wpipe.analyse.stats import StatsOptions
from wpipe.analyse.tables import (
    FileInfo,
    GatheredRows,
    ValuesMode,
    arch_id,
    build_tables,
    model_id_for,
)
from wpipe.core import schema
from wpipe.core.textsafe import display, to_os
from wpipe.ingest import memory
from wpipe.readers import (
    Model,
    ModelReadError,
    Tensor,
    h5layout,
    h5safe,
    lists_shards,
    model_files,
    open_model,
    sharded,
    sniff,
)
from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.safefile import stat_problem
from wpipe.store import remote, space
from wpipe.store.lake import DataFile, DataFileWriter, LakeLocation, write_data_file

# Rows of one table of one model kept in memory (and sent back to the driver) before the
# worker streams them into a data file of its own: small models batch into few files,
# large ones never hold their value rows in memory.
SPILL_ROWS = 200_000
# A file's tensors kept in memory for the next checkpoint's drift in the same chunk, at most.
HOLD_BYTES = 64 << 20
# This process's recently read small HDF5 layouts: the next checkpoint of a run skips the parse
LAYOUTS = h5layout.Layouts()


@dataclass(frozen=True)
class Settings:
    """Everything besides the file that a model's rows depend on."""

    options: StatsOptions
    values: ValuesMode
    spectra: SpectraOptions
    text: str  # as stored in models.ingest_options


@dataclass(frozen=True)
class FileJob:
    path: str
    lake: LakeLocation
    size: int
    mtime: float
    settings: Settings
    sha256: str | None = None  # known when the driver hashed the file to find duplicates
    previous: str | None = None  # the series' previous checkpoint, for drift
    series: str | None = None
    remote: remote.RemoteSave | None = None  # set when `path` is on object storage
    previous_remote: remote.RemoteSave | None = None  # and when `previous` is


@dataclass
class Outcome:
    path: str
    model_id: str
    status: str  # "ingested" | "unchanged" | "failed" | "copied"
    sha256: str | None = None
    error: str | None = None
    message: str | None = None
    n_tensors: int = 0
    n_params: int = 0
    bytes_read: int = 0
    tables: dict[str, pa.Table] = field(default_factory=dict)  # small tables, in memory
    files: list[DataFile] = field(default_factory=list)  # large tables, written by the worker
    drift: list[dict] = field(default_factory=list)  # vs `previous` (its sha filled later)
    previous: str | None = None

    def held_bytes(self) -> int:
        # get_total_buffer_size: nbytes walks dictionary arrays and costs milliseconds
        return sum(t.get_total_buffer_size() for t in self.tables.values())


def sha256_of(path: str) -> str:
    """SHA-256 of a file's bytes; for a multi-file save, over each file's name and bytes."""
    base = Path(to_os(path))  # `path` as stored (textsafe)
    files = model_files(base)
    digest = hashlib.sha256()
    # shards an index lists that are not regular files (missing, a FIFO, /dev/zero) are not
    # among `files`: their names and kinds count, so saves broken differently differ
    for problem in _member_problems(base):
        digest.update(f"{problem}\0".encode())
    for file in files:
        if len(files) > 1:
            digest.update(display(f"{file.relative_to(base.parent)}\0").encode())
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _member_problems(base: Path) -> list[str]:
    if not lists_shards(base):
        return []
    try:
        names = sharded.shard_names(base, str(base))
    except (ModelReadError, OSError):
        return []
    problems = ((n, stat_problem(base.parent / n, "")) for n in names)
    return [display(f"{n}:{p.code}:{os.path.realpath(base.parent / n)}")
            for n, p in problems if p is not None]  # fmt: skip


def hash_file(path: str) -> tuple[str, str | None, str | None]:
    """(path, sha256, error message) — the map's first phase for files that may be copies."""
    try:
        return path, sha256_of(path), None
    except OSError as exc:
        return path, None, display(f"{path}: {exc.strerror or exc}")


def hash_files(paths: list[str]) -> list[tuple[str, str | None, str | None]]:
    """hash_file over a chunk of paths (one task)."""
    return [hash_file(p) for p in paths]


class TableSink:
    """One table's rows of one model: Arrow in memory until SPILL_ROWS, then a data file."""

    def __init__(self, lake: LakeLocation, table: schema.Table) -> None:
        self.lake, self.table = lake, table
        self.batches: list[pa.RecordBatch | pa.Table] = []
        self.rows = 0
        self.writer: DataFileWriter | None = None

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if self.writer is not None:
            self.writer.write(data)
            return
        self.batches.append(data)
        self.rows += data.num_rows
        if self.rows > SPILL_ROWS:
            self.writer = DataFileWriter(self.lake, self.table.name)
            for held in self.batches:
                self.writer.write(held)
            self.batches = []

    def finish(self) -> tuple[pa.Table | None, DataFile | None]:
        if self.writer is not None:
            return None, self.writer.close()
        if not self.rows:
            return None, None
        target = self.table.arrow_schema
        batches = [b for b in self.batches if isinstance(b, pa.RecordBatch)]
        tables = [t for t in self.batches if isinstance(t, pa.Table)]
        if batches:  # one cast for all (dictionary-coded keys become plain strings)
            tables.append(pa.Table.from_batches(batches).cast(target))
        return pa.concat_tables([t.cast(target) if t.schema != target else t for t in tables]), None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


@dataclass
class Held:
    """A processed file's tensors, kept for the drift of the next checkpoint of its series:
    by dataset path (with shape and dtype, as the direct read compares them) and by position
    (as the reader path does, for the same architecture). `layers`: its weighted layers' paths
    in order (the direct read pairs by position only where the next file's are the same)."""

    path: str
    arch: str
    hdf5: bool  # an HDF5 file: a next file of plain Keras layout compares by dataset path
    layers: tuple[str, ...] = ()
    by_source: dict[str, tuple[tuple, str, np.ndarray]] = field(default_factory=dict)
    by_position: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    nbytes: int = 0


class DriftTracker:
    """Drift of each tensor against the tensor in the same place of the previous checkpoint
    (same position among the weighted layers and in its layer, same shape: the pairing of
    align_layers for one arch_id, so layers whose auto-generated names differ between two
    sessions still pair). The series pass after the map drops pairs whose models turn out not
    to share an architecture. `local`: where the previous file is read; `held`: its tensors,
    already in memory; `keep`: where this file is read, to hold its tensors for the next one
    (`self.kept`). Rows carry this (the later) model's layer path and weight name."""

    def __init__(
        self, job: FileJob, model: Model, stack: ExitStack, local: str | None = None,
        held: Held | None = None, keep: str | None = None,
    ) -> None:  # fmt: skip
        self.rows: list[dict] = []
        self.ids = (model_id_for(job.previous or ""), model_id_for(job.path))
        self.series = job.series
        self.where = job.previous or ""
        self.position = positions(model)
        self.file: h5py.File | None = None  # the previous file, read by dataset path
        self.tensors: dict[tuple[int, int], Tensor] = {}  # or its tensors, read by a reader
        self.held: Held | None = None  # or its tensors, in memory
        self.by_source = False  # held tensors looked up by dataset path
        layers = weighted_layers(model)
        # this file's tensors, for the next one (`keep`: where this file is read)
        self.kept = Held(job.path, arch_id(model), _is_hdf5(keep), layers) if keep else None
        local = local or job.previous  # where the previous file is read (a local copy)
        if job.previous is None or local is None:
            return
        local = to_os(local)  # as stored (textsafe), or a local copy's path
        if held is not None and held.path == job.previous:
            # by dataset path only where the layers have the same names in the same order
            # (then a dataset path is a position); else by position in one architecture
            if _plain(model) and held.hdf5 and held.layers == layers:
                self.held, self.by_source = held, True
            elif held.arch == arch_id(model):
                self.held, self.by_source = held, False
            return
        try:
            if _direct(local, model):
                file = stack.enter_context(h5py.File(local, "r", locking=False))
                if _same_paths(file, model):
                    self.file = file
                    return
            previous = stack.enter_context(open_model(local, where=job.previous))
        except (ModelReadError, OSError):
            return  # the driver's series pass reports what it cannot read
        if arch_id(previous) == arch_id(model):
            self.tensors = {positions(previous)[(layer.layer_path, t.weight_name)]: t
                            for layer in previous.layers for t in layer.tensors}  # fmt: skip

    def visit(self, layer_path: str, tensor: Tensor, array: np.ndarray) -> None:
        key = (layer_path, tensor.weight_name)
        place = self.position[key]
        self._keep(place, tensor, array)
        try:
            before = self._before(place, tensor)
        except (ModelReadError, OSError, ValueError):
            before = None
        if before is not None:
            self.rows.append(drift_row(self.ids, key, before, array, self.series, (None, None)))

    def _keep(self, place: tuple[int, int], tensor: Tensor, array: np.ndarray) -> None:
        kept = self.kept
        if kept is None:
            return
        kept.nbytes += array.nbytes
        if kept.nbytes > HOLD_BYTES:  # too large to hold: the next file reads it again
            self.kept = None
            return
        kept.by_source[tensor.source_name] = (tuple(tensor.shape), tensor.dtype, array)
        kept.by_position[place] = array

    def _before(self, place: tuple[int, int], tensor: Tensor) -> np.ndarray | None:
        if self.held is not None:
            return self._held_before(place, tensor)
        if self.file is not None:
            ds = h5safe.dataset(self.file, tensor.source_name, self.where)
            same = ds.shape == tensor.shape and h5safe.logical_dtype(ds) == tensor.dtype
            return h5safe.read_array(ds) if same else None
        other = self.tensors.get(place)
        if other is None or other.shape != tensor.shape:
            return None
        return other.load()

    def _held_before(self, place: tuple[int, int], tensor: Tensor) -> np.ndarray | None:
        held = self.held
        if self.by_source:  # as the direct read: same dataset path, shape and dtype
            shape, dtype, array = held.by_source.get(tensor.source_name, ((), "", None))
            same = shape == tuple(tensor.shape) and dtype == tensor.dtype
            return array if same else None
        array = held.by_position.get(place)
        return array if array is not None and array.shape == tuple(tensor.shape) else None


def _same_paths(file: h5py.File, model: Model) -> bool:
    """Whether every tensor's dataset path is in the previous file: where a session's layer
    counters named the layers otherwise (`conv1d` vs `conv1d_1`), some path is missing and the
    previous file is read by position instead. (A permutation of names among layers of one
    shape would still pair by name here; Keras's counters only shift.)"""
    try:
        return all(t.source_name in file for layer in model.layers for t in layer.tensors)
    except (OSError, ValueError, KeyError):
        return False


def _direct(previous: str, model: Model) -> bool:
    """Checkpoints of one HDF5 layout keep each tensor at the same dataset path: the previous
    file's tensors are read by path, without parsing its architecture again (an open of a
    small checkpoint costs more than its tensors)."""
    return _plain(model) and _is_hdf5(previous)


def _plain(model: Model) -> bool:
    tensors = [t for layer in model.layers for t in layer.tensors]
    return all(t.layout == "keras" and "," not in t.source_name for t in tensors)


def _is_hdf5(path: str) -> bool:
    return Path(path).is_file() and sniff(Path(path)) == "hdf5"


def process_file(job: FileJob) -> Outcome:
    """Read, analyse and diff one model file; never raises. A file on object storage (and
    its series predecessor) is read from a temporary local copy, removed afterwards."""
    if job.remote is None:
        return _process(job, job.path, None)[0]
    try:
        with ExitStack() as stack:
            local = stack.enter_context(remote.fetched(job.remote))
            previous = None
            if job.previous_remote is not None:
                with contextlib.suppress(OSError):  # no drift then; the series pass reports it
                    previous = str(stack.enter_context(remote.fetched(job.previous_remote)))
            return _process(job, str(local), previous)[0]
    except Exception as exc:  # the object store failed us, not the file: say so, go on
        reason = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
        return Outcome(job.path, model_id_for(job.path), "failed", error="fetch-error",
                       message=f"{job.path}: cannot fetch ({reason})")  # fmt: skip


def _process(
    job: FileJob, local: str, previous: str | None, held: Held | None = None, keep: bool = False,
    gathered: GatheredRows | None = None,
) -> tuple[Outcome, Held | None]:  # fmt: skip
    """process_file on `local`, a local copy of `job.path` (or the path itself), diffing
    against `held` (the previous file's tensors) when it is that file, and returning this
    file's tensors too when `keep`. `gathered`: where the GATHERED tables' rows go (a
    chunk's), not into the outcome; a failed file's are taken out again."""
    model_id = model_id_for(job.path)
    outcome = Outcome(job.path, model_id, "failed", bytes_read=job.size, previous=job.previous)
    sinks: dict[str, TableSink] = {}
    kept = None
    mark = gathered.mark() if gathered is not None else None
    try:
        sha = job.sha256 or sha256_of(local)
        outcome.sha256 = sha
        info = FileInfo(model_id, job.path, sha, job.size, job.mtime, job.settings.text)
        sinks = {t.name: TableSink(job.lake, t) for t in schema.MODEL_TABLES}
        with ExitStack() as stack:
            stack.enter_context(memory.bounded(job.size))
            model = stack.enter_context(open_model(local, where=job.path, layouts=LAYOUTS))
            drift = DriftTracker(job, model, stack, previous, held, local if keep else None)
            s = job.settings
            tables = build_tables(model, info, s.options, s.values, sinks["weight_values"].write,
                                  s.spectra, drift.visit, gathered)  # fmt: skip
            tensors = [t for layer in model.layers for t in layer.tensors]
        for name, rows in tables.items():
            sinks[name].write(rows)
        for name, sink in sinks.items():
            held_rows, written = sink.finish()
            if held_rows is not None:
                outcome.tables[name] = held_rows
            if written is not None:
                outcome.files.append(written)
        outcome.status = "ingested"
        outcome.drift = [{**r, "sha256_b": sha} for r in drift.rows]
        # as the models row counts them
        outcome.n_tensors, outcome.n_params = len(tensors), sum(t.size for t in tensors)
        kept = drift.kept
    except ModelReadError as exc:
        outcome.error, outcome.message = exc.code, exc.message
    except MemoryError:  # past memory.bounded's limit for a file of its size
        outcome.error = "memory-limit"
        outcome.message = display(
            f"{job.path}: reading it needs more memory than a file of {job.size:,} bytes may "
            "take (a damaged file the HDF5 library loops on, or a compression bomb)"
        )
    except OSError as exc:  # a full disk while writing its rows stops the run (store.space)
        outcome.error = "disk-full" if space.is_full(exc) else "io-error"
        outcome.message = display(f"{job.path}: {exc.strerror or exc}")
    except Exception as exc:  # a bug must not stop the other files; the message says so
        outcome.error = "internal-error"
        outcome.message = display(
            f"{job.path}: wpipe failed on this file ({type(exc).__name__}: {exc})"
        )
    if outcome.status == "failed":
        for sink in sinks.values():
            sink.abort()
        outcome.tables, outcome.files = {}, []
        if mark is not None:
            gathered.rollback(mark)
    return outcome, kept


@dataclass
class ChunkOutcome:
    """The outcomes of a chunk's files (their small tables moved into `files`) and the data
    files holding those tables: committed together, never a part of them."""

    outcomes: list[Outcome]
    files: list[DataFile]


def process_chunk(jobs: list[FileJob]) -> ChunkOutcome:
    """process_file over `jobs` (local files) in order, their small tables written as one
    data file per table; a file's tensors stay in memory for the next file when it is its
    successor. When the chunk's files cannot be written, each of its files fails with the
    reason (`disk-full` stops the run); what was written stays uncommitted (swept later)."""
    outcomes = []
    held: Held | None = None
    gathered = GatheredRows()  # the chunk's small tables' rows, converted to Arrow once
    for i, job in enumerate(jobs):
        following = jobs[i + 1].previous == job.path if i + 1 < len(jobs) else False
        outcome, held = _process(job, job.path, None, held, following, gathered)
        outcomes.append(outcome)
    files = []
    try:
        chunk_tables = gathered.tables()
        for table in schema.MODEL_TABLES:
            parts = [o.tables.pop(table.name) for o in outcomes if table.name in o.tables]
            if table.name in chunk_tables and chunk_tables[table.name].num_rows:
                parts.append(chunk_tables[table.name])
            if parts:
                files.append(write_data_file(jobs[0].lake, table.name, pa.concat_tables(parts)))
    except OSError as exc:
        code = "disk-full" if space.is_full(exc) else "io-error"
        for o in outcomes:
            if o.status == "ingested":
                o.status, o.error, o.tables, o.files = "failed", code, {}, []
                o.message = display(f"{o.path}: cannot write its rows ({exc.strerror or exc})")
        files = []
    return ChunkOutcome(outcomes, files)
