"""Legacy Keras HDF5: full models (`model_config` + `model_weights`) and `save_weights` files.

Written by Keras 1, Keras 2, tf.keras / tf_keras and Keras 3 (`.h5` path); keras_formats.md §3.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from wpipe.readers import h5safe, inferred, quantized, scopes, tied
from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.base import Layer, Model, ModelReadError, Tensor
from wpipe.readers.keras_config import (
    LayerSpec,
    canonical_weight_name,
    inner_config,
    is_trainable,
    model_tree,
    parse_json,
    quantization_mode,
    role_of,
)

FULL_MODEL = "h5-model"
WEIGHTS_ONLY = "h5-weights"


def claims(f: h5py.File) -> bool:
    """True for the legacy layouts (§1.2 steps 1–3)."""
    attrs = f.attrs
    return (
        "model_config" in attrs
        or "layer_names" in attrs
        or "layer_names0" in attrs
        or isinstance(f.get("model_weights", getlink=True), h5py.HardLink)
    )


def read(f: h5py.File, where: str) -> Model:
    model_json = h5safe.attr(f, "model_config")
    full = model_json is not None or "model_weights" in f
    weights_root = h5safe.child(f, "model_weights", where) if full else f
    model_class, specs = _parsed(model_json, "model_config", where,
                                 lambda config: model_tree(config, model_json, where) if config
                                 else (None, []))  # fmt: skip
    training_json = h5safe.attr(f, "training_config")
    optimizer, loss = _parsed(training_json, "training_config", where, _training_summary)
    layer_names = h5safe.name_list(weights_root, "layer_names")
    if layer_names is None:
        raise ModelReadError("not-keras", f"{where}: weights group has no layer_names attribute")

    by_name = {spec.name: spec for spec in specs}
    layers: list[Layer] = []
    listings: list[tied.Listing] = []
    for name in layer_names:
        group = h5safe.child(weights_root, name, where)
        weight_names = h5safe.name_list(group, "weight_names") or []
        spec = by_name.get(name)
        start = len(layers)
        if spec is not None and spec.children is not None:
            layers.extend(_nested(group, weight_names, spec, name, True, where))
        elif spec is None and (owned := _scoped(name, weight_names)):
            layers.extend(_sublayers(group, owned, name, where))
        else:
            layers.append(_leaf(group, weight_names, name, name, spec, True, where))
        listings.extend(_listings(layers[start:], group.name, name, weight_names))
    if "top_level_model_weights" in weights_root:
        group = h5safe.child(weights_root, "top_level_model_weights", where)
        names = h5safe.name_list(group, "weight_names") or []
        if names:
            layers.append(_leaf(group, names, "top_level_model_weights", "", None, True, where))
    emptied = tied.join(listings)
    layers = [x for x in layers if id(x) not in emptied]

    n_opt_tensors, n_opt_params = _optimizer_counts(f)
    keras_version = h5safe.attr(weights_root, "keras_version") or h5safe.attr(f, "keras_version")
    backend = h5safe.attr(weights_root, "backend") or h5safe.attr(f, "backend")
    quantized.dequantize_layers(layers, keras_version, where)
    return Model(
        path=where,
        format=FULL_MODEL if full else WEIGHTS_ONLY,
        keras_version=keras_version,
        backend=backend,
        model_class=model_class,
        optimizer=optimizer,
        loss=loss,
        layers=layers,
        n_optimizer_tensors=n_opt_tensors,
        n_optimizer_params=n_opt_params,
        model_config=model_json,
        training_config=training_json,
    )


# What the last few distinct JSON texts parsed to: the checkpoints of one run repeat their
# architecture and training config, whose parsing is a tenth of a small checkpoint's read.
# The results are shared by those models' layers, which never change them.
_PARSED: dict[tuple, Any] = {}
PARSED_KEEP = 8
PARSED_MAX_TEXT = 1 << 20  # longer texts are parsed each time (bounded memory)


def _parsed(text: Any, what: str, where: str, then: Callable[[Any], Any]) -> Any:
    """then(parse_json(text)), remembered for the last PARSED_KEEP texts of each `what` (one
    `then` per `what`); a failure is raised each time, never remembered."""
    key = (what, text) if isinstance(text, str) and len(text) <= PARSED_MAX_TEXT else None
    if key is not None and key in _PARSED:
        return _PARSED[key]
    result = then(parse_json(text, what, where))
    if key is not None:
        if len(_PARSED) >= PARSED_KEEP:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = result
    return result


def _nested(
    group: h5py.Group,
    weight_names: list[str],
    spec: LayerSpec,
    prefix: str,
    enclosing_trainable: bool,
    where: str,
) -> Iterator[Layer]:
    """A nested model's group holds all its sublayers' variables; split them by name prefix."""
    children = spec.children or []
    child_names = {c.name for c in children}
    owned: dict[str, list[tuple[str, list[str]]]] = {c.name: [] for c in children}
    orphans: list[str] = []
    for full in weight_names:
        parts = full.split("/")
        hit = next((i for i, p in enumerate(parts[:-1]) if p in child_names), None)
        if hit is None:
            orphans.append(full)
        else:
            owned[parts[hit]].append((full, parts[hit + 1 :]))
    trainable = enclosing_trainable and spec.trainable
    for sub in children:
        path = f"{prefix}/{sub.name}"
        pairs = owned[sub.name]
        if sub.children is not None:
            yield from _nested(group, [full for full, _ in pairs], sub, path, trainable, where)
        else:
            yield _layer(group, pairs, path, sub.name, sub, trainable, where)
    if orphans:
        yield _leaf(group, orphans, prefix, spec.name, None, trainable, where)


def _scoped(name: str, weight_names: list[str]) -> dict[str, scopes.Owned] | None:
    """A group without architecture split into its sub-layers by its variables' scopes,
    unless its name is a Keras layer class's (a Bidirectional's or an RNN's scopes are its
    own); None when it is one layer."""
    cls = inferred.group_class(name)
    if cls is not None and cls not in inferred.MODEL_CLASSES:
        return None
    return scopes.split_by_scope(name, weight_names)


def _sublayers(
    group: h5py.Group, owned: dict[str, scopes.Owned], prefix: str, where: str
) -> Iterator[Layer]:
    for sub, pairs in owned.items():
        path = f"{prefix}/{sub}" if sub else prefix
        yield _layer(group, pairs, path, path.rsplit("/", 1)[-1], None, True, where)


def _listings(
    layers: list[Layer], group_path: str, name: str, weight_names: list[str]
) -> Iterator[tied.Listing]:
    """How one group lists its tensors: by which stored name (see tied.py)."""
    for layer in layers:
        for tensor in layer.tensors:
            stored = tensor.source_name.removeprefix(group_path + "/")
            yield tied.Listing(layer, tensor, stored, name, weight_names)


def _leaf(
    group: h5py.Group,
    weight_names: list[str],
    path: str,
    name: str,
    spec: LayerSpec | None,
    enclosing_trainable: bool,
    where: str,
) -> Layer:
    pairs = [(full, full.split("/")) for full in weight_names]
    return _layer(group, pairs, path, name, spec, enclosing_trainable, where)


def _layer(
    group: h5py.Group,
    pairs: list[tuple[str, list[str]]],
    path: str,
    name: str,
    spec: LayerSpec | None,
    enclosing_trainable: bool,
    where: str,
) -> Layer:
    """One leaf layer; `pairs` are (stored name, its components relative to the layer)."""
    class_name = (spec.class_name or None) if spec else None
    config = spec.config if spec else None
    mode = quantization_mode(spec.config) if spec else None
    layer_trainable = enclosing_trainable and (spec.trainable if spec else True)
    if spec and spec.inner is not spec.config and spec.inner.get("trainable") is False:
        layer_trainable = False
    found = [(parts, h5safe.dataset(group, full, where), full) for full, parts in pairs]
    fields = [h5safe.tensor_fields(ds, where) for _, ds, _ in found]
    if spec is None:  # the file names no class: the layer's name and variables may
        class_name, config = _inferred_class(name, [p for p, _, _ in found], fields)
    tensors: list[Tensor] = []
    seen: set[str] = set()
    for (parts, _, full), field in zip(found, fields, strict=True):
        weight_name = canonical_weight_name(parts, name, class_name)
        role = role_of(weight_name)
        if spec is None:
            weight_name, role = _named(weight_name, name, field["shape"])
        unique, n = weight_name, 1
        while unique in seen:
            unique, n = f"{weight_name}_{n}", n + 1
        seen.add(unique)
        tensors.append(
            Tensor(
                weight_name=unique,
                role=role,
                trainable=is_trainable(role, class_name, layer_trainable, mode),
                source_name=f"{group.name}/{full}",
                **field,
            )
        )
    layout = _layout(class_name, config)
    tensors = _fuse_keras1_gates(tensors)
    tensors = quantized.saved_order(tensors, mode)
    quantized.mark(tensors, mode)
    for tensor in tensors:
        if layout == "cudnn" or (layout == "theano" and tensor.role == "kernel"):
            tensor.layout = layout
    return Layer(
        layer_path=path,
        layer_name=name,
        class_name=class_name,
        config=config,
        trainable=layer_trainable,
        tensors=tensors,
    )


CUDNN_CLASSES = {"CuDNNLSTM", "CuDNNGRU"}
# Keras 1 saved non-fused recurrent layers gate by gate; Keras 2 concatenates in this order.
GATE_ORDERS = ({"i", "c", "f", "o"}, "ifco"), ({"z", "r", "h"}, "zrh")
_GATE_NAME = re.compile(
    r"^(?:(?P<scope>.+)/)?(?P<role>kernel|recurrent_kernel|bias)_(?P<gate>[a-z])$"
)


def _layout(class_name: str | None, config: dict | None) -> str:
    config = config or {}
    wrapped = config.get("layer") if isinstance(config.get("layer"), dict) else {}
    if class_name in CUDNN_CLASSES or wrapped.get("class_name") in CUDNN_CLASSES:
        return "cudnn"
    theano = inner_config(config).get("dim_ordering") == "th"
    if class_name and "onvolution" in class_name and theano:
        return "theano"
    return "keras"


def _inferred_class(
    name: str, parts: list[list[str]], fields: list[dict]
) -> tuple[str | None, dict | None]:
    """(class, the wrapper config it implies) of a layer the file gives no class: from its
    default name and its variables' roles and shapes (inferred.py)."""
    named = [(*_named(canonical_weight_name(p, name, None), name, f["shape"]), f["shape"])
             for p, f in zip(parts, fields, strict=True)]  # fmt: skip
    class_name = inferred.layer_class(name, named)
    return class_name, inferred.wrapped_config(class_name, named)


