"""TF SavedModel folders written by Keras 2 (`model.save('dir')`, TF 2.0–2.15's default):
`saved_model.pb`, `keras_metadata.pb`, `variables/variables.index` + data shards.

Read as data, never as a program: the weights come from `variables/` (a tensor bundle with
its own object graph, tf_checkpoint), the architecture from Keras's metadata, one JSON text
per Keras object keyed by its place in the object graph (`root.layer_with_weights-0`). The
root's holds `model_config` and `training_config`, the same JSON a legacy `.h5` stores, so a
SavedModel gives the layers, classes, configs and trainable flags its `.h5` twin gives. TF
2.0–2.4 kept that metadata inside `saved_model.pb` (SavedUserObject.metadata); only those
bytes of it are decoded, the graph and its functions are skipped over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wpipe.readers import jsonsafe, tf_bundle, tf_checkpoint, tf_protos
from wpipe.readers.base import Layer, Model, ModelReadError
from wpipe.readers.keras_config import LayerSpec, is_trainable, model_tree
from wpipe.readers.legacy_h5 import _training_summary
from wpipe.readers.safefile import open_regular, require_regular

FORMAT = "tf-savedmodel"
KERAS_METADATA = "keras_metadata.pb"
SAVED_MODEL = "saved_model.pb"
VARIABLES = Path("variables") / "variables.index"
MAX_METADATA_BYTES = 32 << 20  # keras_metadata.pb: KB to a few MB (ResNet50's: ~1 MB)
MAX_SAVED_MODEL_BYTES = 256 << 20  # read only for TF 2.0-2.4 saves, which lack keras_metadata.pb


def claims(folder: Path) -> bool:
    return (folder / SAVED_MODEL).is_file() or (folder / KERAS_METADATA).is_file()


@contextmanager
def open_folder(folder: Path, where: str) -> Iterator[Model]:
    yield read(folder, where)


def read(folder: Path, where: str) -> Model:
    index = folder / VARIABLES
    if not os.path.lexists(index):
        raise ModelReadError("missing-member", f"{where}: SavedModel has no {VARIABLES}")
    bundle = tf_bundle.open_bundle(index, where)
    graph = tf_checkpoint.read_graph(bundle)
    metadata = _metadata(folder, where)
    root = metadata.get("root", {})
    by_node = _by_node(graph.nodes, metadata)
    model_config = root.get("model_config") if isinstance(root.get("model_config"), dict) else None
    model_class, specs = model_tree(model_config) if model_config else (None, [])
    if not specs:  # a subclassed model (no layer list): each layer's own metadata
        layers = _described(tf_checkpoint.bundle_layers(bundle, graph), graph, by_node)
    else:
        layers = _layers(bundle, graph, specs, by_node)
    verify = {t.source_name for layer in layers for t in layer.tensors}
    tf_checkpoint.verify_unused(bundle, verify)
    n_tensors, n_params = tf_checkpoint.optimizer_counts(bundle, graph.optimizer_keys)
    training = (
        root.get("training_config") if isinstance(root.get("training_config"), dict) else None
    )
    optimizer, loss = _training_summary(training)
    return Model(
        path=where,
        format=FORMAT,
        keras_version=_text(root.get("keras_version")),
        backend=_text(root.get("backend")),
        model_class=model_class or _text(root.get("class_name")),
        optimizer=optimizer,
        loss=loss,
        layers=layers,
        n_optimizer_tensors=n_tensors,
        n_optimizer_params=n_params,
        model_config=json.dumps(model_config) if model_config else None,
        training_config=json.dumps(training) if training else None,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _metadata(folder: Path, where: str) -> dict[str, dict]:
    """node path -> the Keras object's metadata (a JSON object); {} when none is saved."""
    keras = folder / KERAS_METADATA
    if os.path.lexists(keras):
        nodes = tf_protos.keras_metadata(_read(keras, MAX_METADATA_BYTES, where), where)
        pairs = [(n.node_path, n.metadata) for n in nodes]
    elif os.path.lexists(folder / SAVED_MODEL):
        raw = _read(folder / SAVED_MODEL, MAX_SAVED_MODEL_BYTES, where)
        by_id = tf_protos.saved_model_user_metadata(raw, where)
        pairs = [("root", by_id[0])] if 0 in by_id else []  # only the root's: ids, not paths
    else:
        pairs = []
    out = {}
    for path, text in pairs:
        value = jsonsafe.loads(text, f"Keras metadata of {path}", where)
        if isinstance(value, dict):
            out[path] = _decoded(value)
    return out


