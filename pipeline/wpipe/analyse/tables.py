"""analyse stage: one read Model -> the rows of the contract tables (as Arrow)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from wpipe.analyse.anatomy import slice_columns, slice_groups
from wpipe.analyse.identity import model_sha, tensor_sha
from wpipe.analyse.spectra import SpectraOptions
from wpipe.analyse.spectra_tables import SpectraCollector
from wpipe.analyse.stats import StatsOptions, sample_indices, tensor_stats
from wpipe.analyse.tiles import TileBudget, tile_columns
from wpipe.core import schema
from wpipe.core.tags import strip_model_suffix
from wpipe.core.textsafe import display
from wpipe.readers import Model, Tensor
from wpipe.readers.keras_config import layer_fields

if TYPE_CHECKING:  # the forward pass (every layer family's module) loads with a file's costs
    from wpipe.forward.cost import LayerCost, ModelCost

DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True)
class FileInfo:
    model_id: str
    path: str
    sha256: str
    file_bytes: int
    mtime: float
    ingest_options: str = ""


# Default --values (docs: values): sample:1024, and at most MODEL_VALUES values a model, so
# what a large model stores stays a few % of its file whatever its number of tensors.
DEFAULT_VALUES = "auto"
AUTO_TENSOR_VALUES = 1024
MODEL_VALUES = 32768


@dataclass(frozen=True)
class ValuesMode:
    """How many values per tensor go to weight_values: all, none, or a uniform sample of N
    (`per_model`: and at most that many in a model, each tensor's share lowered evenly)."""

    kind: str  # "all" | "none" | "sample"
    n: int = 0
    per_model: int = 0

    @classmethod
    def default(cls) -> ValuesMode:
        return cls.parse(DEFAULT_VALUES)

    @classmethod
    def parse(cls, text: str) -> ValuesMode:
        if text in ("all", "none"):
            return cls(text)
        if text == "auto":
            return cls("sample", AUTO_TENSOR_VALUES, MODEL_VALUES)
        kind, _, number = text.partition(":")
        if kind == "sample" and number.isdigit() and int(number) > 0:
            return cls("sample", int(number))
        raise ValueError(f"--values must be auto, all, none or sample:N (N > 0), not {text!r}")

    @property
    def text(self) -> str:
        if self.per_model:
            return "auto"
        return f"sample:{self.n}" if self.kind == "sample" else self.kind

    def kept(self, sizes: list[int]) -> int:
        """Values kept of tensors of `sizes` (n already the per-tensor share)."""
        if self.kind == "none":
            return 0
        return sum(sizes) if self.kind == "all" else sum(min(s, self.n) for s in sizes)

    def per_tensor(self, sizes: list[int]) -> int:
        """Values a tensor of the model whose tensors have `sizes` keeps (all when smaller):
        the largest share up to n that keeps the model within per_model."""
        if not self.per_model or sum(min(s, self.n) for s in sizes) <= self.per_model:
            return self.n
        lo, hi = 0, self.n  # sum(min(s, q)) grows with q: the largest q within the budget
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if sum(min(s, mid) for s in sizes) <= self.per_model:
                lo = mid
            else:
                hi = mid - 1
        return max(lo, 1)


def model_id_for(path: str) -> str:
    # of the stored path (textsafe.stored: one spelling per name, so one id per file)
    return hashlib.sha1(display(path).encode("utf-8")).hexdigest()[:16]


def arch_id(model: Model) -> str:
    """Fingerprint of the weighted layers' classes and weight shapes, in order."""
    signature = [
        [layer.class_name, [[t.role, list(t.shape)] for t in layer.tensors]]
        for layer in model.layers
        if layer.tensors
    ]
    return hashlib.sha256(json.dumps(signature).encode()).hexdigest()[:16]


def build_tables(
    model: Model,
    info: FileInfo,
    options: StatsOptions,
    values: ValuesMode,
    emit_values: Callable[[pa.RecordBatch | pa.Table], None],
    spectra: SpectraOptions | None = None,
    visit: Callable[[str, Tensor, np.ndarray], None] | None = None,
    into: GatheredRows | None = None,
) -> dict[str, pa.Table]:
    """Analyse every tensor (one in memory at a time); weight_values go to `emit_values`,
    and `visit(layer_path, tensor, array)` sees each loaded tensor (drift uses it, so a
    tensor is read once). `into`: where the GATHERED tables' rows go (then not returned),
    gathered with other models' rows."""
    layer_rows, weight_rows = [], []
    layer_shas: list[list[str | None]] = []
    gathered = into if into is not None else GatheredRows()
    # per tensor Arrow columns, not dict rows: a model's units and bins stay a few MB
    hist_rows, unit_rows = gathered.parts["histograms"], gathered.parts["units"]
    tile_rows = gathered.parts["weight_tiles"]
    sizes = [t.size for layer in model.layers for t in layer.tensors if t.status == "ok"]
    mode = dataclasses.replace(values, n=values.per_tensor(sizes), per_model=0)
    # a small model's values go with the chunk's (one conversion for all its models)
    shared = into is not None and mode.kept(sizes) <= VALUES_GATHER
    values_out = _Values(mode, emit_values, gathered.parts["weight_values"] if shared else None)
    # the background's room: the largest tensor, at float32
    spectra_out = SpectraCollector(spectra or SpectraOptions(), 4 * max(sizes, default=0))
    weight_index = 0
    arch = arch_id(model)
    cost = costs_of(model, arch)
    tile_budget = TileBudget([t.shape for layer in model.layers for t in layer.tensors])
    for layer_index, layer in enumerate(model.layers):
        layer_rows.append(
            {
                "model_id": info.model_id,
                "layer_index": layer_index,
                "layer_path": layer.layer_path,
                "layer_name": layer.layer_name,
                "class_name": layer.class_name,
                "trainable": layer.trainable,
                "n_params": sum(t.size for t in layer.tensors),
                "n_trainable": sum(t.size for t in layer.tensors if t.trainable),
                "n_tensors": len(layer.tensors),
                **_config_columns(layer.config),
                **_cost_columns(cost.layers.get(layer.layer_path)),
            }
        )
        layer_shas.append([])
        for tensor in layer.tensors:
            key = {
                "model_id": info.model_id,
                "layer_path": layer.layer_path,
                "weight_name": tensor.weight_name,
            }
            row = {
                **key,
                "weight_index": weight_index,
                "role": tensor.role,
                "trainable": tensor.trainable,
                "dtype": tensor.dtype,
                "shape": list(tensor.shape),
                "size": tensor.size,
                "source_name": tensor.source_name,
                "layout": tensor.layout,
                "quantization": tensor.quantization,
                "status": tensor.status,
                "tied_sources": list(tensor.tied_sources) or None,
            }
            weight_index += 1
            if tensor.status != "ok":  # kept, not analysed: never a silent cast
                weight_rows.append(row)
                layer_shas[-1].append(None)
                continue
            array = tensor.load()
            stats, hist = tensor_stats(array, options)
            row["content_sha"] = tensor_sha(array, tensor.layout)
            layer_shas[-1].append(row["content_sha"])
            weight_rows.append({**row, **stats})
            if hist is not None:
                bins = np.arange(len(hist.counts), dtype=np.int64)
                hist_rows.add(key, {"bin": bins, "lo": hist.edges[:-1], "hi": hist.edges[1:],
                                    "count": hist.counts})  # fmt: skip
            direction = tensor.weight_name.split("/", 1)[0]
            groups = slice_groups(layer.class_name, layer.config, tensor.weight_name,
                                  tensor.role, tensor.layout, array)  # fmt: skip
            for group in groups:
                columns = slice_columns(group, options.near_zero)
                n = len(columns["index"])
                unit_rows.add(key, {
                    "role": [tensor.role] * n,
                    "direction": [direction if direction in DIRECTIONS else None] * n,
                    **columns})  # fmt: skip
            spectra_out.add(key, layer.class_name, layer.config, tensor, array)
            tiles = tile_columns(array, tile_budget.cells(array))
            if tiles is not None:
                tile_rows.add(key, *tiles)
            values_out.add(key, array)
            if visit is not None:
                visit(layer.layer_path, tensor, array)
            del array

    values_out.flush()
    tensors = [t for layer in model.layers for t in layer.tensors]
    model_row = {
        "model_id": info.model_id,
        "name": file_stem(info.path),
        "path": info.path,
        "sha256": info.sha256,
        "file_bytes": info.file_bytes,
        "mtime": info.mtime,
        "format": model.format,
        "keras_version": model.keras_version,
        "backend": model.backend,
        "model_class": model.model_class,
        "arch_id": arch,
        "weights_sha": model_sha(layer_shas),
        "n_layers": len(model.layers),
        "n_tensors": len(tensors),
        "n_params": sum(t.size for t in tensors),
        "n_trainable": sum(t.size for t in tensors if t.trainable),
        "n_non_trainable": sum(t.size for t in tensors if not t.trainable),
        "macs": cost.macs,
        "macs_status": cost.status,
        "n_optimizer_tensors": model.n_optimizer_tensors,
        "n_optimizer_params": model.n_optimizer_params,
        "optimizer": model.optimizer,
        "loss": model.loss,
        "model_config": model.model_config,
        "training_config": model.training_config,
        "source_config": model.source_config,
        "ingested_at": datetime.now(timezone.utc),
        "ingest_options": info.ingest_options,
    }
    gather_spectra(gathered, spectra_out)
    for name, rows in (("models", [model_row]), ("layers", layer_rows), ("weights", weight_rows)):
        gathered.parts[name].extend(rows)
    return {} if into is not None else gathered.tables()


def gather_spectra(into: GatheredRows, collector: SpectraCollector) -> None:
    """A model's spectra and eigenvalues rows (waiting for its background analyses)."""
    rows, eigen = collector.results()
    into.parts["spectra"].extend(rows)
    for key, label, evals in eigen:
        n = int(evals.size)
        columns = {"matrix": [label] * n, "k": np.arange(n, dtype=np.int64), "value": evals}
        into.parts["eigenvalues"].add(key, columns)


# A layer config's columns by the config's identity: the checkpoints of a run share their
# parsed configs (legacy_h5's parse cache, h5layout), whose JSON text is a tenth of a small
# model's rows. Each entry holds its config, so an id is never reused while it is here.
_CONFIG_COLUMNS: dict[int, tuple[dict, dict]] = {}
CONFIG_COLUMNS_KEEP = 4096


# A checkpoint series repeats one architecture: its cost is computed once per process.
_COSTS: dict[str, ModelCost] = {}


def costs_of(model: Model, arch: str) -> ModelCost:
    """model_cost(model), remembered by architecture text and `arch` (its arch_id)."""
    key = hashlib.sha256(f"{model.model_config}|{arch}".encode()).hexdigest()
    if key not in _COSTS:
        from wpipe.forward.cost import model_cost

        if len(_COSTS) >= 64:
            _COSTS.clear()
        _COSTS[key] = model_cost(model)
    return _COSTS[key]


def _cost_columns(cost: LayerCost | None) -> dict:
    if cost is None:
        return {}
    return {"output_shape": cost.output_shape, "macs": cost.macs,
            "output_bytes": cost.output_bytes}  # fmt: skip


def _config_columns(config: dict | None) -> dict:
    """layer_fields and the sorted JSON text of a layer's config (never changed once read)."""
    held = _CONFIG_COLUMNS.get(id(config))
    if held is not None and held[0] is config:
        return held[1]
    columns = {**layer_fields(config),
               "config": json.dumps(config, sort_keys=True) if config else None}  # fmt: skip
    if config is not None:
        if len(_CONFIG_COLUMNS) >= CONFIG_COLUMNS_KEEP:
            _CONFIG_COLUMNS.clear()
        _CONFIG_COLUMNS[id(config)] = (config, columns)
    return columns


def file_stem(path: str) -> str:
    """File name without its model suffix: `e05` for `e05.h5`, `m` for `m.weights.h5`. A
    backslash is a separator only in a Windows path (one without `/`): elsewhere it is part of
    a name (`bad\\\\xff.h5` as stored, see textsafe)."""
    name = path.rsplit("/" if "/" in path else "\\", 1)[-1]
    return strip_model_suffix(name) or name


class _Rows:
    """Rows of `table` as dicts, converted to Arrow at once."""

    def __init__(self, table: schema.Table) -> None:
        self.target = table.arrow_schema
        self.rows: list[dict] = []

    def extend(self, rows: list[dict]) -> None:
        self.rows.extend(rows)

    def mark(self) -> int:
        return len(self.rows)

    def rollback(self, mark: int) -> None:
        del self.rows[mark:]

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=self.target)


