"""Layer outputs on sample inputs: input sets, the forward pass per model, and its tables.

Glue between the numpy forward pass (wpipe.forward), the statistics of `weights`
(wpipe.analyse.stats.tensor_stats, the same definitions) and DuckDB. A model's rows are keyed by
(model_id, input_set); input_set is a content hash of the inputs, so the same arrays under
another name are the same set, and a pass already stored for the model file's current
SHA-256 is not computed again.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from wpipe import store
from wpipe.analyse.stats import StatsOptions, tensor_stats
from wpipe.core import schema
from wpipe.forward import LayerOutput, Stopped, Unsupported, forward, graph_of
from wpipe.forward.graph import Graph, Ref
from wpipe.readers import ModelReadError, open_model

UNKNOWN_DIM = 8  # length used for a None dimension (sequence length) of random inputs
RANDOM_BYTES = 1 << 30  # --random N: what its arrays may take, checked before they are made
FLUSHED = float(np.finfo(np.float32).tiny)  # below: a subnormal float32, flushed to 0 by TF
RAIL = 0.99  # a bounded unit is on a rail beyond this share of its half-range (tanh: |a| > 0.99)
# bounded activations: (centre, half-range) of their output interval
BOUNDED = {"tanh": (0.0, 1.0), "softsign": (0.0, 1.0), "sigmoid": (0.5, 0.5),
           "hard_sigmoid": (0.5, 0.5)}  # fmt: skip
STAT_COLUMNS = (
    "mean", "std", "min", "max", "abs_mean", "near_zero_frac", "near_zero_threshold",
    "nan_count", "inf_count", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "skew",
    "kurtosis",
)  # fmt: skip


class InputError(ValueError):
    """An input file or input set that cannot feed a model (one line, no traceback)."""


@dataclass
class InputSet:
    name: str
    source: str  # "file" or "random"
    path: str | None
    arrays: list[np.ndarray] | dict[str, np.ndarray]

    @property
    def n_samples(self) -> int:
        values = self.arrays.values() if isinstance(self.arrays, dict) else self.arrays
        return int(next(iter(values)).shape[0])


def set_id(arrays: list[np.ndarray]) -> str:
    """16 hex digits of the SHA-256 over every array's dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(array)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.view(np.uint8).reshape(-1))
    return digest.hexdigest()[:16]


def load_input_file(path: Path, name: str | None = None) -> InputSet:
    """`.npy` (one array) or `.npz` (one array per model input); never unpickles."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy/.npz file ({exc})") from None
    if isinstance(loaded, np.ndarray):
        arrays: Any = [loaded]
    else:
        with loaded:
            try:
                arrays = {k: np.asarray(loaded[k]) for k in loaded.files}
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: an array cannot be read ({exc})") from None
    values = list(arrays.values()) if isinstance(arrays, dict) else arrays
    if not values:
        raise InputError(f"{path}: holds no arrays")
    lengths = {int(v.shape[0]) if v.ndim else -1 for v in values}
    if len(lengths) != 1 or -1 in lengths or 0 in lengths:
        raise InputError(f"{path}: every array needs the same number of samples (first axis)")
    return InputSet(name or path.name, "file", str(path.resolve()), arrays)


def arrange(graph: Graph, inputs: InputSet) -> list[np.ndarray]:
    """The input set's arrays in the graph's input order, cast to the inputs' dtypes."""
    names = [ref.layer for ref in graph.inputs]
    if isinstance(inputs.arrays, dict):
        if set(names) <= set(inputs.arrays):
            arrays = [inputs.arrays[n] for n in names]
        elif len(inputs.arrays) == len(names):
            arrays = list(inputs.arrays.values())  # input order
        else:
            raise InputError(
                f"{inputs.name}: the model has inputs {names}; the file holds "
                f"{sorted(inputs.arrays)} (name each array after an input, or give one per input)"
            )
    else:
        if len(names) != 1:
            raise InputError(f"{inputs.name}: the model has {len(names)} inputs; use an .npz")
        arrays = list(inputs.arrays)
    out = []
    embedded = embedding_inputs(graph)
    for name, array in zip(names, arrays, strict=True):
        shape = graph.input_shapes.get(name)
        if shape is not None and (
            array.ndim != len(shape)
            or any(
                d is not None and d != a for d, a in zip(shape[1:], array.shape[1:], strict=True)
            )
        ):
            raise InputError(
                f"{inputs.name}: input {name!r} has shape {list(array.shape)}; the model expects "
                f"{['N' if d is None else d for d in shape]}"
            )
        dtype = graph.input_dtypes.get(name, "float32")
        # integer ids for an Embedding stay integers whatever the InputLayer says: a float32
        # cast would round ids above 2**24
        ids = array.dtype.kind in "iu" and name in embedded
        out.append(array.astype(np.int64 if "int" in dtype or ids else np.float32, copy=False))
    return out


