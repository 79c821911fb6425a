"""What every layer implementation receives, the registry they join, and why a pass stops."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Arrays = list[np.ndarray]


class Unsupported(Exception):
    """The pass cannot go on at this layer; `reason` becomes the layer's status row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Call:
    """One layer call: its config, weights, the file's Keras major version and call kwargs."""

    class_name: str
    config: dict[str, Any]
    weights: dict[str, np.ndarray]  # by canonical weight name (`kernel`, `forward/bias`)
    keras_major: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.config.get(key, default)
        return default if value is None else value

    def weight(self, *names: str) -> np.ndarray:
        """The first present weight among `names` (exact name, then name as a suffix)."""
        for name in names:
            if name in self.weights:
                return self.weights[name]
        for name in names:
            hits = [k for k in self.weights if k.endswith("/" + name)]
            if len(hits) == 1:
                return self.weights[hits[0]]
        raise Unsupported(f"{self.class_name}: weight {names[0]!r} not found in the file")

    def optional(self, *names: str) -> np.ndarray | None:
        try:
            return self.weight(*names)
        except Unsupported:
            return None

    def sub(self, prefix: str, config: dict[str, Any], class_name: str) -> Call:
        """The call of a wrapped layer whose weights sit under `prefix/` (or directly here)."""
        inner = {
            k[len(prefix) + 1 :]: v for k, v in self.weights.items() if k.startswith(prefix + "/")
        }
        return Call(class_name, config, inner or dict(self.weights), self.keras_major)


LayerFn = Callable[[Call, Arrays], Arrays | np.ndarray]
REGISTRY: dict[str, LayerFn] = {}


def layer(*class_names: str) -> Callable[[LayerFn], LayerFn]:
    """Register a layer implementation under its Keras class names (all generations)."""

    def register(fn: LayerFn) -> LayerFn:
        for name in class_names:
            REGISTRY[name] = fn
        return fn

    return register


def channels_first(call: Call) -> bool:
    fmt = call.get("data_format") or call.get("dim_ordering")
    return fmt in ("channels_first", "th")


def as_tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),) * n