# Tables whose rows the models of a chunk gather into one Arrow table each (GatheredRows):
# converting each model's few rows on its own cost ~1 ms a small model, a tenth of its map.
GATHERED = ("models", "layers", "weights", "histograms", "units", "weight_tiles", "spectra",
            "eigenvalues", "weight_values")  # fmt: skip


class GatheredRows:
    """The GATHERED tables' rows of one or more models, in the order the models came;
    mark() and rollback(mark) drop what a model added after it failed."""

    def __init__(self) -> None:
        self.parts: dict[str, _Rows | _Columns] = {
            "models": _Rows(schema.MODELS),
            "layers": _Rows(schema.LAYERS),
            "weights": _Rows(schema.WEIGHTS),
            "histograms": _Columns(schema.HISTOGRAMS),
            "units": _Columns(schema.UNITS),
            "weight_tiles": _Columns(schema.WEIGHT_TILES),
            "spectra": _Rows(schema.SPECTRA),
            "eigenvalues": _Columns(schema.EIGENVALUES),
            "weight_values": _Columns(schema.WEIGHT_VALUES),
        }

    def mark(self) -> dict[str, int]:
        return {name: part.mark() for name, part in self.parts.items()}

    def rollback(self, mark: dict[str, int]) -> None:
        for name, part in self.parts.items():
            part.rollback(mark[name])

    def tables(self) -> dict[str, pa.Table]:
        return {name: part.table() for name, part in self.parts.items()}


