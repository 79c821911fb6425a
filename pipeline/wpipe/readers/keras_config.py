"""Keras architecture JSON (all generations) -> a tree of layer specs, plus weight-name rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wpipe.readers import jsonsafe
from wpipe.readers.base import ModelReadError
from wpipe.readers.safefile import open_regular

MODEL_CLASSES = {"Sequential", "Functional", "Model"}
# Entries of one model's layer list, as h5safe.MAX_NAMES bounds the weights file's layer names:
# a 20 MB config of 10 million zeros is refused here, before it is walked, stored and loaded.
MAX_LAYERS = 100_000

# Variables Keras creates non-trainable, whatever the layer's `trainable` flag says
# (quantization parameters included: Keras's quantized layers create them trainable=False).
NON_TRAINABLE_ROLES = {"moving_mean", "moving_variance", "kernel_scale", "kernel_zero", "g_idx",
                       "embeddings_scale", "embeddings_zero", "awq_scales"}  # fmt: skip
# Keras's quantized layers store their kernel (int8 codes) non-trainable; bias stays trainable.
QUANTIZED_CODES = {"kernel", "embeddings"}
QUANTIZED_POLICIES = {"QuantizedDTypePolicy", "Int4DTypePolicy", "QuantizedFloat8DTypePolicy",
                      "GPTQDTypePolicy", "AWQDTypePolicy"}  # fmt: skip
# Variables Keras 3 leaves unnamed (`variable`) get their class's documented role, and a
# DepthwiseConv kernel is `depthwise_kernel` whichever Keras wrote it (Keras 3 says `kernel`).
UNNAMED_ROLE = {"LayerScale": "gamma"}
RENAMED_ROLE = {("DepthwiseConv1D", "kernel"): "depthwise_kernel",
                ("DepthwiseConv2D", "kernel"): "depthwise_kernel",
                # a GPTQ/AWQ EinsumDense names its kernel_zero `zero_point` (Dense does not)
                ("EinsumDense", "zero_point"): "kernel_zero"}  # fmt: skip
NON_TRAINABLE_BY_CLASS = {"Normalization": {"mean", "variance", "count"}}

# Keras 1 weight suffixes (`dense_1_W`) and BatchNormalization's misnamed variance.
ROLE_ALIASES = {
    "W": "kernel",
    "U": "recurrent_kernel",
    "b": "bias",
    "running_mean": "moving_mean",
    "running_std": "moving_variance",
}
_KERAS1_GATE = re.compile(r"^([WUb])_([a-z])$")
_CELL_SCOPE = re.compile(r"^(cell|[a-z_]*_cell(_\d+)?)$")
_WEIGHT_SUFFIX = re.compile(r":\d+(_\d+)?$")
CONFIG_FIELDS = {
    "units": ("units", "output_dim"),
    "filters": ("filters", "nb_filter"),
    "activation": ("activation",),
}


@dataclass
class LayerSpec:
    name: str
    class_name: str
    config: dict[str, Any]
    trainable: bool
    children: list[LayerSpec] | None  # set for a nested model
    group: str | None = None  # its group in a native weights file, when known from the file

    @property
    def inner(self) -> dict[str, Any]:
        return inner_config(self.config)


def inner_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config that describes the computation: a wrapper's wrapped layer, else itself."""
    wrapped = config.get("layer")
    if isinstance(wrapped, dict) and isinstance(wrapped.get("config"), dict):
        return wrapped["config"]
    return config


def parse_json(raw: str | bytes | None, what: str, where: str) -> dict[str, Any] | None:
    """A JSON object, parsed within jsonsafe's size and nesting bounds."""
    if raw is None:
        return None
    value = jsonsafe.loads(raw, what, where)
    if not isinstance(value, dict):
        raise ModelReadError("bad-json", f"{where}: {what} is not a JSON object")
    return value


def read_json_file(path: Path, what: str, where: str) -> dict[str, Any]:
    """A JSON object from a regular file beside the model, within jsonsafe's bounds."""
    with open_regular(path, where) as fh:
        raw = fh.read(jsonsafe.MAX_JSON_BYTES + 1)
    value = parse_json(raw, what, where)
    return value if value is not None else {}


