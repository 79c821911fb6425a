"""`make bench`: wpipe ingest against a plain h5py read of the same files, in one run.

Two workloads, both in the real Keras legacy layout:
  zoo  - 240 small checkpoints: copies of a real Keras-saved demo CNN with fresh random weights;
  big  - one VGG16-sized full model (138M parameters, 553 MB) written with h5py.
The reference reads every weight dataset with h5py and makes one numpy pass over it (sum).
Each measurement runs in a fresh child process (so its peak RSS is its own), alternating
reference and wpipe; the best of the repeats is reported, with the ratio wpipe / reference.
"""

from __future__ import annotations

import io
import json
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where used: wpipe's measured runs load only what wpipe does
    import h5py

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "_data"
SEED_MODEL = ROOT / "examples" / "models" / "cnn_lr1e-3" / "e01.h5"
ZOO_SIZE = 240
REPEATS = 2

VGG16 = [  # (layer, kernel shape) in Keras layout; bias = last dim
    ("block1_conv1", (3, 3, 3, 64)), ("block1_conv2", (3, 3, 64, 64)),
    ("block2_conv1", (3, 3, 64, 128)), ("block2_conv2", (3, 3, 128, 128)),
    ("block3_conv1", (3, 3, 128, 256)), ("block3_conv2", (3, 3, 256, 256)),
    ("block3_conv3", (3, 3, 256, 256)), ("block4_conv1", (3, 3, 256, 512)),
    ("block4_conv2", (3, 3, 512, 512)), ("block4_conv3", (3, 3, 512, 512)),
    ("block5_conv1", (3, 3, 512, 512)), ("block5_conv2", (3, 3, 512, 512)),
    ("block5_conv3", (3, 3, 512, 512)), ("fc1", (25088, 4096)), ("fc2", (4096, 4096)),
    ("predictions", (4096, 1000)),
]  # fmt: skip


def make_zoo(folder: Path) -> None:
    if folder.exists() and len(list(folder.glob("*.h5"))) == ZOO_SIZE:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(ZOO_SIZE):
        fresh_copy(SEED_MODEL, folder / f"ckpt_{i:03d}.h5", rng)


def fresh_copy(seed: Path, target: Path, rng: np.random.Generator) -> None:
    """A copy of a real Keras checkpoint with every float weight drawn anew."""
    import h5py

    shutil.copy2(seed, target)
    with h5py.File(target, "r+") as f:

        def refill(_name, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
                obj[...] = rng.normal(0, 0.1, obj.shape).astype(obj.dtype)

        f["model_weights"].visititems(refill)


def make_big(path: Path) -> None:
    import h5py

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    layers = [{"class_name": "Conv2D" if "conv" in n else "Dense",
               "config": {"name": n, "trainable": True}} for n, _ in VGG16]  # fmt: skip
    config = {"class_name": "Sequential", "config": {"name": "vgg16", "layers": layers}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = [n.encode() for n, _ in VGG16]
        for name, shape in VGG16:
            group = weights.create_group(name)
            group.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            group[f"{name}/kernel:0"] = rng.standard_normal(shape, dtype=np.float32) * 0.01
            group[f"{name}/bias:0"] = rng.standard_normal(shape[-1], dtype=np.float32) * 0.01


def _datasets(group: h5py.Group) -> list[h5py.Dataset]:
    import h5py

    found: list[h5py.Dataset] = []
    group.visititems(
        lambda _name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None
    )
    return found


def _weight_files(paths: list[str]) -> list[str]:
    out = []
    for p in map(Path, paths):
        out += sorted(str(f) for f in p.rglob("*.h5")) if p.is_dir() else [str(p)]
    return out


def reference(paths: list[str]) -> dict:
    """Read every weight dataset with h5py and make one numpy pass over it (folders are
    walked for .h5 files; a .keras archive's model.weights.h5 is read from the zip)."""
    total = 0.0
    largest = 0
    files = 0
    for path in _weight_files(paths):
        with _open_weights(path) as f:
            group = f.get("model_weights", f)
            for ds in _datasets(group):
                array = ds[()]
                largest = max(largest, array.nbytes)
                total += float(np.sum(array, dtype=np.float64))
        files += 1
    return {"largest_tensor": largest, "checksum": total, "files": files}


@contextmanager
def _open_weights(path: str):
    import h5py

    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            data = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as f:
            yield f
        return
    with h5py.File(path, "r") as f:
        yield f


def wpipe_ingest(paths: list[str], db: str, options: list[str]) -> dict:
    """The real `wpipe ingest` command, run in this process."""
    from wpipe.cli import app

    for leftover in (Path(db), Path(db).with_suffix(".lake")):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        leftover.unlink(missing_ok=True) if leftover.is_file() else None
    try:
        code = app(["ingest", *paths, "--db", db, "--quiet", *options], standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    assert not code, f"wpipe ingest exited {code}"
    return {}


def child(kind: str, args: list[str]) -> None:
    started = time.perf_counter()
    if kind == "reference":
        extra = reference(args)
    else:
        db, options, *paths = args
        extra = wpipe_ingest(paths, db, options.split())
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), **extra}))


