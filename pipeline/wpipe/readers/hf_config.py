"""The Hugging Face `config.json` beside a weights-only HDF5 file (`tf_model.h5` written by
transformers' `save_pretrained`): what it tells of the model.

The weights file names layers but no classes and no sizes; the config says the model type
(`bert`), its class (`architectures`) and its sizes (`hidden_size`, `num_hidden_layers`,
`vocab_size`, ...). It is read as data, bounded (MAX_BYTES, jsonsafe's nesting limits), only
when it is a regular file beside the weights, and only when it looks like Hugging Face's (a
string `model_type`). A config that is absent, too large or not such a JSON object is not
used: the weights are read all the same.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from wpipe.readers.base import Model, ModelReadError
from wpipe.readers.keras_config import parse_json
from wpipe.readers.safefile import open_regular, stat_problem

NAME = "config.json"
MAX_BYTES = 1 << 20  # real ones are a few KB
WEIGHTS_ONLY = "h5-weights"


def annotated(model: Model, path: Path, where: str) -> Model:
    """`model` with the config beside `path` recorded (`source_config`, and `model_class`
    from `architectures` when the file has none); `model` itself when there is none. A new
    Model, never a change to `model` (h5layout shares it with the files of its layout)."""
    if model.format != WEIGHTS_ONLY:
        return model
    found = read_beside(path, where)
    if found is None:
        return model
    text, config = found
    model_class = model.model_class or architecture(config)
    return dataclasses.replace(model, source_config=text, model_class=model_class)


def architecture(config: dict) -> str | None:
    """The model class a config names first in `architectures` (`LlamaForCausalLM`)."""
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return None


def read_beside(path: Path, where: str) -> tuple[str, dict] | None:
    """(text, parsed object) of a Hugging Face config.json beside `path`, else None."""
    beside = path.parent / NAME
    if stat_problem(beside, where) is not None:
        return None  # absent, or not a regular file: never followed
    try:
        with open_regular(beside, where) as fh:
            raw = fh.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            return None
        config = parse_json(raw, NAME, where)
    except (ModelReadError, OSError):
        return None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        return None
    return raw.decode("utf-8", errors="replace"), config