def model_tree(
    model_config: dict[str, Any], raw: str | None = None, where: str = ""
) -> tuple[str | None, list[LayerSpec]]:
    """The model's class name and its top-level layer specs (nested models expanded).
    `raw`: the config's JSON text, when at hand: a text that never spells shared_object_id
    (nor any \\u escape, which could) has none to drop (no walk over the whole config).
    A layer list longer than MAX_LAYERS is a `too-many-objects` ModelReadError."""
    _check_layer_lists(model_config, where)
    if not isinstance(raw, str) or OBJECT_ID in raw or "\\u" in raw:
        model_config = _without_object_ids(model_config)
    spec = _spec(model_config, "model")
    return spec.class_name, spec.children or []


OBJECT_ID = "shared_object_id"


def _check_layer_lists(entry: Any, where: str) -> None:
    """Every (nested) model's layer list within MAX_LAYERS, walked without recursion."""
    todo = [entry]
    while todo:
        config = todo.pop().get("config")
        layers = config.get("layers") if isinstance(config, dict) else config
        if not isinstance(layers, list):
            continue
        if len(layers) > MAX_LAYERS:
            raise ModelReadError("too-many-objects", f"{where}: its architecture lists "
                                 f"{len(layers):,} layers (limit {MAX_LAYERS:,})")  # fmt: skip
        todo += [e for e in layers if isinstance(e, dict)]


def _without_object_ids(value: Any) -> Any:
    """Drop Keras 3's `shared_object_id` (a Python id(): differs on every save of one model)."""
    if isinstance(value, dict):
        return {k: _without_object_ids(v) for k, v in value.items() if k != OBJECT_ID}
    if isinstance(value, list):
        return [_without_object_ids(v) for v in value]
    return value


def _spec(entry: dict[str, Any], fallback_name: str) -> LayerSpec:
    # A registered custom class is `Package>Name` in some writers, `Name` in others.
    class_name = str(entry.get("class_name", "")).rsplit(">", 1)[-1]
    config = entry.get("config")
    if isinstance(config, list):  # Keras 1 and 2.0–2.2.2 Sequential: a bare list of layers
        config = {"layers": config}
    if not isinstance(config, dict):
        config = {}
    name = entry.get("name") or config.get("name") or fallback_name
    children = None
    if class_name in MODEL_CLASSES or isinstance(config.get("layers"), list):
        entries = [e for e in config.get("layers", []) if isinstance(e, dict)]
        if class_name == "Sequential":  # Sequential.layers never lists its InputLayer
            entries = [e for e in entries if e.get("class_name") != "InputLayer"]
        children = [_spec(e, f"{name}_{i}") for i, e in enumerate(entries)]
        config = {k: v for k, v in config.items() if k != "layers"}
    trainable = config.get("trainable", True) is not False
    return LayerSpec(str(name), class_name, config, trainable, children)


def layer_fields(config: dict[str, Any] | None) -> dict[str, Any]:
    """units / filters / activation / kernel_size from a layer config, across Keras generations."""
    inner = inner_config(config or {})
    out: dict[str, Any] = {}
    for field, keys in CONFIG_FIELDS.items():
        out[field] = next((inner[k] for k in keys if inner.get(k) is not None), None)
    if isinstance(out["activation"], dict):  # a serialized activation object
        out["activation"] = out["activation"].get("config", out["activation"].get("class_name"))
    if not isinstance(out["activation"], str):
        out["activation"] = None
    for field in ("units", "filters"):
        if not isinstance(out[field], int) or isinstance(out[field], bool):
            out[field] = None
    kernel = inner.get("kernel_size")
    if kernel is None and "nb_row" in inner:
        kernel = [inner["nb_row"], inner.get("nb_col", inner["nb_row"])]
    elif kernel is None and "filter_length" in inner:
        kernel = [inner["filter_length"]]
    if isinstance(kernel, int):
        kernel = [kernel]
    out["kernel_size"] = (
        [int(k) for k in kernel]
        if isinstance(kernel, list) and all(isinstance(k, int) for k in kernel)
        else None
    )
    return out


