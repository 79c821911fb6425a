"""Fuzz cases: one generator per family of damaged or hostile input, seeded (fixed seeds).

A case makes its files under a folder of its own and says what must become of them: `error`
(an ingest_errors row, with `code` when it is known in advance), `ok` (ingested), or `any`
(random damage: either, but cleanly). Every case is ingested beside good files (runner.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tests.conftest import MODELS, dense_config, write_legacy_h5
from tests.fuzz.deep import nest

SOURCES = ("k2_conv2d.h5", "k3_lstm.h5", "k3_conv2d.keras", "k2_mha.weights.h5",
           "k2_dense_bn_frozen.weights_only.h5")  # fmt: skip
KERNEL = np.ones((2, 3), "f4")


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    make: Callable[[Path], None]  # writes the case's files into the (empty) folder given
    expect: str = "any"  # "error" | "ok" | "any"
    code: str | None = None
    slow: bool = False  # only in the full run (big files, long generation)
    models: int | None = None  # models its folder must give (None: not counted)


# ------------------------------------------------------------------ random damage of real files


def damaged(source: str, seed: int) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        data = bytearray((MODELS / source).read_bytes())
        kind = seed % 5
        if kind == 0:  # flip bytes in the metadata near the start
            for i in rng.integers(8, min(len(data), 4096), size=int(rng.integers(1, 40))):
                data[i] ^= int(rng.integers(1, 256))
        elif kind == 1:  # zero a range of header bytes
            start = int(rng.integers(8, min(len(data) - 64, 2048)))
            end = min(len(data), start + int(rng.integers(8, 512)))
            data[start:end] = bytes(end - start)
        elif kind == 2:  # splice: copy a block over another
            size = int(rng.integers(16, 1024))
            a, b = (int(x) for x in rng.integers(0, len(data) - size, size=2))
            data[b : b + size] = data[a : a + size]
        elif kind == 3:  # truncate
            del data[int(rng.integers(16, len(data) - 1)) :]
        else:  # random bytes anywhere
            for i in rng.integers(0, len(data), size=int(rng.integers(1, 200))):
                data[i] = int(rng.integers(0, 256))
        (folder / source.replace("/", "_")).write_bytes(bytes(data))

    return make


def damage_cases(n: int) -> Iterator[Case]:
    for seed in range(n):
        source = SOURCES[seed % len(SOURCES)]
        yield Case("damage", f"{source}#{seed}", damaged(source, seed))


# ------------------------------------------------------------------ HDF5 resource bombs


def with_kernel(folder: Path, make_dataset, name: str = "m.h5") -> None:
    path = folder / name
    write_legacy_h5(path, {"d": {}}, dense_config("d"))
    with h5py.File(path, "a") as f:
        group = f["model_weights/d"]
        group.attrs["weight_names"] = [b"d/kernel:0"]
        make_dataset(group.create_group("d"), "kernel:0")


def gzip_zeros(shape, chunks):
    def make(g, name):
        ds = g.create_dataset(name, shape=shape, dtype="f4", chunks=chunks, compression="gzip")
        ds[tuple(slice(0, c) for c in chunks)] = 0.0  # one chunk: the rest is fill value

    return make


def native_with(make_vars) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        with h5py.File(folder / "m.weights.h5", "w", libver="latest") as f:
            make_vars(f)

    return make


def many_groups(n: int):
    def make(f):
        layers = f.create_group("layers")
        for i in range(n):
            layers.create_group(f"g{i}")
        layers.create_group("dense/vars")["0"] = KERNEL

    return make


def repeated_weight_names(folder: Path) -> None:
    path = folder / "m.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["model_config"] = json.dumps(dense_config("d"))
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [b"d"]
        d = g.create_group("d")
        d.attrs["weight_names"] = [b"d/kernel:0"] * 100_000
        d["d/kernel:0"] = KERNEL


def many_layer_names(n: int) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        with h5py.File(folder / "m.h5", "w", libver="latest") as f:
            f.attrs["model_config"] = json.dumps(dense_config("d"))
            f.create_group("model_weights").attrs["layer_names"] = [
                f"l{i}".encode() for i in range(n)
            ]

    return make


def keras0_layers(n: int) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        with h5py.File(folder / "m.h5", "w") as f:
            f.attrs["nb_layers"] = n

    return make


def nan_tensor(rows: int) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        with_kernel(
            folder, lambda g, n: g.create_dataset(n, data=np.full((rows, 1024), np.nan, "f4"))
        )

    return make


def bomb_cases() -> Iterator[Case]:
    fam = "hdf5-bombs"
    yield Case(fam, "gzip 8 GiB zeros (legacy)", lambda d: with_kernel(
        d, gzip_zeros((65536, 32768), (1024, 1024))), "error", "oversized-tensor")  # fmt: skip
    yield Case(fam, "gzip 1 GiB zeros (legacy)", lambda d: with_kernel(
        d, gzip_zeros((16384, 16384), (1024, 1024))), "error", "compression-bomb")  # fmt: skip
    yield Case(fam, "gzip 1 GiB zeros (native)", native_with(lambda f: f.create_group(
        "layers/dense/vars").create_dataset("0", shape=(16384, 16384), dtype="f4",
        chunks=(1024, 1024), compression="gzip")), "ok")  # fmt: skip
    yield Case(fam, "declared 1e5x1e5 never written", lambda d: with_kernel(
        d, lambda g, n: g.create_dataset(n, shape=(100_000, 100_000), dtype="f4")),
        "error", "oversized-tensor")  # fmt: skip
    yield Case(fam, "declared 3000x3000 never written", lambda d: with_kernel(
        d, lambda g, n: g.create_dataset(n, shape=(3000, 3000), dtype="f4")), "ok")  # fmt: skip
    yield Case(fam, "100,000 repeated weight names", repeated_weight_names, "error",
               "duplicate-name")  # fmt: skip
    yield Case(fam, "200,000 layer names", many_layer_names(200_000), "error", "too-many-objects",
               slow=True)  # fmt: skip
    yield Case(fam, "1e6 layer names", many_layer_names(1_000_000), "error", "too-many-objects",
               slow=True)  # fmt: skip
    yield Case(fam, "keras 0.x nb_layers 1e9", keras0_layers(10**9), "error", "too-many-objects")
    yield Case(fam, "600,000 tiny groups (native)", native_with(many_groups(600_000)), "error",
               "too-many-objects", slow=True)  # fmt: skip
    yield Case(fam, "20,000 tiny groups (native)", native_with(many_groups(20_000)), "ok",
               slow=True)  # fmt: skip
    # refused from the group's own member count, before the walk reads and sorts them all
    yield Case(fam, "2 million tiny groups (native)", native_with(many_groups(2_000_000)),
               "error", "too-many-objects", slow=True)  # fmt: skip
    yield Case(fam, "NaN-filled 400 MB tensor", nan_tensor(100_000), "ok", slow=True)


# ------------------------------------------------------------------ zip archives


def real_member(name: str) -> bytes:
    with zipfile.ZipFile(MODELS / "k3_conv2d.keras") as z:
        return z.read(name)


def archive(members: dict[str, bytes], compression=zipfile.ZIP_STORED, name="m.keras"):
    def make(folder: Path) -> None:
        with zipfile.ZipFile(folder / name, "w", compression) as z:
            for member, data in members.items():
                z.writestr(member, data)

    return make


def big_member(size: int) -> Callable[[Path], None]:
    """A deflated weights member of incompressible bytes, below the ratio limit."""

    def make(folder: Path) -> None:
        with zipfile.ZipFile(folder / "m.keras", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr("config.json", real_member("config.json"))
            with z.open("model.weights.h5", "w", force_zip64=True) as fh:
                rng = np.random.default_rng(0)
                for _ in range(size >> 24):
                    fh.write(rng.bytes(1 << 24))

    return make


def zip_cases() -> Iterator[Case]:
    fam = "zip"
    config, weights = real_member("config.json"), real_member("model.weights.h5")
    yield Case(fam, "256 MB of zeros deflated", archive(
        {"config.json": config, "model.weights.h5": bytes(256 << 20)}, zipfile.ZIP_DEFLATED),
        "error", "zip-bomb")  # fmt: skip
    yield Case(fam, "member leaving the archive", archive(
        {"config.json": config, "model.weights.h5": weights, "../x": b"x"}), "error",
        "unsafe-archive")  # fmt: skip
    yield Case(fam, "deflated deep config", archive(
        {"config.json": b"[" * 200_000 + b"]" * 200_000, "model.weights.h5": weights},
        zipfile.ZIP_DEFLATED), "error", "bad-json")  # fmt: skip
    yield Case(fam, "not a zip after the signature", lambda d: (d / "m.keras").write_bytes(
        b"PK\x03\x04" + bytes(200)), "error", "bad-zip")  # fmt: skip
    yield Case(fam, "weights member is not HDF5", archive(
        {"config.json": config, "model.weights.h5": b"nope"}), "error", "corrupt")  # fmt: skip
    yield Case(
        fam,
        "deflated real archive",
        archive({"config.json": config, "model.weights.h5": weights}, zipfile.ZIP_DEFLATED),
        "ok",
    )
    yield Case(fam, "600 MB member below the ratio", big_member(600 << 20), "error", "corrupt",
               slow=True)  # fmt: skip


# ------------------------------------------------------------------ odd structures and dtypes


def kernel_case(name: str, make_dataset, expect: str, code: str | None = None) -> Case:
    return Case("structures", name, lambda d: with_kernel(d, make_dataset), expect, code)


def soft_loop(g, name):
    g[name] = h5py.SoftLink(f"{g.name}/{name}")


def group_for_dataset(g, name):
    g.create_group(name)


def structure_cases() -> Iterator[Case]:
    yield kernel_case("complex64", lambda g, n: g.create_dataset(n, data=KERNEL + 1j), "ok")
    yield kernel_case("compound", lambda g, n: g.create_dataset(
        n, data=np.zeros(3, [("a", "f4"), ("b", "i4")])), "ok")  # fmt: skip
    yield kernel_case("enum", lambda g, n: g.create_dataset(
        n, data=np.zeros(3, "u1"), dtype=h5py.enum_dtype({"A": 0}, "u1")), "ok")  # fmt: skip
    yield kernel_case("strings", lambda g, n: g.create_dataset(n, data=[b"a", b"b"]), "ok")
    yield kernel_case("vlen strings", lambda g, n: g.create_dataset(
        n, data=["a", "b"], dtype=h5py.string_dtype()), "ok")  # fmt: skip
    yield kernel_case("bool", lambda g, n: g.create_dataset(n, data=KERNEL > 0), "ok")
    yield kernel_case("int64", lambda g, n: g.create_dataset(n, data=KERNEL.astype("i8")), "ok")
    yield kernel_case("float64", lambda g, n: g.create_dataset(n, data=KERNEL.astype("f8")), "ok")
    yield kernel_case("scalar", lambda g, n: g.create_dataset(n, data=np.float32(1)), "ok")
    yield kernel_case("zero-size", lambda g, n: g.create_dataset(n, shape=(0, 3), dtype="f4"),
                      "ok")  # fmt: skip
    yield kernel_case("null dataspace", lambda g, n: g.create_dataset(
        n, data=h5py.Empty("f4")), "any")  # fmt: skip
    yield kernel_case("opaque 16 bytes", lambda g, n: g.create_dataset(
        n, data=np.void(bytes(16))), "ok")  # fmt: skip
    yield kernel_case("group where a dataset belongs", group_for_dataset, "error")
    yield kernel_case("soft link loop", soft_loop, "error")
    yield kernel_case("external link", lambda g, n: g.__setitem__(
        n, h5py.ExternalLink("/etc/passwd", "x")), "error", "external-link")  # fmt: skip
    yield Case("structures", "two layers named alike", lambda d: write_legacy_h5(
        d / "m.h5", {"d": {"d/kernel:0": KERNEL}}, dense_config("d", "d")), "any")  # fmt: skip
    yield Case("structures", "layer_names with one name twice", duplicate_layer_names, "error",
               "duplicate-name")  # fmt: skip


def duplicate_layer_names(folder: Path) -> None:
    write_legacy_h5(folder / "m.h5", {"d": {"d/kernel:0": KERNEL}}, dense_config("d", "d"))
    with h5py.File(folder / "m.h5", "a") as f:
        f["model_weights"].attrs["layer_names"] = [b"d", b"d"]


# ------------------------------------------------------------------ JSON in and beside files


def config_case(name: str, config: bytes | str, expect="error", code="bad-json", slow=False):
    return Case("json", name, lambda d: write_legacy_h5(
        d / "m.h5", {"d": {"d/kernel:0": KERNEL}}, config), expect, code, slow)  # fmt: skip


def json_cases() -> Iterator[Case]:
    yield config_case("100,000-deep model_config", "[" * 100_000 + "]" * 100_000)
    yield config_case("model_config not an object", "[1, 2]")
    yield config_case("invalid UTF-8 model_config", b'{"a": "\xff\xfe"}', "any", None)
    yield config_case("40 MB model_config", json.dumps({"x": "a" * (40 << 20)}))
    yield config_case("3e6 small objects", json.dumps([{}] * 3_000_000), slow=True)
    yield Case("json", "unzipped folder with deep config.json", unzipped(
        {"config.json": b"[" * 100_000 + b"]" * 100_000}), "error", "bad-json")  # fmt: skip


def unzipped(replace: dict[str, bytes | str]) -> Callable[[Path], None]:
    """A copy of a real unzipped save with some members replaced (str: a symlink target)."""

    def make(folder: Path) -> None:
        save = folder / "saved"
        shutil.copytree(MODELS / "k3_conv2d_unzipped", save)
        for name, value in replace.items():
            (save / name).unlink(missing_ok=True)
            if isinstance(value, str):
                os.symlink(value, save / name)
            else:
                (save / name).write_bytes(value)

    return make


# ------------------------------------------------------------------ shard indexes


def sharded(edit: Callable[[Path, dict], None]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        for p in MODELS.glob("k3_conv2d_sharded*"):
            shutil.copy2(p, folder / p.name)
        index = folder / "k3_conv2d_sharded.weights.json"
        edit(index, json.loads(index.read_text()))

    return make


def write_map(weight_map_of) -> Callable[[Path, dict], None]:
    def edit(index: Path, value: dict) -> None:
        value["weight_map"] = weight_map_of(value["weight_map"])
        index.write_text(json.dumps(value))

    return edit


def shard_link(target: str) -> Callable[[Path, dict], None]:
    def edit(index: Path, value: dict) -> None:
        name = next(iter(value["weight_map"].values()))
        name = name if isinstance(name, str) else name[0]
        (index.parent / name).unlink()
        os.symlink(target, index.parent / name)

    return edit


def index_fifo(index: Path, value: dict) -> None:
    index.unlink()
    os.mkfifo(index)


def shard_cases() -> Iterator[Case]:
    fam = "shards"
    yield Case(fam, "index value an int", sharded(write_map(lambda m: {k: 5 for k in m})),
               "error", "bad-json")  # fmt: skip
    yield Case(fam, "index value null", sharded(write_map(lambda m: {k: None for k in m})),
               "error", "bad-json")  # fmt: skip
    yield Case(
        fam,
        "index lists itself",
        sharded(write_map(lambda m: {k: "k3_conv2d_sharded.weights.json" for k in m})),
        "error",
        "bad-json",
    )
    yield Case(
        fam,
        "100,000 shard names",
        sharded(write_map(lambda m: {f"w{i}": f"s{i}.h5" for i in range(100_000)})),
        "error",
        "too-many-objects",
    )
    yield Case(
        fam,
        "100,000-deep index",
        sharded(lambda i, v: i.write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")),
        "error",
        "bad-json",
    )
    yield Case(fam, "shard is /dev/zero", sharded(shard_link("/dev/zero")), "error",
               "not-a-regular-file")  # fmt: skip
    yield Case(fam, "shard is /dev/urandom", sharded(shard_link("/dev/urandom")), "error",
               "not-a-regular-file")  # fmt: skip
    yield Case(fam, "shard symlink dangling", sharded(shard_link("/nonexistent/x.h5")),
               "error", "dangling-symlink")  # fmt: skip
    yield Case(fam, "index is a FIFO", sharded(index_fifo), "error", "not-a-regular-file")
    yield Case(fam, "real sharded save", sharded(lambda i, v: None), "ok")


# ------------------------------------------------------------------ the folder walk


def walk_cases() -> Iterator[Case]:
    fam = "walk"
    yield Case(fam, "FIFO named x.h5", lambda d: os.mkfifo(d / "x.h5"), "error",
               "not-a-regular-file")  # fmt: skip
    yield Case(fam, "symlink to /dev/zero", lambda d: os.symlink("/dev/zero", d / "z.h5"),
               "error", "not-a-regular-file")  # fmt: skip
    yield Case(fam, "symlink to /dev/urandom", lambda d: os.symlink("/dev/urandom", d / "u.h5"),
               "error", "not-a-regular-file")  # fmt: skip
    yield Case(fam, "dangling symlink", lambda d: os.symlink(d / "gone", d / "g.h5"), "error",
               "dangling-symlink")  # fmt: skip
    yield Case(fam, "self-referencing symlink", lambda d: os.symlink(d / "s.h5", d / "s.h5"),
               "error", "symlink-loop")  # fmt: skip
    yield Case(fam, "socket named x.keras", make_socket, "error", "not-a-regular-file")
    yield Case(fam, "folder symlink loop, a good file", lambda d: (os.symlink(d, d / "loop"),
               shutil.copy2(MODELS / "k2_uncompiled.h5", d / "m.h5")), "ok")  # fmt: skip
    yield Case(fam, "unzipped save, weights -> /dev/zero", unzipped(
        {"model.weights.h5": "/dev/zero"}), "error", "not-a-regular-file")  # fmt: skip
    yield Case(fam, "folder nested 1,200 deep", deep_folder("d", 1200), "error", "too-deep")
    yield Case(fam, "folder path past PATH_MAX", deep_folder("n" * 250, 20), "error", "io-error")
    yield Case(fam, "symlink to a good file", lambda d: os.symlink(
        MODELS / "k2_uncompiled.h5", d / "l.h5"), "ok")  # fmt: skip


def deep_folder(name: str, levels: int) -> Callable[[Path], None]:
    """A good model beside a chain of `levels` folders named `name` with a model at its end
    (deeper than the walk's limit, or past PATH_MAX)."""

    def make(folder: Path) -> None:
        good = (MODELS / "k2_uncompiled.h5").read_bytes()
        shutil.copy2(MODELS / "k2_uncompiled.h5", folder / "top.h5")
        nest(folder, name, levels, {levels: ("bottom.h5", good)})

    return make


def make_socket(folder: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "x.keras"))
    sock.close()


