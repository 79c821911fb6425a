"""Keras native weights store (`model.weights.h5` inside `.keras`, `.weights.h5`, shards).

Each object's variables are datasets `0`, `1`, … in a group `<attribute path>/vars`
(keras_formats.md §4.3). With an architecture, paths are mapped back to layers by the
`vars` group's `name` attribute (Keras ≥3.6) or by Keras's snake_case container naming, and
variable indices to roles by layer class; without one, every `vars` group becomes a layer named
by its path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import h5py

from wpipe.readers import h5safe
from wpipe.readers.base import Layer, Model, Tensor
from wpipe.readers.keras_config import LayerSpec, is_trainable, model_tree

CONTAINERS = ("layers/", "_layer_checkpoint_dependencies/")  # the latter: Keras 2.12–2.14
SKIPPED_ROOTS = ("optimizer", "metrics")

_KERNEL_BIAS = ("kernel", "bias")
_RNN_CELL = ("kernel", "recurrent_kernel", "bias")
ROLES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
         "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D"),
        _KERNEL_BIAS,
    ),
    **dict.fromkeys(
        ("LSTMCell", "GRUCell", "SimpleRNNCell", "ConvLSTM1DCell", "ConvLSTM2DCell",
         "ConvLSTM3DCell"),
        _RNN_CELL,
    ),
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "Embedding": ("embeddings",),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "LayerNormalization": ("gamma", "beta"),
    "GroupNormalization": ("gamma", "beta"),
    "PReLU": ("alpha",),
    "Normalization": ("mean", "variance", "count"),
}  # fmt: skip
# Sub-objects in the order legacy files list their variables.
SUB_ORDER = {"forward_layer": 0, "backward_layer": 1, "query_dense": 0, "key_dense": 1,
             "value_dense": 2, "output_dense": 3}  # fmt: skip
MHA_SCOPES = {"query_dense": "query", "key_dense": "key", "value_dense": "value",
              "output_dense": "attention_output"}  # fmt: skip


@dataclass
class VarsGroup:
    path: str  # e.g. "layers/bidirectional/forward_layer/cell" (without the trailing /vars)
    name: str | None  # the object's name (attribute `name`, Keras ≥3.6)
    datasets: dict[int, h5py.Dataset] = field(default_factory=dict)


def collect_vars(files: Iterable[h5py.File], where: str) -> dict[str, VarsGroup]:
    """Every `…/vars` group across one file or several shards, datasets merged by index."""
    groups: dict[str, VarsGroup] = {}
    for f in files:
        for key, group in _vars_groups(f, where):
            path = key[: -len("vars")].rstrip("/")
            entry = groups.setdefault(path, VarsGroup(path, h5safe.attr(group, "name")))
            for index in group:
                if not index.isdigit():
                    continue
                entry.datasets[int(index)] = h5safe.dataset(group, index, where)
    return groups


def _vars_groups(f: h5py.File, where: str) -> list[tuple[str, h5py.Group]]:
    """(path, group) of every group named `vars` (hard links only), in visiting order."""
    return h5safe.groups_named(f, "vars", where)


def to_snake_case(name: str) -> str:
    """Keras's keras/src/utils/naming.py rule: `Conv2DTranspose` -> `conv2d_transpose`."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def read(
    files: list[h5py.File],
    where: str,
    fmt: str,
    config: dict | None,
    metadata: dict | None,
) -> Model:
    groups = collect_vars(files, where)
    container = _container(groups)
    model_class, specs = model_tree(config) if config else (None, _guess_specs(groups, container))
    layers: list[Layer] = []
    claimed: set[str] = set()
    if specs:
        layers.extend(_map_container(groups, container, specs, "", True, claimed, where))
    for path in sorted(groups):  # anything the architecture did not explain, by its path
        top = path.split("/", 1)[0]
        if path in claimed or top in SKIPPED_ROOTS or not groups[path].datasets:
            continue
        layers.append(
            _layer(path or "vars", path or "vars", None, {}, True, [groups[path]], "", where)
        )
    optimizer_sizes = [
        ds.size
        for p, g in groups.items()
        if p.startswith("optimizer")
        for ds in g.datasets.values()
    ]
    compile_config = (config or {}).get("compile_config") or {}
    optimizer = compile_config.get("optimizer")
    if isinstance(optimizer, dict):
        optimizer = optimizer.get("class_name")
    loss = compile_config.get("loss")
    if loss is not None and not isinstance(loss, str):
        loss = json.dumps(loss, sort_keys=True)
    return Model(
        path=where,
        format=fmt,
        keras_version=(metadata or {}).get("keras_version"),
        backend=(metadata or {}).get("backend"),
        model_class=model_class,
        optimizer=optimizer if isinstance(optimizer, str) else None,
        loss=loss,
        layers=layers,
        n_optimizer_tensors=len(optimizer_sizes),
        n_optimizer_params=int(sum(optimizer_sizes)),
        model_config=json.dumps(config) if config else None,
    )