def random_inputs(graph: Graph, n: int, seed: int = 0) -> InputSet:
    """Seeded standard-normal floats; integer ids in [0, input_dim) for an input an Embedding
    reads, whatever dtype its InputLayer declares (a Keras 2 Sequential text model's says
    float32), and in [0, the smallest vocabulary) for other integer inputs."""
    rng = np.random.default_rng(seed)
    vocab = _smallest_vocabulary(graph) or 2
    embedded = embedding_inputs(graph)
    arrays, shapes = {}, {}
    for ref in graph.inputs:
        shape = graph.input_shapes.get(ref.layer)
        if shape is None:
            raise InputError("the architecture records no input shape: give --input")
        shapes[ref.layer] = (n, *(UNKNOWN_DIM if d is None else d for d in shape[1:]))
    size = sum(8 * math.prod(dims) for dims in shapes.values())  # int64 ids, float64 draws
    if size > RANDOM_BYTES:
        raise InputError(f"--random {n}: {n} samples of this model's inputs take "
                         f"{size / 2**30:.1f} GiB, more than {RANDOM_BYTES / 2**30:.0f}; "
                         "give fewer")  # fmt: skip
    for ref in graph.inputs:
        dims = shapes[ref.layer]
        if ref.layer in embedded:
            arrays[ref.layer] = rng.integers(0, embedded[ref.layer], size=dims).astype(np.int64)
        elif "int" in graph.input_dtypes.get(ref.layer, "float32"):
            arrays[ref.layer] = rng.integers(0, vocab, size=dims).astype(np.int64)
        else:
            arrays[ref.layer] = rng.standard_normal(dims).astype(np.float32)
    return InputSet(f"random:{n}", "random", None, arrays)


def embedding_inputs(graph: Graph) -> dict[str, int]:
    """Input name -> the smallest `input_dim` of the Embedding layers that read it directly
    (or through a nested model whose own input an Embedding reads)."""
    names = {ref.layer for ref in graph.inputs}
    out: dict[str, int] = {}
    for layer in graph.layers:
        if layer.sub is not None:
            inner = embedding_inputs(layer.sub)
            dim = min(inner.values()) if len(layer.sub.inputs) == 1 and inner else None
        elif layer.class_name == "Embedding" and isinstance(layer.config.get("input_dim"), int):
            dim = layer.config["input_dim"]
        else:
            continue
        for ref in (r for node in layer.nodes for r in _refs(node.args)):
            if ref.layer in names and dim is not None:
                out[ref.layer] = min(dim, out.get(ref.layer, dim))
    return out


def _refs(args: list) -> list[Ref]:
    found = []
    for arg in args:
        if isinstance(arg, Ref):
            found.append(arg)
        elif isinstance(arg, (list, tuple)):
            found += _refs(list(arg))
    return found


def _smallest_vocabulary(graph: Graph) -> int | None:
    sizes = []
    for layer in graph.layers:
        if layer.sub is not None:
            sub = _smallest_vocabulary(layer.sub)
            sizes += [sub] if sub else []
        elif layer.class_name == "Embedding" and isinstance(layer.config.get("input_dim"), int):
            sizes.append(layer.config["input_dim"])
    return min(sizes) if sizes else None


@dataclass
class Outcome:
    """What one model's pass produced: its rows, status and a one-line summary."""

    run: dict
    tables: dict[str, pa.Table] = field(default_factory=dict)


def compute(
    model_id: str, path: str, sha256: str, inputs: InputSet, batch_size: int,
    options: StatsOptions, skip: Callable[[str], bool] = lambda set_id: False,
) -> Outcome | None:  # fmt: skip
    """The forward pass of one model file on an input set, as table rows (None when `skip`
    says the input set's rows are already stored)."""
    run = {
        "model_id": model_id, "input_set": None, "input_name": inputs.name,
        "source": inputs.source, "input_path": inputs.path, "n_samples": inputs.n_samples,
        "sha256": sha256, "status": "complete", "reason": None, "n_outputs": 0,
        "computed_at": datetime.now(timezone.utc),
    }  # fmt: skip
    try:
        with open_model(path) as model:
            graph = graph_of(model)
            arrays = arrange(graph, inputs)
            run["input_set"] = set_id(arrays)
            if skip(run["input_set"]):
                return None
            outputs, stopped = _batched(model, arrays, batch_size)
    except (ModelReadError, Unsupported, InputError, OSError) as exc:
        reason = getattr(exc, "message", None) or getattr(exc, "reason", None) or str(exc)
        run.update(status="failed", reason=reason)
        run["input_set"] = run["input_set"] or set_id(_as_list(inputs))
        status = [_status_row(run, None, None, "failed", reason)]
        return Outcome(run, {"activation_status": _table(schema.ACTIVATION_STATUS, status)})
    rows = RowCollector(run["model_id"], run["input_set"], options, bounded_outputs(graph))
    for out in outputs:
        rows.add(out)
    status = []
    if stopped is not None:
        run.update(status="stopped", reason=f"{stopped.layer_path}: {stopped.reason}")
        status.append(_status_row(run, stopped.layer_path, stopped.class_name, "stopped",
                                  stopped.reason))  # fmt: skip
    run["n_outputs"] = len(rows.stats)
    tables = rows.tables()
    tables["activation_status"] = _table(schema.ACTIVATION_STATUS, status)
    return Outcome(run, tables)