class _Columns:
    """A model's rows of `table`, gathered per tensor as columns and converted to Arrow once
    per model: a small tensor's parts are kept as they come (numpy arrays, lists) and joined
    per column at the end (a conversion per tensor and column cost ~10 µs, most of a small
    tensor's rows); a large part is converted as it comes (Arrow is more compact than a list)."""

    def __init__(self, table: schema.Table) -> None:
        self.target = table.arrow_schema
        self.keys: list[tuple[str, ...]] = []
        self.key_names: tuple[str, ...] = ()
        self.counts: list[int] = []
        self.columns: dict[str, list] = {}
        self.masks: dict[str, list[np.ndarray]] = {}  # null masks of masked columns

    def add(self, key: dict[str, str], columns: dict, masks: dict | None = None) -> None:
        """One tensor's rows from columns, its key repeated on each row; `masks`: a null mask
        per column that has one (the same columns for every tensor)."""
        self.key_names = tuple(key)
        self.keys.append(tuple(key.values()))
        n = len(next(iter(columns.values())))
        self.counts.append(n)
        for name, values in columns.items():
            mask = masks.get(name) if masks else None
            if mask is not None:
                self.masks.setdefault(name, []).append(mask)
            elif n > KEEP_RAW:
                values = _arrow(values, self.target.field(name).type)
            self.columns.setdefault(name, []).append(values)

    def mark(self) -> int:
        return len(self.keys)

    def rollback(self, mark: int) -> None:
        """Drop the tensors added after `mark` (every column has one part per tensor)."""
        for parts in [self.keys, self.counts, *self.columns.values(), *self.masks.values()]:
            del parts[mark:]

    def table(self) -> pa.Table:
        if not self.keys:
            return self.target.empty_table()
        # each key column: the tensors' distinct values taken once per row
        which = pa.array(np.repeat(np.arange(len(self.keys), dtype=np.int32), self.counts))
        data = {name: pa.array([k[i] for k in self.keys], pa.string()).take(which)
                for i, name in enumerate(self.key_names)}  # fmt: skip
        for name, parts in self.columns.items():
            type_ = self.target.field(name).type
            if name in self.masks:
                data[name] = pa.array(np.concatenate(parts), type_,
                                      mask=np.concatenate(self.masks[name]))  # fmt: skip
            else:
                data[name] = _joined(parts, type_)
        return pa.table(data, schema=self.target)


