"""Bounded JSON: size, nesting depth and number of containers checked before parsing.

`json.loads` recurses once per nesting level (a 100,000-deep index raises RecursionError) and
builds ~100 bytes of Python objects per small JSON value (a 58 MB config of tiny objects took
3.6 GB). So the text is measured first, without recursion and without building objects: its
brackets outside strings are counted with numpy, giving the depth and the container count.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from wpipe.readers.base import ModelReadError

MAX_JSON_BYTES = 32 << 20  # the largest real Keras configs we know are a few MB
MAX_DEPTH = 200  # Keras configs nest a few dozen levels (nested models, wrappers, dtypes)
MAX_CONTAINERS = 2_000_000  # objects and arrays: ~ 200 MB of Python objects at most
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def loads(raw: str | bytes, what: str, where: str) -> Any:
    """The parsed value, or a `bad-json` ModelReadError naming `what` and the bound broken."""
    data = raw.encode("utf-8", errors="replace") if isinstance(raw, str) else raw
    if len(data) > MAX_JSON_BYTES:
        raise _error(where, what, f"is {len(data):,} bytes (limit {MAX_JSON_BYTES:,})")
    depth, containers = measure(data)
    if depth > MAX_DEPTH:
        raise _error(where, what, f"nests {depth:,} levels deep (limit {MAX_DEPTH})")
    if containers > MAX_CONTAINERS:
        limit = f"limit {MAX_CONTAINERS:,}"
        raise _error(where, what, f"has {containers:,} objects and arrays ({limit})")
    try:
        return json.loads(data.decode("utf-8", errors="replace"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _error(where, what, f"is not valid JSON ({exc})") from None


def measure(data: bytes) -> tuple[int, int]:
    """(maximum nesting depth, number of objects and arrays) of JSON text, strings ignored."""
    bare = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    step = np.zeros(bare.size, dtype=np.int8)
    step[(bare == ord("{")) | (bare == ord("["))] = 1
    step[(bare == ord("}")) | (bare == ord("]"))] = -1
    opened = int((step == 1).sum())
    if not opened:
        return 0, 0
    return int(np.cumsum(step, dtype=np.int64).max()), opened


def _error(where: str, what: str, reason: str) -> ModelReadError:
    return ModelReadError("bad-json", f"{where}: {what} {reason}")
