"""Keras 0.x `save_weights` files (≤0.3.3), §1.2 step 4: no names, no architecture.

Sequential: root attribute `nb_layers`, groups `layer_{k}` with `nb_params` and datasets
`param_{p}`; Graph: root group `graph` with `nb_params` and `param_{p}`. Layers and weights are
known by position only, so every tensor's role is `unknown`.
"""

from __future__ import annotations

from wpipe.readers import h5safe
from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.base import Layer, Model, ModelReadError, Tensor

FORMAT = "h5-keras0"


def claims(f: h5py.File) -> bool:
    return "nb_layers" in f.attrs or (
        isinstance(f.get("graph", getlink=True), h5py.HardLink) and "nb_params" in f["graph"].attrs
    )


def read(f: h5py.File, where: str) -> Model:
    if "nb_layers" in f.attrs:
        groups = [(f"layer_{k}", f"layer_{k}") for k in range(_count(f, "nb_layers", where))]
        model_class = "Sequential"
    else:
        groups, model_class = [("graph", "graph")], "Graph"
    layers = []
    for path, key in groups:
        group = h5safe.child(f, key, where)
        if "nb_params" not in group.attrs:
            raise ModelReadError("not-keras", f"{where}: Keras 0.x group {key} has no nb_params")
        tensors = []
        for p in range(_count(group, "nb_params", where)):
            ds = h5safe.dataset(group, f"param_{p}", where)
            tensors.append(
                Tensor(
                    weight_name=f"param_{p}",
                    role="unknown",
                    trainable=True,
                    source_name=ds.name,
                    **h5safe.tensor_fields(ds, where),
                )
            )
        layers.append(Layer(path, path, None, None, True, tensors))
    return Model(where, FORMAT, None, None, model_class, None, None, layers)


def _count(obj: h5py.HLObject, name: str, where: str) -> int:
    """A count attribute, refusing one past what the file's own groups could hold."""
    try:
        count = int(obj.attrs[name])
    except (TypeError, ValueError):
        raise ModelReadError("corrupt", f"{where}: {name} is not a number") from None
    if not 0 <= count <= h5safe.MAX_NAMES:
        raise ModelReadError(
            "too-many-objects", f"{where}: {name} = {count:,} (limit {h5safe.MAX_NAMES:,})"
        )
    return count
