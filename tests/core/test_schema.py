"""The table contract's meanings stay true to what the readers write."""

from __future__ import annotations

import re
from pathlib import Path

from wpipe.core.schema import ALL_TABLES

READERS = Path(__file__).resolve().parents[2] / "pipeline" / "wpipe" / "readers"


def test_models_format_names_every_layout_a_reader_writes():
    # `wpipe schema` once said "h5-model (full model) or h5-weights" while ingests also wrote
    # keras-zip, tf-savedmodel, safetensors, orbax-checkpoint, ...; the readers' own constants
    # are the list (a format string literal in a reader is one of these constants)
    written = set()
    for module in READERS.glob("*.py"):
        written |= set(re.findall(r'^[A-Z0-9_]+ = "([a-z0-9]+(?:-[a-z0-9]+)+|safetensors)"$',
                                  module.read_text(), re.M))  # fmt: skip
    assert {"h5-model", "weights-h5", "keras-zip", "tf-checkpoint", "safetensors"} <= written
    models = next(t for t in ALL_TABLES if t.name == "models")
    meaning = next(c.doc for c in models.columns if c.name == "format")
    named = set(re.findall(r"[a-z0-9-]+", meaning))
    assert written <= named, f"models.format does not name {sorted(written - named)}"