def _named(weight_name: str, layer_name: str, shape: tuple[int, ...]) -> tuple[str, str]:
    """(weight name, role) where only the names say what a variable is (Hugging Face's
    `weight`, `cls_token`, ...): inferred.role_from_name; else the usual role."""
    scope, _, last = weight_name.rpartition("/")
    if last != inferred.GENERIC and last not in inferred.NAMED_ROLES:
        return weight_name, role_of(weight_name)
    renamed, role = inferred.role_from_name(layer_name, last, shape)
    return f"{scope}/{renamed}" if scope else renamed, role


def _fuse_keras1_gates(tensors: list[Tensor]) -> list[Tensor]:
    """Keras 1's W_i, U_i, b_i, W_c, … (LSTM) or W_z, … (GRU) -> fused kernel,
    recurrent_kernel and bias with gate blocks in Keras 2 order (i, f, c, o / z, r, h)."""
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for tensor in tensors:
        match = _GATE_NAME.match(tensor.weight_name)
        if match:
            key = (match["scope"] or "", match["role"])
            parts.setdefault(key, {})[match["gate"]] = tensor
    fused: dict[int, Tensor] = {}
    absorbed: set[int] = set()
    for (scope, role), gates in parts.items():
        order = next((o for g, o in GATE_ORDERS if set(gates) == g), None)
        if order is None:
            continue
        pieces = [gates[g] for g in order]
        first = min(tensors.index(p) for p in pieces)
        shape = (*pieces[0].shape[:-1], sum(p.shape[-1] for p in pieces))
        fused[first] = Tensor(
            weight_name=f"{scope}/{role}" if scope else role,
            role=role,
            trainable=pieces[0].trainable,
            source_name=",".join(p.source_name for p in pieces),
            shape=shape,
            dtype=pieces[0].dtype,
            load=_concatenated([p.load for p in pieces]),
            status=next((p.status for p in pieces if p.status != "ok"), "ok"),
        )
        absorbed.update(id(p) for p in pieces)
    out = []
    for index, tensor in enumerate(tensors):
        if index in fused:
            out.append(fused[index])
        if id(tensor) not in absorbed:
            out.append(tensor)
    return out


