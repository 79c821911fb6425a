"""h5py, imported on its first use (PEP 562): `from wpipe.readers import lazy_h5py as h5py`.

Only processes that open files load it (~12 MB): an ingest's driver, whose workers read the
files, and every query command never do. After the first use its names are this module's
own, so a lookup costs what `h5py.File` does.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    import h5py

    globals().update({k: v for k, v in vars(h5py).items() if not k.startswith("__")})
    return getattr(h5py, name)
