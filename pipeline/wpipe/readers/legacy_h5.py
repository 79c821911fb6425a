"""Legacy Keras HDF5: full models (`model_config` + `model_weights`) and `save_weights` files.

Written by Keras 1, Keras 2, tf.keras / tf_keras and Keras 3 (`.h5` path); keras_formats.md §3.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from wpipe.readers import h5safe, quantized
from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.base import Layer, Model, ModelReadError, Tensor
from wpipe.readers.keras_config import (
    LayerSpec,
    canonical_weight_name,
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
    for name in layer_names:
        group = h5safe.child(weights_root, name, where)
        weight_names = h5safe.name_list(group, "weight_names") or []
        spec = by_name.get(name)
        if spec is not None and spec.children is not None:
            layers.extend(_nested(group, weight_names, spec, name, True, where))
        elif spec is None and _sublayers(weight_names, name):
            layers.extend(_nested(group, weight_names, _unknown_model(name, weight_names),
                                  name, True, where))  # fmt: skip
        else:
            layers.append(_leaf(group, weight_names, name, name, spec, True, where))
    if "top_level_model_weights" in weights_root:
        group = h5safe.child(weights_root, "top_level_model_weights", where)
        names = h5safe.name_list(group, "weight_names") or []
        if names:
            layers.append(_leaf(group, names, "top_level_model_weights", "", None, True, where))

    n_opt_tensors, n_opt_params = _optimizer_counts(f)
    keras_version = h5safe.attr(weights_root, "keras_version") or h5safe.attr(f, "keras_version")
    backend = h5safe.attr(weights_root, "backend") or h5safe.attr(f, "backend")
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


def _sublayers(weight_names: list[str], name: str) -> list[str]:
    """The sublayer scopes of a nested model's group in a file without architecture: tf_keras
    names a nested model's variables by its sublayers (`enc_d1/kernel:0`), never by itself."""
    own = re.compile(re.escape(name) + r"(_\d+)?")
    scopes = [w.split("/", 1)[0] for w in weight_names if "/" in w]
    if not scopes or len(scopes) < len(weight_names) or any(own.fullmatch(s) for s in scopes):
        return []
    return list(dict.fromkeys(scopes))


def _unknown_model(name: str, weight_names: list[str]) -> LayerSpec:
    children = [LayerSpec(s, "", {}, True, None) for s in _sublayers(weight_names, name)]
    return LayerSpec(name, "", {}, True, children)


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
    mode = quantization_mode(spec.config) if spec else None
    layer_trainable = enclosing_trainable and (spec.trainable if spec else True)
    if spec and spec.inner is not spec.config and spec.inner.get("trainable") is False:
        layer_trainable = False
    tensors: list[Tensor] = []
    seen: set[str] = set()
    for full, parts in pairs:
        ds = h5safe.dataset(group, full, where)
        weight_name = canonical_weight_name(parts, name, class_name)
        unique, n = weight_name, 1
        while unique in seen:
            unique, n = f"{weight_name}_{n}", n + 1
        seen.add(unique)
        role = role_of(weight_name)
        tensors.append(
            Tensor(
                weight_name=unique,
                role=role,
                trainable=is_trainable(role, class_name, layer_trainable, mode),
                source_name=f"{group.name}/{full}",
                **h5safe.tensor_fields(ds, where),
            )
        )
    layout = _layout(spec)
    tensors = _fuse_keras1_gates(tensors)
    tensors = quantized.saved_order(tensors, mode)
    quantized.dequantize(tensors, mode, spec.config if spec else None)
    for tensor in tensors:
        if layout == "cudnn" or (layout == "theano" and tensor.role == "kernel"):
            tensor.layout = layout
    return Layer(
        layer_path=path,
        layer_name=name,
        class_name=class_name,
        config=spec.config if spec else None,
        trainable=layer_trainable,
        tensors=tensors,
    )


CUDNN_CLASSES = {"CuDNNLSTM", "CuDNNGRU"}
# Keras 1 saved non-fused recurrent layers gate by gate; Keras 2 concatenates in this order.
GATE_ORDERS = ({"i", "c", "f", "o"}, "ifco"), ({"z", "r", "h"}, "zrh")
_GATE_NAME = re.compile(
    r"^(?:(?P<scope>.+)/)?(?P<role>kernel|recurrent_kernel|bias)_(?P<gate>[a-z])$"
)


def _layout(spec: LayerSpec | None) -> str:
    if spec is None:
        return "keras"
    wrapped = spec.config.get("layer") if isinstance(spec.config.get("layer"), dict) else {}
    if spec.class_name in CUDNN_CLASSES or wrapped.get("class_name") in CUDNN_CLASSES:
        return "cudnn"
    if "onvolution" in spec.class_name and spec.inner.get("dim_ordering") == "th":
        return "theano"
    return "keras"


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
