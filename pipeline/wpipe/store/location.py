"""Where a lake lives, apart from the lake itself: both the lake (`lake`) and the record of the
files wpipe wrote in it (`owned`) take one."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs


@dataclass(frozen=True)
class LakeLocation:
    """Where a lake lives: a local folder or a URI, with deltalake storage options. Picklable,
    so workers (local processes or a cluster) get it with their job."""

    root: str
    storage_options: dict[str, str] | None = None

    def table_uri(self, table: str) -> str:
        return f"{self.root.rstrip('/')}/{table}"

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, root path on it) for writing and reading data files."""
        if "://" not in self.root:
            return pafs.LocalFileSystem(), self.root
        fs, path = pafs.FileSystem.from_uri(self.root)
        return fs, path
