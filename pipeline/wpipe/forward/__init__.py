"""Layer outputs without TensorFlow: a numpy forward pass over the architecture in the file.

The config is interpreted as data (graph.py); each layer family lives in its own module and
registers its Keras class names (base.REGISTRY); runner.py executes the graph in inference mode.
A Lambda, TFOpLambda, custom or unknown layer ends the pass with a `Stopped` record — no code
from the file is ever imported, evaluated or unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from wpipe.forward import (  # noqa: F401  (imported to register their layers)
    attention,
    conv,
    core,
    merge,
    normalization,
    pooling,
    recurrent,
    reshaping,
)
from wpipe.forward.base import Unsupported
from wpipe.forward.graph import Graph, parse
from wpipe.forward.runner import LayerOutput, Stopped, run
from wpipe.forward.weights import WeightBook
from wpipe.readers.base import Model

__all__ = ["Graph", "LayerOutput", "Stopped", "Unsupported", "forward", "graph_of", "keras_major"]


def graph_of(model: Model) -> Graph:
    """The model's graph; Unsupported when the file holds no architecture."""
    if not model.model_config:
        raise Unsupported("the file holds no architecture (weights only): nothing to run")
    try:
        config = json.loads(model.model_config)
    except json.JSONDecodeError as exc:
        raise Unsupported(f"the architecture JSON is not valid ({exc})") from None
    if not isinstance(config, dict):
        raise Unsupported("the architecture JSON is not an object")
    return parse(config)


def keras_major(model: Model, graph: Graph) -> int:
    """Keras generation whose layer semantics apply (from the file, else the config dialect)."""
    version = (model.keras_version or "").strip()
    if version[:1].isdigit():
        return int(version.split(".")[0])
    return 3 if graph.keras3 else 2


def forward(
    model: Model, inputs: list[np.ndarray] | dict[str, np.ndarray]
) -> Iterator[LayerOutput | Stopped]:
    """Every layer output of `model` on `inputs` (a list in input order or a dict by name)."""
    graph = graph_of(model)
    if isinstance(inputs, dict):
        inputs = [inputs[ref.layer] for ref in graph.inputs]
    yield from run(graph, list(inputs), WeightBook(model.layers), keras_major(model, graph))