def canonical_weight_name(parts: list[str], layer_name: str, class_name: str | None) -> str:
    """Name of a variable within its layer, the same whichever Keras wrote it.

    `parts` is the variable's stored name split on `/`. Drops `:0`, the layer's own scope,
    RNN cell scopes and TimeDistributed's inner scope; Bidirectional halves become
    `forward`/`backward`; Keras 1 suffixes become Keras 2 roles (`dense_1_W` -> `kernel`).
    """
    last = _WEIGHT_SUFFIX.sub("", parts[-1])
    scopes = parts[:-1]
    # Keras 3 prefixes the model's name (`model/dense/kernel`); TF1 uniquified (`dense_1_1`).
    own_scope = re.compile(re.escape(layer_name) + r"(_\d+)?")
    own = next((i for i, scope in enumerate(scopes) if own_scope.fullmatch(scope)), None)
    if own is not None:
        scopes = scopes[own + 1 :]
        while scopes and own_scope.fullmatch(scopes[0]):  # `shared/shared/…`, TF1's repeats
            scopes = scopes[1:]
    if not scopes and last.startswith(layer_name + "_"):
        last = last[len(layer_name) + 1 :]
    out: list[str] = []
    for scope in scopes:
        if _CELL_SCOPE.fullmatch(scope):
            continue
        if scope.startswith("forward"):
            out.append("forward")
        elif scope.startswith("backward"):
            out.append("backward")
        elif class_name != "TimeDistributed":
            out.append(scope)
    gate = _KERAS1_GATE.match(last)
    if gate:
        last = f"{ROLE_ALIASES[gate.group(1)]}_{gate.group(2)}"
    return "/".join([*out, canonical_role(class_name, ROLE_ALIASES.get(last, last))])


def canonical_role(class_name: str | None, role: str) -> str:
    """One role for the same variable whichever Keras named it (see RENAMED_ROLE)."""
    if class_name in UNNAMED_ROLE and re.fullmatch(r"variable(_\d+)?", role):
        return UNNAMED_ROLE[class_name]
    return RENAMED_ROLE.get((class_name or "", role), role)


def quantization_mode(config: dict[str, Any] | None) -> str | None:
    """`int8`, `int4`, `float8`, ... from a layer config's dtype policy; None if not quantized."""
    # "int4/128" (block size), "gptq/4/128" (bits, group size), "int8_from_float32" (Keras
    # 3.0-3.5 policy names)
    return _policy_mode(config).split("/")[0].split("_from_")[0] or None


def quantization_bits(config: dict[str, Any] | None) -> int | None:
    """The weight bits a GPTQ/AWQ policy names (`gptq/4/128` -> 4); None if it names none."""
    parts = _policy_mode(config).split("_from_")[0].split("/")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def _policy_mode(config: dict[str, Any] | None) -> str:
    policy = inner_config(config or {}).get("dtype")
    if not isinstance(policy, dict) or policy.get("class_name") not in QUANTIZED_POLICIES:
        return ""
    inner = policy.get("config") if isinstance(policy.get("config"), dict) else {}
    return str(inner.get("mode") or inner.get("name") or "")


def role_of(weight_name: str) -> str:
    """`kernel` for `forward/kernel` and for Keras 1's per-gate `kernel_i`."""
    last = weight_name.rsplit("/", 1)[-1]
    base, _, gate = last.rpartition("_")
    if base in ("kernel", "recurrent_kernel", "bias") and len(gate) == 1:
        return base
    return last


def is_trainable(
    role: str, class_name: str | None, layer_trainable: bool, quantization: str | None = None
) -> bool:
    if quantization == "float8":  # Keras trains its kernel, scales and amax histories
        return layer_trainable
    if not layer_trainable or role in NON_TRAINABLE_ROLES:
        return False
    if quantization and role in QUANTIZED_CODES:
        return False
    if class_name is None:  # no architecture: Normalization's statistics go by their names
        return role not in NON_TRAINABLE_BY_CLASS["Normalization"]
    return role not in NON_TRAINABLE_BY_CLASS.get(class_name, set())