# ------------------------------------------------------------------ names


def copy_as(name: bytes | str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        target = os.fsencode(folder) + b"/" + (name if isinstance(name, bytes) else name.encode())
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(MODELS / "k2_uncompiled.h5", target)

    return make


def layer_named(name: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        write_legacy_h5(folder / "m.h5", {name: {f"{name}/kernel:0": KERNEL}}, dense_config(name))

    return make


def colliding_names(folder: Path) -> None:
    """The byte 0xff in one name, the four characters `\\xff` in the other: two models."""
    copy_as(b"bad\xff.h5")(folder)
    shutil.copy2(MODELS / "k2_conv2d.h5", os.fsencode(folder) + b"/bad\\xff.h5")


def name_cases() -> Iterator[Case]:
    fam = "names"
    yield Case(fam, "a raw byte name and its escaped spelling", colliding_names, "ok", models=2)
    yield Case(fam, "markup in the file name", copy_as("[bold]x[red].h5"), "ok")
    yield Case(fam, "non-UTF-8 file name", copy_as(b"caf\xe9\xff.h5"), "ok")
    yield Case(
        fam,
        "non-UTF-8 junk file",
        lambda d: (Path(os.fsdecode(os.fsencode(d) + b"/j\xfe[red].h5"))).write_bytes(b"junk"),
        "error",
        "not-hdf5",
    )
    yield Case(fam, "control characters in a file name", copy_as("b\x07\x1b[31m.h5"), "ok")
    yield Case(fam, "control characters in a layer name", layer_named("d\x07\x1b[0m"), "ok")
    yield Case(fam, "markup and HTML in a layer name", layer_named("[/b]<script>x</script>"),
               "ok")  # fmt: skip
    yield Case(fam, "255-byte file name", copy_as("n" * 252 + ".h5"), "ok")
    yield Case(fam, "markup in a folder name", copy_as(b"[/b]/[bold]/m.h5"), "ok")
    yield Case(fam, "non-UTF-8 folder name", copy_as(b"r\xe9sultats\xff/m.h5"), "ok")
    yield Case(fam, "control characters in a folder name", copy_as(b"e\x07\x1b[2J/m.h5"), "ok")


# ------------------------------------------------------------------ HDF5 loops

# Seeds of `damaged` whose small file (20-40 KB) makes the HDF5 library loop in its own walk
# (found by scanning 3,000 seeds; each still ran after 90 s): stopped by the default time
# limit for its size in seconds, recorded as `timeout`.
LOOP_SEEDS = (34, 1127, 1494, 1835)


def loop_cases() -> Iterator[Case]:
    """Slow (each holds a worker for its whole time limit); tests/ingest/test_workers.py stops
    one."""
    for seed in LOOP_SEEDS:
        source = SOURCES[seed % len(SOURCES)]
        # a clean error of any code: on some runs the library gives up (`corrupt`) before the
        # limit stops its loop (`timeout`)
        yield Case("hdf5-loops", f"{source}#{seed}", damaged(source, seed), "error", slow=True)


# ------------------------------------------------------------------ all families

FAMILIES: dict[str, Callable[[int], Iterator[Case]]] = {
    "damage": damage_cases,
    "hdf5-bombs": lambda n: bomb_cases(),
    "zip": lambda n: zip_cases(),
    "structures": lambda n: structure_cases(),
    "json": lambda n: json_cases(),
    "shards": lambda n: shard_cases(),
    "walk": lambda n: walk_cases(),
    "names": lambda n: name_cases(),
    "tf-bundles": lambda n: _tf_cases().bundle_cases(n),
    "tf-savedmodel": lambda n: _tf_cases().saved_model_cases(n),
    "safetensors": lambda n: _safetensors_cases().safetensors_cases(n),
    "orbax": lambda n: _orbax_cases().orbax_cases(n),
    "hdf5-loops": lambda n: loop_cases(),
}


def _tf_cases():
    from tests.fuzz import tf_cases  # builds on Case above: imported once this module is

    return tf_cases


def _safetensors_cases():
    from tests.fuzz import safetensors_cases  # builds on Case, as tf_cases

    return safetensors_cases


def _orbax_cases():
    from tests.fuzz import orbax_cases  # as _tf_cases

    return orbax_cases


def all_cases(full: bool, damage: int | None = None, per_family: int | None = None) -> list[Case]:
    """Every case of every family (`full`), else the quick ones; at most `per_family` each."""
    n = damage if damage is not None else (200 if full else 10)
    cases = []
    for family in FAMILIES.values():
        chosen = [c for c in family(n) if full or not c.slow]
        cases.extend(chosen[:per_family])
    return cases