def _as_list(inputs: InputSet) -> list[np.ndarray]:
    return list(inputs.arrays.values()) if isinstance(inputs.arrays, dict) else inputs.arrays


def _status_row(run: dict, layer_path, class_name, status: str, reason: str) -> dict:
    return {"model_id": run["model_id"], "input_set": run["input_set"], "layer_path": layer_path,
            "class_name": class_name, "status": status, "reason": reason}  # fmt: skip


def _batched(model, arrays: list[np.ndarray], batch_size: int):
    """Run the pass batch by batch; each layer output is the concatenation over batches."""
    n = arrays[0].shape[0]
    parts: dict[tuple, list[LayerOutput]] = {}
    stopped: Stopped | None = None
    for start in range(0, n, max(1, batch_size)):
        batch = [a[start : start + batch_size] for a in arrays]
        for rec in forward(model, batch):
            if isinstance(rec, Stopped):
                stopped = rec
                break
            parts.setdefault((rec.layer_path, rec.call_index, rec.output_index), []).append(rec)
        if stopped is not None:
            break
    return _joined(parts, stopped is None), stopped


def _joined(parts: dict[tuple, list[LayerOutput]], complete: bool) -> Iterator[LayerOutput]:
    for key in list(parts):
        recs = parts.pop(key)
        first = recs[0]
        array = recs[0].array if len(recs) == 1 else np.concatenate([r.array for r in recs])
        yield LayerOutput(*key[:1], first.class_name, key[1], key[2], array, first.channels_first)


def bounded_outputs(graph: Graph, prefix: str = "") -> dict[str, tuple[float, float]]:
    """Layer path -> (centre, half-range) of its output for layers whose own activation is
    bounded (tanh, sigmoid, ...): where a saturated unit can be seen. Recurrent layers (their
    output is gated) and the model's own outputs (a confident prediction sits near 0 or 1 by
    design) are left out."""
    outputs = {ref.layer for ref in graph.outputs} if not prefix else set()
    found = {}
    for layer in graph.layers:
        if layer.sub is not None:
            found.update(bounded_outputs(layer.sub, prefix + layer.name + "/"))
            continue
        name = _activation_name(layer.config.get("activation"))
        if (
            name in BOUNDED
            and "recurrent_activation" not in layer.config
            and (layer.name not in outputs)
        ):
            found[prefix + layer.name] = BOUNDED[name]
    return found


def _activation_name(spec: Any) -> str | None:
    """A built-in activation's short name from a config entry (a string or, in Keras 3, a
    serialized object)."""
    if isinstance(spec, dict):
        spec = spec.get("config") if isinstance(spec.get("config"), str) else spec.get("class_name")
    return spec.rsplit(">", 1)[-1].lower() if isinstance(spec, str) else None


