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

from wpipe.readers import h5safe, quantized
from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.base import Layer, Model, Tensor
from wpipe.readers.keras_config import LayerSpec, is_trainable, model_tree
from wpipe.readers.roles import (
    UNKNOWN,
    class_of_group,
    positional_roles,
    rnn_class,
    to_snake_case,
)

CONTAINERS = ("layers/", "_layer_checkpoint_dependencies/")  # the latter: Keras 2.12–2.14
SKIPPED_ROOTS = ("optimizer", "metrics")
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


def read(
    files: list[h5py.File],
    where: str,
    fmt: str,
    config: dict | None,
    metadata: dict | None,
) -> Model:
    groups = collect_vars(files, where)
    container = _container(groups)
    model_class, specs = model_tree(config, where=where) if config else (None, [])
    if not specs:  # no architecture, or one without a layer list (subclassed, keras-hub)
        specs = _guess_specs(groups, container) + _attribute_specs(groups)
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
    quantized.dequantize_layers(layers, (metadata or {}).get("keras_version"), where)
    optimizer_sizes = [
        ds.size
        for p, g in groups.items()
        if p.startswith("optimizer")
        for ds in g.datasets.values()
    ]
    optimizer, loss = compile_fields(config)
    return Model(
        path=where,
        format=fmt,
        keras_version=(metadata or {}).get("keras_version"),
        backend=(metadata or {}).get("backend"),
        model_class=model_class,
        optimizer=optimizer,
        loss=loss,
        layers=layers,
        n_optimizer_tensors=len(optimizer_sizes),
        n_optimizer_params=int(sum(optimizer_sizes)),
        model_config=json.dumps(config) if config else None,
    )


def compile_fields(config: dict | None) -> tuple[str | None, str | None]:
    """(optimizer class, loss) from a Keras 3 config's `compile_config`."""
    compile_config = (config or {}).get("compile_config") or {}
    if not isinstance(compile_config, dict):
        return None, None
    optimizer = compile_config.get("optimizer")
    if isinstance(optimizer, dict):
        optimizer = optimizer.get("class_name")
    loss = compile_config.get("loss")
    if loss is not None and not isinstance(loss, str):
        loss = json.dumps(loss, sort_keys=True)
    return (optimizer if isinstance(optimizer, str) else None), loss


def _guess_specs(groups: dict[str, VarsGroup], prefix: str) -> list[LayerSpec]:
    """Layer specs for the groups of a container without architecture: names from the `name`
    attributes (Keras ≥3.6), classes from Keras's snake_case group names
    (`batch_normalization_1`), None where the group name is no Keras class."""
    children = sorted(
        {p[len(prefix) :].split("/", 1)[0] for p in groups if p.startswith(prefix)},
        key=lambda c: (_UNIQUE_SUFFIX.sub("", c), int(c.rsplit("_", 1)[1]) if
                       _UNIQUE_SUFFIX.search(c) else -1),
    )  # fmt: skip
    return [_guess_spec(groups, f"{prefix}{child}", class_of_group(child)) for child in children]


def _attribute_specs(groups: dict[str, VarsGroup]) -> list[LayerSpec]:
    """Sublayers a subclassed model holds in attributes (`bn/vars` at the root, Keras 3): the
    attribute name is the user's, so it says nothing of the class."""
    tops = {p.split("/", 1)[0] for p in groups if p}
    skipped = {c.rstrip("/") for c in CONTAINERS} | set(SKIPPED_ROOTS)
    return [_guess_spec(groups, top, None) for top in sorted(tops - skipped)]