def _decoded(value: Any) -> Any:
    """What Keras's own loader reads the metadata as (tf_keras json_utils._decode_helper): its
    legacy encoder wrote a tuple as {"class_name": "__tuple__", "items": [...]}, which a `.h5`
    config holds as a plain list. Depth is bounded by jsonsafe (MAX_DEPTH)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__tuple__" and isinstance(value.get("items"), list):
            return [_decoded(v) for v in value["items"]]
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def _read(path: Path, limit: int, where: str) -> bytes:
    size = require_regular(path, where).st_size
    if size > limit:
        raise ModelReadError(
            "oversized-metadata", f"{where}: {path.name} is {size:,} bytes (limit {limit:,})"
        )
    with open_regular(path, where) as fh:
        return fh.read(limit)


def _layers(
    bundle: tf_bundle.Bundle,
    graph: tf_checkpoint.Graph,
    specs: list[LayerSpec],
    by_node: dict[int, dict],
) -> list[Layer]:
    """Every layer of the architecture (weightless ones included, as in a `.h5`), each with
    the variables of the object-graph layer Keras's metadata names like it."""
    by_name = _graph_layers_by_name(graph.layers, by_node)
    out: list[Layer] = []
    # (specs still to place, their path prefix, their enclosing trainable flag)
    stack: list[tuple[list[LayerSpec], str, bool]] = [(list(reversed(specs)), "", True)]
    while stack:
        pending, prefix, enclosing = stack[-1]
        if not pending:
            stack.pop()
            continue
        spec = pending.pop()
        path = f"{prefix}{spec.name}"
        trainable = enclosing and spec.trainable
        if spec.children is not None:
            stack.append((list(reversed(spec.children)), f"{path}/", trainable))
            continue
        if spec.inner is not spec.config and spec.inner.get("trainable") is False:
            trainable = False
        found = by_name.get(path)
        class_name = spec.class_name or None
        tensors = [tf_checkpoint.tensor(bundle, v, spec.name, class_name, trainable)
                   for v in (found.variables if found else [])]  # fmt: skip
        out.append(Layer(path, spec.name, class_name, spec.config, trainable,
                         tf_checkpoint.unique_names(tensors)))  # fmt: skip
    placed = {t.source_name for layer in out for t in layer.tensors}
    paths = {layer.layer_path for layer in out}
    # variables the architecture does not place (a layer it does not name): kept, as a bundle
    # names them, so no weight is silently dropped
    for layer in tf_checkpoint.bundle_layers(bundle, graph):
        if not any(t.source_name in placed for t in layer.tensors):
            while layer.layer_path in paths:
                layer.layer_path += "_"
            out.append(layer)
    return out


def _graph_layers_by_name(
    layers: list[tf_checkpoint.GraphLayer], by_node: dict[int, dict]
) -> dict[str, tf_checkpoint.GraphLayer]:
    """`encoder/enc_d1` -> its object-graph layer, names from Keras's metadata by node path
    (a layer the metadata does not name is named by its variables)."""
    out = {}
    own = tf_checkpoint.layer_names(layers)
    for outer, leaf in tf_checkpoint.leaves(layers):
        names = [_name(o, by_node) for o in outer]
        name = _name(leaf, by_node) or own.get(leaf.node)
        if name and all(names):
            out["/".join([*names, name])] = leaf
    return out


def _name(layer: tf_checkpoint.GraphLayer, by_node: dict[int, dict]) -> str | None:
    meta = by_node.get(layer.node)
    name = meta.get("name") if meta else None
    return name if isinstance(name, str) else None


def _by_node(nodes: list, metadata: dict[str, dict]) -> dict[int, dict]:
    """Object-graph node -> its Keras metadata: each metadata path (`root.layer-2`,
    `root.d1`: Keras picks one of an object's names) followed from the root, name by name."""
    out: dict[int, dict] = {}
    for path, meta in metadata.items():
        parts = path.split(".")
        if parts[0] != "root":
            continue
        node = 0
        for part in parts[1:]:
            node = next((c for n, c in nodes[node].children if n == part), None)
            if node is None:
                break
        if node is not None:
            out.setdefault(node, meta)
    return out


def _described(
    layers: list[Layer], graph: tf_checkpoint.Graph, by_node: dict[int, dict]
) -> list[Layer]:
    """A model without a layer list (subclassed): each layer's class, config and trainable
    flag from its own metadata, when Keras wrote one for it."""
    nodes = {layer.layer_path: leaf.node for layer, (_, leaf) in
             zip(layers, _weighted_leaves(graph), strict=True)}  # fmt: skip
    for layer in layers:
        meta = by_node.get(nodes[layer.layer_path], {})
        class_name = meta.get("class_name")
        if not isinstance(class_name, str):
            continue
        layer.class_name = class_name
        layer.config = meta.get("config") if isinstance(meta.get("config"), dict) else None
        layer.trainable = meta.get("trainable") is not False
        for tensor in layer.tensors:
            tensor.trainable = is_trainable(tensor.role, class_name, layer.trainable)
    return layers


def _weighted_leaves(graph: tf_checkpoint.Graph) -> list:
    """The leaves bundle_layers turns into layers (those with variables), in its order."""
    return [(o, leaf) for o, leaf in tf_checkpoint.leaves(graph.layers) if leaf.variables]
