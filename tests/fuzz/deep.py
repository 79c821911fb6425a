"""Folder trees deeper than Python's recursion and longer than PATH_MAX: made and removed
through short relative paths (directory descriptors, folders lifted one level at a time).
`shutil.rmtree` recurses once per level, so neither the fuzz runner nor pytest may be left
to remove them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def nest(top: Path, name: str, levels: int, files_at: dict[int, tuple[str, bytes]]) -> None:
    """`levels` folders named `name`, each inside the last, under `top`; at each level of
    `files_at` a file (name, bytes) in that level's folder."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(1, levels + 1):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
            if level in files_at:
                file_name, data = files_at[level]
                out = os.open(file_name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.write(out, data)
                os.close(out)
    finally:
        os.close(fd)


def remove_tree(top: Path) -> None:
    """Remove `top` however deep: the folders inside each folder of `top` are lifted into
    `top` (paths stay short), then that folder is removed, until none is left."""
    if not top.is_dir():
        return
    lifted = 0
    while subfolders := [e.path for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]:
        for folder in subfolders:
            for entry in os.scandir(folder):
                if entry.is_dir(follow_symlinks=False):
                    lifted += 1
                    os.rename(entry.path, top / f".lifted{lifted}")
                else:
                    os.unlink(entry.path)
            os.rmdir(folder)
    shutil.rmtree(top)