def _guess_spec(groups: dict[str, VarsGroup], root: str, class_name: str | None) -> LayerSpec:
    entry = groups.get(root)
    name = entry.name if entry and entry.name else root.rsplit("/", 1)[-1]
    if any(p.startswith(f"{root}/layers/") for p in groups):  # a nested model
        nested = _guess_specs(groups, f"{root}/layers/")
        return LayerSpec(name, class_name or "", {}, True, nested, group=root)
    config: dict = {}
    wrapped = next((groups[p] for p in (f"{root}/forward_layer", f"{root}/layer",
                                        f"{root}/forward_layer/cell", f"{root}/layer/cell")
                    if p in groups and groups[p].datasets), None)  # fmt: skip
    if wrapped is not None:
        shapes = [tuple(ds.shape) for _, ds in sorted(wrapped.datasets.items())]
        inner = class_of_group((wrapped.name or "").removeprefix("forward_"))
        if wrapped.path.endswith("/cell"):
            inner = rnn_class(shapes) or inner
        elif inner is None and 2 <= len(shapes[0]) <= 5:
            # a user-named wrapped layer: its kernel's rank tells Dense from ConvND
            inner = "Dense" if len(shapes[0]) == 2 else f"Conv{len(shapes[0]) - 2}D"
        config = {"layer": {"class_name": inner, "config": {}}}
    elif class_name in ("LSTM", "GRU", "SimpleRNN") and f"{root}/cell" in groups:
        cell = groups[f"{root}/cell"]
        shapes = [tuple(ds.shape) for _, ds in sorted(cell.datasets.items())]
        class_name = rnn_class(shapes) or class_name
    return LayerSpec(name, class_name or "", config, True, None, group=root)


_UNIQUE_SUFFIX = re.compile(r"_\d+$")


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
        base = to_snake_case(spec.class_name)
        k = counters.get(base, 0)
        counters[base] = k + 1
        group = by_name.get(spec.name) or (base if k == 0 else f"{base}_{k}")
        root = spec.group if spec.group is not None else f"{prefix}{group}"
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
            _layer(layer_path, spec.name, spec.class_name or None, spec.config, trainable,
                   owned, root, where)
        )  # fmt: skip
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
    modes = set()
    owned = sorted(owned, key=lambda g: _sub_key(g.path[len(root) :]))
    for group in owned:
        relative = [p for p in group.path[len(root) :].split("/") if p]
        owner_class, owner_config = _owner(class_name, config, relative)
        scopes = [s for s in (_scope(part, group) for part in relative) if s]
        datasets = [group.datasets[i] for i in sorted(group.datasets)]
        roles, mode = positional_roles(
            owner_class,
            owner_config,
            [tuple(int(d) for d in ds.shape) for ds in datasets],
            [h5safe.logical_dtype(ds) for ds in datasets],
        )
        modes.add(mode)
        for position, (index, ds) in enumerate(zip(sorted(group.datasets), datasets, strict=True)):
            role = roles[position] if roles else UNKNOWN
            weight_name = "/".join([*scopes, role if role != UNKNOWN else str(index)])
            tensors.append(
                Tensor(
                    weight_name=weight_name,
                    role=role,
                    trainable=is_trainable(role, owner_class or class_name, trainable, mode),
                    source_name=ds.name,
                    **h5safe.tensor_fields(ds, where),
                )
            )
    quantized.mark(tensors, next((m for m in modes if m), None))
    return Layer(layer_path, name, class_name, config or None, trainable, tensors)


def _sub_key(relative: str) -> tuple:
    parts = [p for p in relative.split("/") if p]
    return (len(parts), [SUB_ORDER.get(p.lstrip("_"), 9) for p in parts], parts)


def _owner(class_name: str | None, config: dict, relative: list[str]) -> tuple[str | None, dict]:
    """Class and config of the object owning a `vars` group below a layer (None: unknown)."""
    for part in relative:
        part = part.lstrip("_")
        if part in MHA_SCOPES:  # MultiHeadAttention's (or a keras-hub block's) projections
            class_name = "EinsumDense"
            config = {"use_bias": config["use_bias"]} if "use_bias" in config else {}
        elif class_name is None:
            continue
        elif part == "cell":
            class_name = class_name if class_name.endswith("Cell") else f"{class_name}Cell"
        elif part in ("forward_layer", "backward_layer", "layer"):
            key = (
                "backward_layer"
                if part == "backward_layer" and "backward_layer" in config
                else "layer"
            )
            sub = config.get(key) if isinstance(config.get(key), dict) else {}
            class_name, config = sub.get("class_name"), sub.get("config") or {}
        else:
            class_name, config = None, {}
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
