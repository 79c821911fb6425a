"""Layouts of small HDF5 saves read recently, so the next checkpoint of a run skips the parse.

The checkpoints of one training run, saved by the same code, are the same HDF5 file byte for
byte everywhere but in their datasets' data: the same superblock, groups, attributes
(architecture, training configuration, layer and weight names) and dataset headers, at the
same offsets (Keras's ModelCheckpoint files of examples/models are). Parsing that layout is
most of a small checkpoint's read (~4 ms of h5py calls for a 90 KB file, against ~0.1 ms for
its values). `Layouts` keeps the layout of a few recently read small files: a file equal to
one of them outside the data of its contiguous datasets gets that file's Model, with each
tensor read from its own bytes.

Why the Model is the one its own parse would give: HDF5 never interprets a dataset's raw
data (the structure is in the superblock, object headers, B-trees and heaps: every one of
those bytes is compared), and the readers build a Model from headers and attributes only
(values are read by `Tensor.load`). A layout is learned from a file whose bytes it keeps
(not when the file changed between that read and its parse), only when every tensor is a
plain contiguous dataset whose bytes equal what h5py reads, and only from the second file of
a size (a zoo of distinct files pays nothing for it). A layout's tensors are looked up by
offset, so a hostile file whose "data" overlapped its own metadata could at worst give the
rows of the file it imitates, with its own values: never a read outside it.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.base import Model, ModelReadError
from wpipe.readers.h5safe import MAX_OBJECTS
from wpipe.readers.safefile import open_regular

MAX_FILE_BYTES = 16 << 20  # larger saves are parsed each time: their values dominate anyway
KEEP = 16  # layouts kept (a sweep interleaves runs whose configurations differ)
KEEP_BYTES = 16 << 20  # and at most this much of their files' bytes outside the data
SIZES_SEEN = 64  # recent file sizes remembered, to learn a layout from a size's second file


@dataclass
class _Layout:
    size: int
    gaps: list[tuple[int, bytes]]  # (offset, bytes) of the file outside the data regions
    model: Model  # as read from the file it was learned from (its loaders are never called)
    places: list[list[tuple[int, np.dtype, tuple[int, ...]]]]  # per layer, per tensor

    @property
    def nbytes(self) -> int:
        return sum(len(g) for _, g in self.gaps)

    def matches(self, data: bytes) -> bool:
        return len(data) == self.size and all(
            data[start : start + len(gap)] == gap for start, gap in self.gaps
        )

    def model_for(self, data: bytes, where: str) -> Model:
        """This layout's Model for a file of the same layout: its own path, its own values."""
        model = copy.copy(self.model)
        model.path = where
        model.layers = []
        for layer, places in zip(self.model.layers, self.places, strict=True):
            layer = copy.copy(layer)
            tensors = []
            for tensor, place in zip(layer.tensors, places, strict=True):
                tensor = copy.copy(tensor)
                tensor.load = _from_bytes(data, *place)
                tensors.append(tensor)
            layer.tensors = tensors
            model.layers.append(layer)
        return model


def _from_bytes(data: bytes, offset: int, dtype: np.dtype, shape: tuple) -> Callable:
    count = math.prod(shape)

    def load() -> np.ndarray:  # what h5safe.read_array gives: a fresh C-ordered array
        return np.frombuffer(data, dtype, count, offset).reshape(shape).copy()

    return load