def _concatenated(loads):
    def load() -> np.ndarray:
        return np.concatenate([lo() for lo in loads], axis=-1)

    return load


def _optimizer_counts(f: h5py.File) -> tuple[int, int]:
    """Tensors and elements of the optimizer state, from dataset headers only (H5Ovisit
    follows hard links only; the low-level calls are ~4x cheaper than visititems)."""
    link = f.get("optimizer_weights", getlink=True)
    if not isinstance(link, h5py.HardLink):
        return 0, 0
    group = f["optimizer_weights"].id
    sizes: list[int] = []

    def visit(name: bytes, info: h5py.h5o.ObjInfo) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:
            sizes.append(h5py.h5d.open(group, name).get_space().get_simple_extent_npoints())

    h5py.h5o.visit(group, visit, info=True)
    return len(sizes), int(sum(sizes))


def _training_summary(training: dict | None) -> tuple[str | None, str | None]:
    if not training:
        return None, None
    opt = training.get("optimizer_config")
    optimizer = opt.get("class_name") if isinstance(opt, dict) else opt
    if isinstance(optimizer, str):
        optimizer = optimizer.split(">")[-1]  # Keras 2.11+ writes "Custom>Adam"
    loss = training.get("loss")
    if loss is not None and not isinstance(loss, str):
        loss = json.dumps(loss, sort_keys=True)
    return optimizer if isinstance(optimizer, str) else None, loss
