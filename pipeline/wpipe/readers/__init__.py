"""read stage: detect a save's layout by content and yield format-neutral records."""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from wpipe.core.textsafe import display, to_os
from wpipe.readers import (
    compressed,
    h5layout,
    h5safe,
    hf_config,
    hf_safetensors,
    keras0,
    keras_dir,
    keras_zip,
    legacy_h5,
    native,
    orbax,
    saved_model,
    sharded,
    tf_bundle,
    tf_checkpoint,
    unsupported,
)
from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.base import Layer, Model, ModelReadError, Tensor
from wpipe.readers.safefile import open_regular, require_regular, stat_problem

__all__ = ["Layer", "Model", "ModelReadError", "Tensor", "lists_shards", "model_files",
           "open_model", "sniff"]  # fmt: skip

ZIP_SIGNATURE = b"PK\x03\x04"
WEIGHTS_H5 = "weights-h5"
NATIVE_ROOTS = ("layers", "vars", "optimizer", "_layer_checkpoint_dependencies")


def sniff(path: str | os.PathLike) -> str | None:
    """'hdf5', 'zip', or None, from the first bytes (never from the extension)."""
    with open_regular(Path(path), str(path)) as fh:
        head = fh.read(8)
    if h5safe.is_hdf5(head):
        return "hdf5"
    if head.startswith(ZIP_SIGNATURE):
        return "zip"
    return None


def lists_shards(path: Path) -> bool:
    """A Keras `.weights.json` or a Hugging Face `.safetensors.index.json`: an index whose
    `weight_map` names the shard files beside it (sharded.shard_names reads either)."""
    return sharded.is_index(path) or hf_safetensors.is_index(path)


def model_files(path: Path) -> list[Path]:
    """The regular files a save consists of: the file, a folder's files (symlinked folders not
    entered), or an index and its shards. A special file or a broken symlink is not one."""
    if path.is_dir():
        return sorted(
            Path(folder) / name
            for folder, _, names in os.walk(path)
            for name in names
            if stat_problem(Path(folder) / name, "") is None
        )
    if lists_shards(path):
        try:
            names = sharded.shard_names(path, str(path))
        except ModelReadError:
            return [path]
        shards = (path.parent / n for n in names)
        return [path, *(s for s in shards if stat_problem(s, "") is None)]
    if tf_bundle.is_index(path):
        return [p for p in tf_bundle.bundle_files(path) if stat_problem(p, "") is None]
    return [path]


@contextmanager
def open_model(
    path: str | os.PathLike, where: str | None = None, layouts: h5layout.Layouts | None = None
) -> Iterator[Model]:
    """Open a model save (a str: its path as stored, see textsafe; a Path: its name on disk);
    tensors load lazily while the context is open. Messages name the save as `where`
    (default: the path), e.g. its URL when `path` is a local copy. `layouts`: small HDF5
    files' layouts read before, matched and learned (h5layout)."""
    where = where or display(str(path))
    # never a guess between the two spellings: `bad\\xff.h5` as stored names the file with
    # the byte 0xff even where one literally named so exists
    p = Path(to_os(path)) if isinstance(path, str) else Path(path)
    with ExitStack() as stack:
        try:
            model = stack.enter_context(_open(p, where, layouts))
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise ModelReadError("corrupt", f"{where}: {type(exc).__name__}: {exc}") from None
        except MemoryError:
            raise ModelReadError("out-of-memory", f"{where}: not enough memory") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ModelReadError("bad-zip", f"{where}: damaged zip archive ({exc})") from None
        _check_unique_keys(model, where)
        yield model


def _check_unique_keys(model: Model, where: str) -> None:
    """(layer_path, weight_name) is the tensor key: a file whose layers or weights repeat a
    name (two layers called `dense`) is refused rather than stored with duplicate keys."""
    paths: set[str] = set()
    for layer in model.layers:
        if layer.layer_path in paths:
            raise ModelReadError(
                "duplicate-name", f"{where}: two layers are named {layer.layer_path!r}"
            )
        paths.add(layer.layer_path)
        names = [t.weight_name for t in layer.tensors]
        if len(set(names)) != len(names):
            raise ModelReadError(
                "duplicate-name", f"{where}: layer {layer.layer_path!r} repeats a weight name"
            )