KNOWN_CLASSES = {
    to_snake_case(c): c
    for c in (*ROLES, "LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
              "Bidirectional", "TimeDistributed", "MultiHeadAttention", "InputLayer")
}  # fmt: skip
_UNIQUE_SUFFIX = re.compile(r"_\d+$")


def _guess_class(snake_name: str | None) -> str | None:
    if not snake_name:
        return None
    return KNOWN_CLASSES.get(snake_name) or KNOWN_CLASSES.get(_UNIQUE_SUFFIX.sub("", snake_name))


def _guess_specs(groups: dict[str, VarsGroup], prefix: str) -> list[LayerSpec]:
    """Layer specs for a weights file without architecture: names from the `name` attributes
    (Keras ≥3.6), classes from Keras's snake_case group names (`batch_normalization_1`)."""
    children = sorted(
        {p[len(prefix) :].split("/", 1)[0] for p in groups if p.startswith(prefix)},
        key=lambda c: (_UNIQUE_SUFFIX.sub("", c), int(c.rsplit("_", 1)[1]) if
                       _UNIQUE_SUFFIX.search(c) else -1),
    )  # fmt: skip
    specs = []
    for child in children:
        root = f"{prefix}{child}"
        entry = groups.get(root)
        name = entry.name if entry and entry.name else child
        if any(p.startswith(f"{root}/layers/") for p in groups):
            nested = _guess_specs(groups, f"{root}/layers/")
            specs.append(LayerSpec(name, "Functional", {}, True, nested))
            continue
        class_name = _guess_class(child)
        config: dict = {}
        inner = groups.get(f"{root}/forward_layer") or groups.get(f"{root}/layer")
        if inner is not None:
            inner_class = _guess_class((inner.name or "").removeprefix("forward_"))
            kernel = inner.datasets.get(0)
            if inner_class is None and kernel is not None and 2 <= kernel.ndim <= 5:
                # a user-named wrapped layer: its kernel's rank tells Dense from ConvND
                inner_class = "Dense" if kernel.ndim == 2 else f"Conv{kernel.ndim - 2}D"
            config = {"layer": {"class_name": inner_class, "config": {}}}
        specs.append(LayerSpec(name, class_name or child, config, True, None))
    return specs


def _container(groups: dict[str, VarsGroup]) -> str:
    for prefix in CONTAINERS:
        if any(p.startswith(prefix) for p in groups):
            return prefix
    return CONTAINERS[0]


def _map_container(
    groups: dict[str, VarsGroup],
    prefix: str,
    specs: list[LayerSpec],
    path_prefix: str,
    enclosing_trainable: bool,
    claimed: set[str],
    where: str,
) -> list[Layer]:
    """Match a container's config entries to their groups, by `name` attr or by snake_case."""
    children = {p[len(prefix) :].split("/", 1)[0] for p in groups if p.startswith(prefix)}
    by_name = {
        groups[f"{prefix}{c}"].name: c
        for c in children
        if f"{prefix}{c}" in groups and groups[f"{prefix}{c}"].name
    }
    counters: dict[str, int] = {}
    layers: list[Layer] = []
    for spec in specs:
        base = to_snake_case(spec.class_name.split(">")[-1])
        k = counters.get(base, 0)
        counters[base] = k + 1
        group = by_name.get(spec.name) or (base if k == 0 else f"{base}_{k}")
        root = f"{prefix}{group}"
        layer_path = f"{path_prefix}{spec.name}"
        trainable = enclosing_trainable and spec.trainable
        if spec.children is not None:
            claimed.add(root)
            layers.extend(
                _map_container(groups, f"{root}/layers/", spec.children, f"{layer_path}/",
                               trainable, claimed, where)
            )  # fmt: skip
            continue
        owned = [g for p, g in groups.items() if p == root or p.startswith(f"{root}/")]
        claimed.update(g.path for g in owned)
        layers.append(
            _layer(
                layer_path, spec.name, spec.class_name, spec.config, trainable, owned, root, where
            )
        )
    return layers