# Rows of one tensor's part kept as they come until the model's table is built.
KEEP_RAW = 4096


def _joined(parts: list, type_: pa.DataType) -> pa.Array:
    """One Arrow array of a column's parts: the same values as converting each part and
    concatenating, in one conversion when the parts are all numpy of one dtype or all lists."""
    if all(isinstance(p, np.ndarray) for p in parts) and len({p.dtype for p in parts}) == 1:
        return _arrow(np.concatenate(parts), type_)
    if all(isinstance(p, list) for p in parts):
        return pa.array(list(itertools.chain.from_iterable(parts)), type_)
    return pa.concat_arrays([p if isinstance(p, pa.Array) else _arrow(p, type_) for p in parts])


def _arrow(values: object, type_: pa.DataType) -> pa.Array:
    """pa.array(values, type_); a numpy array already of that type converts without the
    target type, which costs half as much (the same values)."""
    if isinstance(values, np.ndarray) and _numpy_type(values.dtype) == type_:
        return pa.array(values)
    return pa.array(values, type_)


@functools.cache
def _numpy_type(dtype: np.dtype) -> pa.DataType | None:
    try:
        return pa.from_numpy_dtype(dtype)
    except (NotImplementedError, pa.ArrowNotImplementedError):
        return None


# Values per Arrow batch: bounds the index/value copies of a large tensor with --values all.
VALUES_BATCH = 1 << 22
# Small tensors' values gathered into one table of up to this many rows (plain-string keys:
# a few MB at most), not a batch per tensor (~100 µs each, most of a small model's values).
VALUES_GATHER = 1 << 16


