"""Saves that are recognised but cannot be read with h5py, json and zipfile alone (§1.4)."""

from __future__ import annotations

from pathlib import Path

from wpipe.readers import orbax

RESAVE = "re-save with model.save('x.keras')"
ORBAX_MARKERS = ("orbax.checkpoint", "pytree.orbax-checkpoint", "checkpoint_metadata",
                 "_CHECKPOINT_METADATA")  # fmt: skip


def identify(path: Path) -> str | None:
    """Why `path` is a known unreadable kind, or None. TF SavedModel folders and TF
    checkpoints (`.index` + `.data-*`) are read (saved_model, tf_checkpoint), and so are the
    step folders of Keras's OrbaxCheckpoint (orbax); a folder that
    holds a checkpoint is walked like any other."""
    if path.is_dir():
        if orbax.claims(path):  # a step of Keras's OrbaxCheckpoint is read (orbax.py)
            return None
        if orbax.unfinished(path):
            return "an Orbax checkpoint step that was never finished (its save was interrupted)"
        if any((path / m).exists() for m in ORBAX_MARKERS):
            return f"Orbax checkpoint — not readable without Orbax; {RESAVE}"
        return None
    if path.name == "saved_model.pb":
        return "TF SavedModel graph file — give its folder, which is read as a whole"
    if path.suffix == ".npz":
        return f"NumPy .npz weights (Keras stores pickled objects in them) — not read; {RESAVE}"
    return None


def is_candidate(path: Path) -> bool:
    """Files worth reporting on when met in a folder walk."""
    return path.suffix in (".index", ".npz") or path.name == "saved_model.pb"