def _layer(
    layer_path: str,
    name: str,
    class_name: str | None,
    config: dict,
    trainable: bool,
    owned: list[VarsGroup],
    root: str,
    where: str,
) -> Layer:
    tensors: list[Tensor] = []
    owned = sorted(owned, key=lambda g: _sub_key(g.path[len(root) :]))
    for group in owned:
        relative = [p for p in group.path[len(root) :].split("/") if p]
        owner_class, owner_config = _owner(class_name, config, relative)
        scopes = [s for s in (_scope(part, group) for part in relative) if s]
        roles = _roles(owner_class, owner_config, len(group.datasets))
        for position, index in enumerate(sorted(group.datasets)):
            ds = group.datasets[index]
            role = roles[position] if roles else str(index)
            weight_name = "/".join([*scopes, role])
            tensors.append(
                Tensor(
                    weight_name=weight_name,
                    role=role if roles else "unknown",
                    trainable=is_trainable(role, owner_class or class_name, trainable),
                    source_name=ds.name,
                    shape=tuple(int(d) for d in ds.shape),
                    dtype=h5safe.logical_dtype(ds),
                    load=h5safe.lazy_array(ds, where),
                    status=h5safe.tensor_status(ds, where),
                )
            )
    return Layer(layer_path, name, class_name, config or None, trainable, tensors)


def _sub_key(relative: str) -> tuple:
    parts = [p for p in relative.split("/") if p]
    return (len(parts), [SUB_ORDER.get(p.lstrip("_"), 9) for p in parts], parts)


def _owner(class_name: str | None, config: dict, relative: list[str]) -> tuple[str | None, dict]:
    """Class and config of the object owning a `vars` group below a layer."""
    for part in relative:
        part = part.lstrip("_")
        if class_name is None:
            return None, {}
        if part == "cell":
            class_name = class_name if class_name.endswith("Cell") else f"{class_name}Cell"
        elif part in ("forward_layer", "backward_layer", "layer"):
            key = (
                "backward_layer"
                if part == "backward_layer" and "backward_layer" in config
                else ("layer")
            )
            sub = config.get(key) if isinstance(config.get(key), dict) else {}
            class_name, config = sub.get("class_name"), sub.get("config") or {}
        elif part in MHA_SCOPES:
            class_name, config = "EinsumDense", {"use_bias": config.get("use_bias", True)}
        else:
            return None, {}
    return class_name, config


def _scope(part: str, group: VarsGroup) -> str | None:
    """How a sub-object's attribute name appears in weight_name (legacy-file spelling)."""
    bare = part.lstrip("_")
    if bare in ("cell", "layer"):
        return None
    if bare in ("forward_layer", "backward_layer"):
        return bare.split("_")[0]
    if bare in MHA_SCOPES:
        return MHA_SCOPES[bare]
    return bare


def _roles(class_name: str | None, config: dict, count: int) -> tuple[str, ...] | None:
    """Variable roles by position, dropping those the config switches off."""
    roles = ROLES.get(class_name or "")
    if roles is None:
        return None
    drop = set()
    if config.get("use_bias") is False:
        drop.add("bias")
    if config.get("scale") is False or config.get("rms_scaling"):
        drop.add("gamma")
    if config.get("center") is False or config.get("rms_scaling"):
        drop.add("beta")
    kept = tuple(r for r in roles if r not in drop)
    return kept if len(kept) == count else None
