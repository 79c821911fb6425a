"""Saves that are recognised but cannot be read with h5py, json and zipfile alone (§1.4)."""

from __future__ import annotations

from pathlib import Path

RESAVE = "re-save with model.save('x.keras')"
ORBAX_MARKERS = ("orbax.checkpoint", "pytree.orbax-checkpoint", "checkpoint_metadata",
                 "_CHECKPOINT_METADATA")  # fmt: skip


def identify(path: Path) -> str | None:
    """Why `path` is a known unreadable kind, or None."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return f"TF SavedModel — not readable without TensorFlow; {RESAVE}"
        if any((path / m).exists() for m in ORBAX_MARKERS):
            return f"Orbax checkpoint — not readable without Orbax; {RESAVE}"
        if (path / "checkpoint").is_file() and any(path.glob("*.index")):
            return f"TF checkpoint folder — not readable without TensorFlow; {RESAVE}"
        return None
    if path.name == "saved_model.pb":
        return f"TF SavedModel graph — not readable without TensorFlow; {RESAVE}"
    if path.suffix == ".index" and any(path.parent.glob(f"{path.stem}.data-*")):
        return (
            f"TF checkpoint (save_weights without .h5) — not readable without TensorFlow; {RESAVE}"
        )
    if path.suffix == ".npz":
        return f"NumPy .npz weights (Keras stores pickled objects in them) — not read; {RESAVE}"
    return None


def is_candidate(path: Path) -> bool:
    """Files worth reporting on when met in a folder walk."""
    return path.suffix in (".index", ".npz") or path.name == "saved_model.pb"