class RowCollector:
    """Rows of activations, activation_histograms and activation_units, output by output."""

    def __init__(
        self, model_id: str, input_set: str, options: StatsOptions,
        bounded: dict[str, tuple[float, float]] | None = None,
    ) -> None:  # fmt: skip
        self.key = {"model_id": model_id, "input_set": input_set}
        self.options = options
        self.bounded = bounded or {}
        self.stats: list[dict] = []
        self.hist: list[dict] = []
        self.units: dict[str, list] = {c: [] for c in schema.ACTIVATION_UNITS.column_names}

    def add(self, out: LayerOutput) -> None:
        key = {**self.key, "layer_path": out.layer_path, "call_index": out.call_index,
               "output_index": out.output_index}  # fmt: skip
        array = np.asarray(out.array)
        stats, hist = tensor_stats(array, self.options)
        row = {**key, "class_name": out.class_name, "shape": list(array.shape),
               "size": int(array.size)}  # fmt: skip
        row.update({c: stats.get(c) for c in STAT_COLUMNS})
        row["zero_frac"] = stats["zero_count"] / array.size if array.size else None
        dead, n_units = self._units(key, array, out.channels_first,
                                    self.bounded.get(out.layer_path))  # fmt: skip
        row.update(n_units=n_units, dead_units=dead)
        self.stats.append(row)
        if hist is not None:
            for i, count in enumerate(hist.counts):
                self.hist.append({**key, "bin": i, "lo": float(hist.edges[i]),
                                  "hi": float(hist.edges[i + 1]), "count": int(count)})  # fmt: skip

    def _units(
        self, key: dict, array: np.ndarray, channels_first: bool,
        rails: tuple[float, float] | None,
    ) -> tuple[int, int]:  # fmt: skip
        """Per unit: mean, max, active fraction and (bounded layers) the fraction on a rail,
        over every other axis. A unit with a non-finite output is not dead: that is the
        output's nan_or_inf, one cause with one flag."""
        if array.ndim < 2 or array.dtype.kind not in "fiu":
            return 0, 0
        axis = 1 if channels_first and array.ndim > 2 else array.ndim - 1
        flat = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis]).astype(np.float64)
        is_finite = np.isfinite(flat)
        finite = np.where(is_finite, flat, np.nan)
        # a subnormal output is no activity: TensorFlow's CPU kernels flush it to 0 (an
        # L2-collapsed layer's 1e-38 weights give Keras zeros and numpy 1e-38 otherwise)
        active = np.mean(flat > FLUSHED, axis=0)
        dead = (active == 0) & is_finite.all(axis=0)
        n = flat.shape[1]
        if rails is None:
            saturated = np.full(n, np.nan)
        else:
            centre, half = rails
            saturated = np.mean(np.abs(flat - centre) > RAIL * half, axis=0)
        with warnings.catch_warnings():  # an all-NaN unit has no mean or max (NULL)
            warnings.simplefilter("ignore", RuntimeWarning)
            means, maxes = np.nanmean(finite, axis=0), np.nanmax(finite, axis=0)
        for name, values in (
            ("unit", np.arange(n)), ("mean", means), ("max", maxes), ("active_frac", active),
            ("dead", dead), ("saturated_frac", saturated),
        ):  # fmt: skip
            self.units[name].extend(
                [None if isinstance(v, float) and np.isnan(v) else v for v in values.tolist()]
            )
        for name, value in key.items():
            self.units[name].extend([value] * n)
        return int(np.count_nonzero(dead)), n

    def tables(self) -> dict[str, pa.Table]:
        return {
            "activations": _table(schema.ACTIVATIONS, self.stats),
            "activation_histograms": _table(schema.ACTIVATION_HISTOGRAMS, self.hist),
            "activation_units": pa.Table.from_pydict(
                self.units, schema=schema.ACTIVATION_UNITS.arrow_schema
            ),
        }


def _table(table: schema.Table, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=table.arrow_schema)


# --------------------------------------------------------------------------------------------
# Storage: DuckDB only (the rows are recomputable from the model files and the inputs)
# --------------------------------------------------------------------------------------------


def stored_sha(con: duckdb.DuckDBPyConnection, model_id: str, input_set: str) -> str | None:
    rows = con.execute(
        "SELECT sha256 FROM activation_runs WHERE model_id = ? AND input_set = ?",
        [model_id, input_set],
    ).fetchall()
    return rows[0][0] if rows else None


def save(con: duckdb.DuckDBPyConnection, outcome: Outcome) -> None:
    """Replace the model's rows for this input set, in one transaction."""
    key = [outcome.run["model_id"], outcome.run["input_set"]]
    con.execute("BEGIN TRANSACTION")
    try:
        for table in schema.ACTIVATION_TABLES:
            con.execute(f"DELETE FROM {table.name} WHERE model_id = ? AND input_set = ?", key)
        store.insert_arrow(con, schema.ACTIVATION_RUNS, _table(schema.ACTIVATION_RUNS,
                                                               [outcome.run]))  # fmt: skip
        for table in schema.ACTIVATION_TABLES[1:]:
            rows = outcome.tables.get(table.name)
            if rows is not None and rows.num_rows:
                store.insert_arrow(con, table, rows)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def drop_orphans(con: duckdb.DuckDBPyConnection) -> None:
    """Rows of models no longer in `models` (their files were removed from the lake)."""
    for table in schema.ACTIVATION_TABLES:
        con.execute(f"DELETE FROM {table.name} WHERE model_id NOT IN (SELECT model_id FROM models)")
