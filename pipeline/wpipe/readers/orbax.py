"""Orbax checkpoints written by Keras 3's `keras.callbacks.OrbaxCheckpoint` (Keras 3.13+).

The callback saves each step to `<directory>/<step>/`: `_CHECKPOINT_METADATA`, `pytree/`
(every variable as a zarr3 array inside an OCDBT key-value database, keyed by its tree path
joined with dots: `trainable_variables.mlp.hidden.kernel`; `_METADATA` lists the tree) and,
unless `save_weights_only`, `model_config/` (Keras's model config JSON, stored as the string
leaf `config` in `_strings.json`). The tree is `model.get_state_tree()`: trainable,
non-trainable, optimizer and metrics variables, each by its Keras path (`mlp/hidden/kernel`).

Arrays are read with `tensorstore` (the `wpipe[orbax]` extra), through a spec built here: the
zarr3 driver over an OCDBT store over a `file` store rooted at the step's `pytree/` (keys
with `..` are refused by tensorstore; symlinks leaving the step folder by `_check_tree`). Each
array's declared shape, dtype and chunk shapes are checked before it is read.

What a checkpoint cannot tell: the Keras version; with `save_weights_only`, the classes and
configs (layers are named by their variables' paths, classes guessed as for a weights file).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from wpipe.core import extras
from wpipe.core.textsafe import first_line
from wpipe.readers import inferred
from wpipe.readers.base import Layer, Model, ModelReadError, Tensor
from wpipe.readers.h5safe import (
    COMPRESSION_CHECK_BYTES,
    MAX_COMPRESSION,
    MAX_OBJECTS,
    MAX_TENSOR_BYTES,
)
from wpipe.readers.keras_config import (
    LayerSpec,
    canonical_weight_name,
    model_tree,
    parse_json,
    read_json_file,
    role_of,
)
from wpipe.readers.native import compile_fields
from wpipe.readers.safefile import stat_problem

FORMAT = "orbax-checkpoint"
STEP_MARKER = "_CHECKPOINT_METADATA"
TMP_MARKER = ".orbax-checkpoint-tmp"
TREE = "pytree"
MODEL_VARIABLES = {"trainable_variables": True, "non_trainable_variables": False}
OPTIMIZER = "optimizer_variables"
# A SeedGenerator's RNG state (Dropout, RNN dropout): a non-trainable variable of the tree, but
# no weight: Keras's count_params and its `.keras` files leave it out.
RNG_STATE = "seed_generator_state"
# Tree entries that hold no array: a string leaf lives in _strings.json, an empty container
# (`non_trainable_variables: {}`) is recorded as such.
NOT_ARRAYS = {"string", "Dict", "List", "Tuple", "None", "NamedTuple"}
CACHE_BYTES = 32 << 20
MAX_RANK = 32  # zarr allows more; no Keras weight has over 6 axes
# What tensorstore raises for a damaged store (its absl status, mapped to Python exceptions)
TENSORSTORE_ERRORS = (ValueError, IndexError, RuntimeError, OSError, NotImplementedError)
DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "bfloat16", "float32", "float64"}  # fmt: skip
# The order Keras creates a layer's variables in (the tree itself is sorted by name): every
# class's list in roles.ROLES and quantized.py keeps this relative order.
ROLE_ORDER = ("kernel", "depthwise_kernel", "pointwise_kernel", "recurrent_kernel", "bias",
              "kernel_scale", "kernel_zero", "embeddings", "embeddings_scale", "embeddings_zero",
              "g_idx", "gamma", "beta", "moving_mean", "moving_variance", "mean", "variance",
              "count", "alpha")  # fmt: skip
SCOPE_ORDER = {"forward": 0, "backward": 1, "query": 0, "key": 1, "value": 2,
               "attention_output": 3}  # fmt: skip


def claims(folder: Path) -> bool:
    """A finished step folder of Keras's OrbaxCheckpoint: its metadata and its tree's."""
    return (
        not unfinished(folder)
        and (folder / STEP_MARKER).is_file()
        and (folder / TREE / "_METADATA").is_file()
    )


def unfinished(folder: Path) -> bool:
    """Orbax writes a step into `<step>.orbax-checkpoint-tmp…` and renames it when done: one
    left so was never finished (the run stopped while saving)."""
    return TMP_MARKER in folder.name


@contextmanager
def open_step(folder: Path, where: str) -> Iterator[Model]:
    try:
        extras.require("tensorstore", "orbax", "Orbax checkpoints")
    except extras.MissingExtra as exc:
        raise ModelReadError("missing-extra", f"{where}: {exc}") from None
    yield read(folder, where)


def read(folder: Path, where: str) -> Model:
    stored = _check_tree(folder, where)
    leaves = tree_leaves(folder / TREE, where)
    config, config_text = _model_config(folder, where)
    store = ArrayStore(folder / TREE, where)
    model_class, specs = model_tree(config, where=where) if config else (None, [])
    variables = [(keys, name) for keys, name in leaves if len(keys) > 1
                 and keys[0] in MODEL_VARIABLES and keys[-1] != RNG_STATE]  # fmt: skip
    layers = layers_from(specs, variables, store) if specs else guessed_layers(variables, store)
    optimizer_shapes = [store.shape(name) for keys, name in leaves if keys[0] == OPTIMIZER]
    store.check_declared(stored)
    optimizer, loss = compile_fields(config)
    return Model(
        path=where,
        format=FORMAT,
        keras_version=None,
        backend=None,
        model_class=model_class,
        optimizer=optimizer,
        loss=loss,
        layers=layers,
        n_optimizer_tensors=len(optimizer_shapes),
        n_optimizer_params=sum(math.prod(s) for s in optimizer_shapes),
        model_config=config_text,
    )


def _check_tree(folder: Path, where: str) -> int:
    """The bytes the step folder's files hold, once checked: each a regular file (a FIFO
    would block tensorstore's read forever), no symlink leading out of the folder
    (tensorstore's file store follows them), at most MAX_OBJECTS entries."""
    root = os.path.realpath(folder)
    count = stored = 0
    for here, dirs, files in os.walk(folder):
        count += len(dirs) + len(files)
        if count > MAX_OBJECTS:
            raise ModelReadError("too-many-objects", f"{where}: the checkpoint folder holds over "
                                 f"{MAX_OBJECTS:,} files")  # fmt: skip
        for name in (*dirs, *files):
            path = Path(here, name)
            if path.is_symlink() and os.path.commonpath([root, os.path.realpath(path)]) != root:
                raise ModelReadError(
                    "unsafe-archive", f"{where}: {path.relative_to(folder)} is a symlink "
                    "leading out of the checkpoint folder (never followed)"
                )  # fmt: skip
        for name in files:
            problem = stat_problem(Path(here, name), where)
            if problem is not None:
                raise problem
            stored += os.stat(Path(here, name)).st_size
    return stored


Leaf = tuple[tuple[str, ...], str]  # (tree keys, the array's name in the store)


def tree_leaves(tree: Path, where: str) -> list[Leaf]:
    """Every array of the tree, from its `_METADATA` (bounded JSON), as (keys, store name)."""
    metadata = read_json_file(tree / "_METADATA", "pytree/_METADATA", where)
    entries = metadata.get("tree_metadata")
    if not isinstance(entries, dict):
        raise ModelReadError("bad-json", f"{where}: pytree/_METADATA has no tree_metadata")
    if len(entries) > MAX_OBJECTS:
        raise ModelReadError("too-many-objects", f"{where}: the checkpoint lists "
                             f"{len(entries):,} arrays (limit {MAX_OBJECTS:,})")  # fmt: skip
    leaves = []
    for entry in entries.values():
        keys = _keys(entry, where)
        value = entry.get("value_metadata") if isinstance(entry, dict) else None
        if not isinstance(value, dict) or value.get("value_type") in NOT_ARRAYS:
            continue
        if value.get("skip_deserialize") is True:
            continue  # an empty container (`non_trainable_variables: {}`): nothing stored
        leaves.append((keys, ".".join(keys)))
    return leaves


def _keys(entry: Any, where: str) -> tuple[str, ...]:
    keys = entry.get("key_metadata") if isinstance(entry, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ModelReadError("bad-json", f"{where}: pytree/_METADATA: an entry without keys")
    out = []
    for key in keys:
        value = key.get("key") if isinstance(key, dict) else None
        if isinstance(value, bool) or not isinstance(value, str | int) or "\0" in str(value):
            raise ModelReadError("bad-json", f"{where}: pytree/_METADATA: a key is not a name")
        out.append(str(value))
    return tuple(out)


def _model_config(folder: Path, where: str) -> tuple[dict | None, str | None]:
    """Keras's model config (`model_config/_strings.json`'s `config`) and its JSON text;
    (None, None) without one (`save_weights_only`)."""
    strings = folder / "model_config" / "_strings.json"
    if not os.path.lexists(strings):
        return None, None
    text = read_json_file(strings, "model_config/_strings.json", where).get("config")
    if not isinstance(text, str):
        raise ModelReadError("bad-json", f"{where}: model_config holds no config text")
    return parse_json(text, "model_config", where), text


class ArrayStore:
    """The step's arrays through tensorstore: zarr3 over OCDBT over the `pytree/` folder."""

    def __init__(self, tree: Path, where: str) -> None:
        import tensorstore as ts

        self.ts = ts
        self.where = where
        # a small cache keeps the OCDBT tree's nodes between arrays (opening each array reads
        # them again without one: 1,204 arrays opened in 2.1-2.5 s, with 32 MB in 0.5-1.0 s);
        # one copy thread: the pool runs a worker per core
        self.context = ts.Context({"cache_pool": {"total_bytes_limit": CACHE_BYTES},
                                   "data_copy_concurrency": {"limit": 1}})  # fmt: skip
        self.base = {"driver": "file", "path": str(tree.resolve()) + "/"}
        self._opened: dict[str, Any] = {}
        self.declared = 0  # bytes of the arrays opened so far, as their metadata declares

    def _open(self, name: str) -> Any:
        if name not in self._opened:
            spec = {"driver": "zarr3", "kvstore": {"driver": "ocdbt", "base": self.base,
                                                   "path": name}}  # fmt: skip
            try:
                array = self.ts.open(spec, read=True, open=True, context=self.context).result()
            except TENSORSTORE_ERRORS as exc:  # mostly ValueErrors carrying a status
                raise ModelReadError("corrupt", f"{self.where}: array {name!r} cannot be "
                                     f"opened ({_first_line(exc)})") from None  # fmt: skip
            self._check(name, array)
            self._opened[name] = array
        return self._opened[name]

    def _check(self, name: str, array: Any) -> None:
        """Declared rank, dtype, size and chunk sizes within bounds, before any read."""
        shape, dtype = tuple(int(d) for d in array.shape), str(array.dtype.name)
        if len(shape) > MAX_RANK or dtype not in DTYPES:
            raise ModelReadError("corrupt", f"{self.where}: array {name!r} has rank "
                                 f"{len(shape)}, dtype {dtype} (not a Keras weight)")  # fmt: skip
        itemsize = np.dtype("uint16" if dtype == "bfloat16" else dtype).itemsize
        layout = array.chunk_layout
        for what, dims in (("", shape), (" chunk", layout.read_chunk.shape),
                           (" shard", layout.write_chunk.shape)):  # fmt: skip
            size = math.prod(int(d) for d in dims or ()) * itemsize
            if size > MAX_TENSOR_BYTES:
                raise ModelReadError("oversized-tensor", f"{self.where}: array {name!r} "
                                     f"declares{what} {size:,} bytes")  # fmt: skip
        self.declared += math.prod(shape) * itemsize

    def check_declared(self, stored: int) -> None:
        """The arrays declare at most MAX_COMPRESSION times the bytes the folder stores (an
        array never written reads as its fill value: a small file could declare 4 GiB)."""
        if self.declared > COMPRESSION_CHECK_BYTES and self.declared > stored * MAX_COMPRESSION:
            raise ModelReadError(
                "compression-bomb", f"{self.where}: its arrays declare {self.declared:,} bytes "
                f"in {stored:,} stored (over {MAX_COMPRESSION}x)"
            )  # fmt: skip

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self._open(name).shape)

    def dtype(self, name: str) -> str:
        return str(self._open(name).dtype.name)

    def loader(self, name: str) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            try:
                values = np.asarray(self._open(name).read().result())
                # bfloat16 (ml_dtypes) widened to float32 exactly, as the other readers do
                return values.astype(np.float32) if values.dtype.name == "bfloat16" else values
            except TENSORSTORE_ERRORS as exc:
                raise ModelReadError("corrupt", f"{self.where}: array {name!r} cannot be "
                                     f"read ({_first_line(exc)})") from None  # fmt: skip
            except MemoryError:
                raise ModelReadError("out-of-memory", f"{self.where}: not enough memory") from None

        return load


def _first_line(exc: Exception) -> str:
    """tensorstore's reason, without the spec and source locations it appends."""
    text = first_line(exc)
    return text.split(" [tensorstore_spec=")[0].split(" [source locations=")[0][:300]


def _tensor(store: ArrayStore, keys: tuple[str, ...], layer: str, class_name: str | None
            ) -> Tensor:  # fmt: skip
    name = ".".join(keys)
    weight_name = canonical_weight_name(list(keys[1:]), layer, class_name)
    return Tensor(
        weight_name=weight_name,
        role=role_of(weight_name),
        trainable=MODEL_VARIABLES[keys[0]],
        source_name=name,
        shape=store.shape(name),
        dtype=store.dtype(name),
        load=store.loader(name),
    )


def _creation_order(t: Tensor) -> tuple:
    scopes = t.weight_name.split("/")[:-1]
    role = ROLE_ORDER.index(t.role) if t.role in ROLE_ORDER else len(ROLE_ORDER)
    return ([SCOPE_ORDER.get(s, 9) for s in scopes], scopes, role, t.weight_name)


def _owner(path: tuple[str, ...], specs: list[LayerSpec]) -> tuple[list[LayerSpec], int] | None:
    """(the specs from the top model down to the variable's leaf layer, the index of that
    layer's name in `path`), matching names level by level; scopes that name no layer at
    the current level (the model's own name) are passed over."""
    level, chain = specs, []
    for i, part in enumerate(path[:-1]):
        spec = next((s for s in level if s.name == part), None)
        if spec is None:
            continue
        chain.append(spec)
        if spec.children is None:
            return chain, i
        level = spec.children
    return None


def layers_from(specs: list[LayerSpec], variables: list[Leaf], store: ArrayStore) -> list[Layer]:
    """Layers in the config's order (nested models expanded, weightless layers kept, as the
    `.keras` reader gives them), each with the variables whose path leads to it."""
    owned: dict[int, list[Tensor]] = {}
    unmatched: list[Leaf] = []
    for keys, name in variables:
        found = _owner(keys[1:], specs)
        if found is None:
            unmatched.append((keys, name))
            continue
        chain, _ = found
        leaf = chain[-1]
        owned.setdefault(id(leaf), []).append(_tensor(store, keys, leaf.name, leaf.class_name))
    layers = []
    stack: list[tuple[str, bool, list[LayerSpec]]] = [("", True, list(reversed(specs)))]
    while stack:
        prefix, trainable, pending = stack[-1]
        if not pending:
            stack.pop()
            continue
        spec = pending.pop()
        if spec.children is not None:
            stack.append((f"{prefix}{spec.name}/", trainable and spec.trainable,
                          list(reversed(spec.children))))  # fmt: skip
            continue
        tensors = sorted(owned.get(id(spec), []), key=_creation_order)
        on = trainable and spec.trainable
        layers.append(Layer(f"{prefix}{spec.name}", spec.name, spec.class_name or None,
                            spec.config or None, on, tensors))  # fmt: skip
    return layers + guessed_layers(unmatched, store)


def guessed_layers(variables: list[Leaf], store: ArrayStore) -> list[Layer]:
    """Without an architecture (`save_weights_only`): one layer per variable scope, the scope
    every variable shares (the model's name) dropped; classes from Keras's default names and
    the variables, as for a weights-only `.h5` (inferred.py)."""
    if not variables:
        return []
    scopes = [keys[1:-1] for keys, _ in variables]
    # the scopes above every layer (the model's name) are dropped; each layer keeps its own
    shared = max(0, min(len(s) - 1 for s in scopes))
    while shared and len({s[:shared] for s in scopes}) > 1:
        shared -= 1
    by_layer: dict[str, list[tuple[str, ...]]] = {}
    for keys, _ in variables:
        scope = keys[1 + shared : -1]
        by_layer.setdefault(scope[0] if scope else keys[-1], []).append(keys)
    layers = []
    for name, members in by_layer.items():
        tensors = [_tensor(store, keys, name, None) for keys in members]
        named = [(t.weight_name, t.role, tuple(t.shape)) for t in tensors]
        class_name = inferred.layer_class(name, named)
        if class_name is not None:
            tensors = [_tensor(store, keys, name, class_name) for keys in members]
        tensors.sort(key=_creation_order)
        layers.append(Layer(name, name, class_name, inferred.wrapped_config(class_name, named),
                            any(t.trainable for t in tensors), tensors))  # fmt: skip
    return layers
