"""One variable listed under several layers is one variable (a tied weight).

Keras's legacy HDF5 writers save each layer's `weights`, so a variable two layers hold is
written once per layer: T5's shared embedding `shared/shared/embeddings:0` under `shared`,
`encoder` and `decoder`; a layer shared by two nested models under both. Keras's
`count_params()` counts it once (it de-duplicates by identity). Here the first listing keeps
the tensor and the others become its `tied_sources`.

The same stored name, shape, dtype and values are the evidence. Equal values alone could join
two distinct fresh variables that happen to be constant (zero biases of two layers a user
named alike in two nested models), so a constant tensor is joined only when its listing is
foreign to its group (the variable's scopes do not name the group, while the group's own
variables do: T5's encoder listing the shared table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wpipe.readers.base import Layer, Tensor
from wpipe.readers.scopes import below_own_scope

SLAB_ELEMENTS = 1 << 20  # compared a slab of rows at a time: two slabs in memory, never more


@dataclass
class Listing:
    """A tensor, and how its group lists it."""

    layer: Layer
    tensor: Tensor
    stored: str  # the variable's name as its group's weight_names lists it
    group_name: str
    group_names: list[str]  # every name the group lists

    def foreign(self) -> bool:
        """The group's own variables carry its name, this one does not (asked of repeats
        only: most files list no variable twice)."""
        own = {w for w in self.group_names if _carries(self.group_name, w)}
        return bool(own) and self.stored not in own


def _carries(group_name: str, stored: str) -> bool:
    scopes = stored.split("/")[:-1]
    return below_own_scope(group_name, scopes) != scopes


def join(listings: list[Listing]) -> set[int]:
    """Drop every repeated listing of a variable from its layer and record it on the first;
    the ids of the layers this left without tensors (they only listed tied variables)."""
    first: dict[tuple, Tensor] = {}
    emptied: set[int] = set()
    for listing in listings:
        tensor = listing.tensor
        key = (listing.stored, tensor.shape, tensor.dtype)
        earlier = first.get(key)
        if earlier is None or not _same_variable(earlier, tensor, listing.foreign):
            first.setdefault(key, tensor)
            continue
        earlier.tied_sources = (*earlier.tied_sources, tensor.source_name)
        listing.layer.tensors = [t for t in listing.layer.tensors if t is not tensor]
        if not listing.layer.tensors:
            emptied.add(id(listing.layer))
    return emptied


def _same_variable(a: Tensor, b: Tensor, foreign: Callable[[], bool]) -> bool:
    if a.status != "ok" or b.status != "ok":
        return False
    da, db = getattr(a.load, "dataset", None), getattr(b.load, "dataset", None)
    if da is None or db is None:
        return False
    equal, constant = _compare(da, db, a.shape)
    return equal and (not constant or foreign())


def _compare(da, db, shape: tuple[int, ...]) -> tuple[bool, bool]:
    """(values equal, every value the same), reading both datasets a slab of rows at a time."""
    if not shape:
        va, vb = np.asarray(da[()]), np.asarray(db[()])
        return bool(np.array_equal(va, vb, equal_nan=True)), True
    row = max(1, int(np.prod(shape[1:])))
    step = max(1, SLAB_ELEMENTS // row)
    lo = hi = None
    for start in range(0, shape[0], step):
        va, vb = da[start : start + step], db[start : start + step]
        if va.dtype.kind not in "fiub":  # bfloat16 is stored opaque: compare its bytes
            if va.tobytes() != vb.tobytes():
                return False, False
            continue
        if not np.array_equal(va, vb, equal_nan=va.dtype.kind == "f"):
            return False, False
        if va.size:
            lo = va.min() if lo is None else min(lo, va.min())
            hi = va.max() if hi is None else max(hi, va.max())
    return True, lo == hi