class _Values:
    """A model's weight_values rows, to `emit` in tensor order: the rows of a tensor giving at
    most KEEP_RAW of them gathered with the next ones', a larger tensor's in batches; or all
    of them into `shared` (other models' rows too; for a model keeping at most VALUES_GATHER
    values), nothing emitted."""

    def __init__(
        self, mode: ValuesMode, emit: Callable[[pa.RecordBatch | pa.Table], None],
        shared: _Columns | None = None,
    ) -> None:  # fmt: skip
        self.mode, self.emit, self.shared = mode, emit, shared
        self.rows = shared if shared is not None else _Columns(schema.WEIGHT_VALUES)
        self.held = 0

    def add(self, key: dict, array: np.ndarray) -> None:
        mode = self.mode
        if mode.kind == "none" or not array.size:
            return
        count = array.size if mode.kind == "all" else min(mode.n, array.size)
        if count > KEEP_RAW and self.shared is None:
            self.flush()
            for batch in _values_batches(key, array, mode):
                self.emit(batch)
            return
        flat = array.reshape(-1)
        if count < flat.size:  # as _values_batches: the same sample
            index = sample_indices(flat.size, mode.n, _sample_seed(key))
            flat = flat[index]
        else:
            index = np.arange(flat.size, dtype=np.int64)
        self.rows.add(key, {"flat_index": index, "value": flat.astype(np.float32, copy=False)})
        self.held += count
        if self.held >= VALUES_GATHER and self.shared is None:
            self.flush()

    def flush(self) -> None:
        if self.held and self.shared is None:
            self.emit(self.rows.table())
            self.rows, self.held = _Columns(schema.WEIGHT_VALUES), 0


def _sample_seed(key: dict) -> int:
    return zlib.crc32("/".join(key.values()).encode())


def _values_batches(key: dict, array: np.ndarray, mode: ValuesMode) -> Iterator[pa.RecordBatch]:
    flat = array.reshape(-1)
    index = None
    if mode.kind == "sample":
        index = sample_indices(flat.size, mode.n, _sample_seed(key))
        flat = flat[index]
    names = schema.WEIGHT_VALUES.column_names
    for start in range(0, flat.size, VALUES_BATCH):
        part = flat[start : start + VALUES_BATCH]
        n = part.size
        if index is None:
            flat_index = np.arange(start, start + n, dtype=np.int64)
        else:
            flat_index = index[start : start + n]
        zeros = pa.array(np.zeros(n, dtype=np.int32))
        key_columns = [pa.DictionaryArray.from_arrays(zeros, pa.array([v])) for v in key.values()]
        columns = [
            *key_columns,
            pa.array(flat_index),
            pa.array(part.astype(np.float32, copy=False)),
        ]
        yield pa.RecordBatch.from_arrays(columns, names=names)
