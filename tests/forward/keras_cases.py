"""The recorded Keras outputs (tests/fixtures/forward) and wpipe's outputs for the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from wpipe.forward import LayerOutput, Stopped, forward
from wpipe.readers import open_model

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "forward"
MODELS = ROOT / "models"
EXPECTED = ROOT / "expected"


def cases() -> list[tuple[str, str]]:
    """(stem, file name) for every recorded model file."""
    out = []
    for meta in sorted(EXPECTED.glob("*.json")):
        for fname in json.loads(meta.read_text())["files"]:
            out.append((meta.stem, fname))
    return out


def expected(stem: str) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    meta = json.loads((EXPECTED / f"{stem}.json").read_text())
    with np.load(EXPECTED / f"{stem}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    inputs = [arrays[f"in:{name}"] for name in meta["inputs"]]
    outs = {k[4:]: v for k, v in arrays.items() if k.startswith("out:")}
    return inputs, outs


def computed(fname: str, inputs: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[Stopped]]:
    got: dict[str, np.ndarray] = {}
    stops: list[Stopped] = []
    with open_model(MODELS / fname) as model:
        for rec in forward(model, inputs):
            if isinstance(rec, LayerOutput):
                got[f"{rec.layer_path}:{rec.call_index}:{rec.output_index}"] = rec.array
            else:
                stops.append(rec)
    return got, stops