# Layouts told apart by their name or a small header, before sniffing HDF5 or ZIP: each a
# test of the path and the reader that opens it (first match wins).
_FOLDER_LAYOUTS = (
    (orbax.claims, orbax.open_step),
    (saved_model.claims, saved_model.open_folder),
    (keras_dir.claims, keras_dir.open_folder),
)
_FILE_LAYOUTS = (
    (sharded.is_index, sharded.open_shards),
    (hf_safetensors.is_index, hf_safetensors.open_index),
    (hf_safetensors.claims, hf_safetensors.open_file),
    (tf_bundle.is_index, tf_checkpoint.open_checkpoint),
)


@contextmanager
def _open(p: Path, where: str, layouts: h5layout.Layouts | None = None) -> Iterator[Model]:
    reason = unsupported.identify(p)
    if reason:
        raise ModelReadError("unsupported-format", f"{where}: {reason}")
    if p.is_dir():
        opener = next((o for claims, o in _FOLDER_LAYOUTS if claims(p)), None)
        if opener is None:
            raise ModelReadError("not-keras", f"{where}: folder is not a Keras save")
        with opener(p, where) as model:
            yield model
        return
    size = require_regular(p, where).st_size
    if size == 0:
        raise ModelReadError("empty-file", f"{where}: file is empty (0 bytes)")
    opener = next((o for claims, o in _FILE_LAYOUTS if claims(p)), None)
    if opener is not None:
        with opener(p, where) as model:
            yield model
        return
    packed = compressed.kind_of(p, where)
    if packed is not None:
        with _open_compressed(p, where, packed) as model:
            yield model
        return
    kind = sniff(p)
    if kind == "zip":
        with keras_zip.open_archive(str(p), where) as model:
            yield model
        return
    if kind != "hdf5":
        raise ModelReadError("not-hdf5", f"{where}: not a Keras model file (not HDF5 or ZIP)")
    read = layouts.read(p, size, where) if layouts is not None else None
    if read is not None and (model := layouts.match(read, where)) is not None:
        yield hf_config.annotated(model, p, where)
        return
    learn = read is not None and layouts.wants(read)
    with _open_hdf5(p, where) as f:
        model = _read_hdf5(f, where)
        if learn:
            layouts.learn(f, model, read, p)
        yield hf_config.annotated(model, p, where)


@contextmanager
def _open_compressed(p: Path, where: str, kind: str) -> Iterator[Model]:
    """A save compressed whole (compressed.py): the HDF5 file it holds, read from an anonymous
    temporary file while the model is open."""
    with compressed.inflate(p, where, kind) as fh:
        if not h5safe.is_hdf5(fh.read(8)):
            raise ModelReadError(
                "not-hdf5", f"{where}: this {kind} file holds no HDF5 model file; "
                f"{compressed.how_to_decompress(kind, p)}"
            )  # fmt: skip
        fh.seek(0)
        try:
            f = h5py.File(fh, "r")
        except OSError as exc:
            raise ModelReadError(
                "corrupt", f"{where}: what it decompresses to is not a readable HDF5 file ({exc})"
            ) from None
        with f:
            yield _read_hdf5(f, where)


def _open_hdf5(p: Path, where: str) -> h5py.File:
    try:
        return h5py.File(p, "r", locking=False)
    except OSError as exc:
        text = str(exc)
        reason = text.split("(", 1)[-1].rstrip(")") if "(" in text else text
        code = "truncated" if "truncated" in reason or "eof" in reason else "unreadable-hdf5"
        raise ModelReadError(code, f"{where}: cannot open HDF5 file ({reason})") from None


def _read_hdf5(f: h5py.File, where: str) -> Model:
    if legacy_h5.claims(f):
        return legacy_h5.read(f, where)
    if keras0.claims(f):
        return keras0.read(f, where)
    if any(isinstance(f.get(k, getlink=True), h5py.HardLink) for k in NATIVE_ROOTS):
        return native.read([f], where, WEIGHTS_H5, None, None)
    raise ModelReadError(
        "not-keras",
        f"{where}: HDF5 file without a Keras layout (no model_config, layer_names, "
        "model_weights, nb_layers or layers/vars groups)",
    )