@dataclass(frozen=True)
class Read:
    """A small file's bytes, and its identity when they were read (inode, size, times)."""

    data: bytes
    stamp: tuple[int, ...]


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Layouts:
    """The layouts of recently read small HDF5 files (most recent first). Thread-safe (a Dask
    worker may ingest on several threads)."""

    def __init__(self) -> None:
        self.layouts: list[_Layout] = []
        self.sizes: list[int] = []  # sizes of recent files, most recent last
        self.lock = threading.Lock()

    def read(self, path: Path, size: int, where: str) -> Read | None:
        """The file's bytes when it is small enough to match or learn a layout."""
        if size > MAX_FILE_BYTES:
            return None
        with open_regular(path, where) as fh:
            stamp = _stamp(os.fstat(fh.fileno()))
            data = fh.read(MAX_FILE_BYTES + 1)
        return Read(data, stamp) if len(data) <= MAX_FILE_BYTES else None

    def match(self, read: Read, where: str) -> Model | None:
        with self.lock:
            found = next((x for x in self.layouts if x.matches(read.data)), None)
            if found is not None and found is not self.layouts[0]:
                self.layouts.remove(found)
                self.layouts.insert(0, found)
        return None if found is None else found.model_for(read.data, where)

    def wants(self, read: Read) -> bool:
        """Whether to learn this (unmatched) file's layout: a size met before."""
        size = len(read.data)
        with self.lock:
            seen = size in self.sizes
            self.sizes = [*self.sizes[-(SIZES_SEEN - 1) :], size]
        return seen

    def learn(self, f: h5py.File, model: Model, read: Read, path: Path) -> None:
        """Remember the layout of `model`, read from `f`, the file at `path` whose bytes were
        `read` (unless the file changed since: its layout would not be that of the bytes)."""
        try:
            layout = _layout_of(f, model, read.data)
            if layout is not None and _stamp(os.stat(path)) != read.stamp:
                layout = None
        except (_TooMany, ModelReadError, OSError, RuntimeError, KeyError, ValueError):
            layout = None  # the file was read: only its layout is not kept
        if layout is None:
            return
        with self.lock:
            self.layouts.insert(0, layout)
            del self.layouts[KEEP:]
            while len(self.layouts) > 1 and sum(x.nbytes for x in self.layouts) > KEEP_BYTES:
                self.layouts.pop()


def _layout_of(f: h5py.File, model: Model, data: bytes) -> _Layout | None:
    """The layout, or None unless every tensor is a plain contiguous dataset (native byte
    order, a shape, stored bytes equal to its values) whose data is where its header says."""
    places = []
    regions = []
    for layer in model.layers:
        places.append([])
        for tensor in layer.tensors:
            if tensor.tied_sources:
                return None  # tied: decided on the values of copies a layout does not compare
            ds = getattr(tensor.load, "dataset", None)  # set by h5safe.lazy_array
            place = _place(ds, tensor.status, data) if ds is not None else None
            if place is None:
                return None
            places[-1].append(place)
            regions.append((place[0], math.prod(place[2]) * place[1].itemsize))
            if not np.array_equal(tensor.load(), _from_bytes(data, *place)(), equal_nan=True):
                return None
    regions += _other_regions(f, {r[0] for r in regions})
    gaps = _gaps(sorted(regions), data)
    return None if gaps is None else _Layout(len(data), gaps, model, places)


def _place(ds: h5py.Dataset, status: str, data: bytes) -> tuple | None:
    dtype, shape = ds.dtype, ds.shape
    if status != "ok" or dtype.kind not in "fiu" or not dtype.isnative or not shape:
        return None
    offset = ds.id.get_offset()
    nbytes = math.prod(shape) * dtype.itemsize
    if offset is None or not nbytes or ds.id.get_storage_size() != nbytes:
        return None
    if offset + nbytes > len(data):
        return None
    return offset, dtype, tuple(int(d) for d in shape)


def _other_regions(f: h5py.File, taken: set[int]) -> list[tuple[int, int]]:
    """The data of the file's other contiguous datasets (optimizer state: the readers count
    its tensors from headers, never read them)."""
    regions = []
    seen = itertools.count(1)

    def visit(name: bytes, info: h5py.h5o.ObjInfo) -> None:
        if next(seen) > MAX_OBJECTS:
            raise _TooMany
        if info.type != h5py.h5o.TYPE_DATASET:
            return
        dsid = h5py.h5d.open(f.id, name)
        offset, size = dsid.get_offset(), dsid.get_storage_size()
        if offset is not None and size and offset not in taken:
            regions.append((offset, size))

    h5py.h5o.visit(f.id, visit, info=True)
    return regions


class _TooMany(Exception):
    """More objects than h5safe.MAX_OBJECTS: such a file's layout is not learned."""


def _gaps(regions: list[tuple[int, int]], data: bytes) -> list[tuple[int, bytes]] | None:
    """The bytes between the data regions (None when regions overlap or leave the file)."""
    gaps = []
    at = 0
    for offset, size in regions:
        if offset < at or offset + size > len(data):
            return None
        if offset > at:
            gaps.append((at, data[at:offset]))
        at = offset + size
    if at < len(data):
        gaps.append((at, data[at:]))
    return gaps