def peak_rss_mb() -> float:
    """Peak RSS of this process or of its largest waited-for child."""
    # VmHWM is this process's own peak (ru_maxrss would include the parent's before exec).
    # An ingest's pool workers are children of multiprocessing's forkserver, not of this
    # process: they are not counted (reading small checkpoints, a worker peaks near 180 MB).
    hwm_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return max(hwm_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def measure(kind: str, args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def compare(label: str, paths: list[str], options: str) -> None:
    mb = sum(Path(p).stat().st_size for p in paths) / 1e6
    db = str(DATA / f"bench_{label}.duckdb")
    ref_runs, our_runs = [], []
    for _ in range(REPEATS):
        ref_runs.append(measure("reference", paths))
        our_runs.append(measure("wpipe", [db, options, *paths]))
    ref = min(ref_runs, key=lambda r: r["seconds"])
    ours = min(our_runs, key=lambda r: r["seconds"])
    largest_mb = ref["largest_tensor"] / 1e6
    print(
        f"{label:<28} files={len(paths):<4} {mb:8.1f} MB | reference {ref['seconds']:7.2f} s "
        f"{mb / ref['seconds']:7.0f} MB/s rss {ref['peak_rss_mb']:6.0f} MB | wpipe "
        f"{ours['seconds']:7.2f} s {mb / ours['seconds']:7.0f} MB/s rss "
        f"{ours['peak_rss_mb']:6.0f} MB | ratio {ours['seconds'] / ref['seconds']:5.2f}x | "
        f"rss budget 3x largest tensor + 300 MB = {3 * largest_mb + 300:.0f} MB"
    )


def main() -> None:
    zoo = DATA / "zoo"
    big = DATA / "vgg16_like.h5"
    make_zoo(zoo)
    make_big(big)
    zoo_paths = sorted(str(p) for p in zoo.glob("*.h5"))
    print(f"wpipe bench: best of {REPEATS}, each run in a fresh process")
    print("zoo = 240 small real-layout checkpoints in one folder (one series: drift on by default)")
    compare("zoo, defaults, -j 1", zoo_paths, "-j 1")
    compare("zoo, defaults, -j 2", zoo_paths, "-j 2")
    compare("zoo, stats only, -j 2", zoo_paths, "-j 2 --values none --no-drift --spectra none")
    print("big = one VGG16-sized full model (138M parameters)")
    compare("big, stats only, -j 1", [str(big)], "-j 1 --values none --spectra none")
    # no per-file time limit: the spectra of a 553 MB model can pass the default on a busy machine
    compare("big, + spectra auto, -j 1", [str(big)], "-j 1 --values none --file-timeout 0")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
    else:
        main()
