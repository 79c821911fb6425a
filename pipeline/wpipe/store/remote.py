"""Model saves on object storage (`s3://…`, through fsspec/s3fs): list them, fetch one.

The readers open local paths (h5py, zipfile), and every byte of a model is read anyway (its
SHA-256 and its weights), so a worker copies one save at a time to a local temporary folder,
reads it there and deletes it: one GET per object instead of one per HDF5 block, and the
local disk holds at most one save per running task (measured in docs/scale.md).

Which objects are saves is decided by the same rules as a local walk (`walk.walk`),
applied to a shadow of the listing: an empty local file per object, except that a shard index
gets its (small) content and a file whose name says nothing gets its first 8 bytes, which is
all those rules read. Credentials and the endpoint come from the standard AWS settings
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `~/.aws/config`, …), which s3fs and botocore read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from wpipe.core import extras
from wpipe.core.dblock import Protected
from wpipe.core.tags import MODEL_SUFFIXES
from wpipe.readers import lists_shards
from wpipe.readers.walk import walk
from wpipe.store.lake import Lake

# Saves fetched by one worker task land here (a fresh folder per task, removed afterwards).
TMP_ENV = "WPIPE_TMPDIR"
# The rules of the walk read at most this much of a file whose name is not a model's.
SNIFF_BYTES = 8
INDEX_LIMIT = 64 << 20  # a shard index larger than this is left for the reader to refuse


class StorageError(OSError):
    """Object storage could not be listed (no bucket, no credentials, no endpoint)."""


def is_url(path: str | os.PathLike) -> bool:
    """True for `scheme://…` locations other than plain local files."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def filesystem(url: str) -> Any:
    """The fsspec filesystem for `url`; a one-line error when its extra is not installed."""
    protocol = url.split("://", 1)[0]
    extras.require("fsspec", "s3", f"{protocol}:// paths")
    if protocol in ("s3", "s3a"):
        extras.require("s3fs", "s3", f"{protocol}:// paths")
    import fsspec

    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise extras.MissingExtra(f"{protocol}:// paths are not supported here ({exc})") from None


@dataclass(frozen=True)
class RemoteSave:
    """One model save on object storage: a file, a shard index and its shards, or a folder."""

    url: str  # protocol://bucket/key of the file, index or folder
    members: tuple[tuple[str, str], ...]  # (object URL, path relative to the save's parent)
    size: int  # bytes of all members
    mtime: float  # newest LastModified of the members, as a POSIX timestamp
    tag: str  # the members' ETags: changes whenever any content changes


@dataclass(frozen=True)
class Listing:
    saves: list[RemoteSave]
    objects: int  # objects listed under the prefixes
    requests: int  # LIST pages plus the small reads the walk's rules needed


def discover(urls: Iterable[str], walk: Callable[[list[Path]], list[Path]]) -> Listing:
    """The saves under `urls` (prefixes or single objects), found by the local walk `walk`."""
    saves: list[RemoteSave] = []
    objects = requests = 0
    for url in urls:
        fs = filesystem(url)
        protocol = url.split("://", 1)[0]
        root = fs._strip_protocol(url).rstrip("/")
        try:
            listed = _list(fs, root)
        except Exception as exc:  # s3fs/botocore raise many kinds; one line says which
            raise StorageError(f"{url}: cannot list ({type(exc).__name__}: {exc})") from None
        if not listed:
            raise StorageError(f"{url}: no such object or prefix")
        objects += len(listed)
        requests += 1 + len(listed) // 1000  # LIST pages of 1,000 keys
        # the shadow holds each key below the root's parent, so the root keeps its own name
        # (a prefix that is itself a save folder is one model, as locally)
        parent = PurePosixPath(root).parent
        with tempfile.TemporaryDirectory(prefix="wpipe-listing-") as shadow:
            base = Path(shadow)
            requests += _shadow(fs, parent, listed, base)
            for found in walk([base / PurePosixPath(root).name]):
                saves.append(_save(protocol, parent, base, found, listed))
    return Listing(saves, objects, requests)


def _local_saves(roots: list[Path]) -> list[Path]:
    """The walk's model saves under `roots` (a listing's shadow holds no database to protect)."""
    return walk(roots, Protected([]))[0]


def _list(fs: Any, root: str) -> dict[str, dict]:
    """key -> object info of every object at or under `root`."""
    if fs.isfile(root):
        return {root: fs.info(root)}
    return {
        key: info
        for key, info in fs.find(root, detail=True).items()
        if info.get("type", "file") == "file" and not key.endswith("/")
    }


def _key(parent: PurePosixPath, relative: str) -> str:
    return relative if str(parent) == "." else f"{parent}/{relative}"


def _shadow(fs: Any, parent: PurePosixPath, listed: dict[str, dict], base: Path) -> int:
    """Mirror the listing under `base` with what the walk's rules read; returns GETs made."""

    requests = 0
    for key, info in listed.items():
        local = base / (key if str(parent) == "." else PurePosixPath(key).relative_to(parent))
        local.parent.mkdir(parents=True, exist_ok=True)
        content = b""
        if lists_shards(local) and info.get("size", 0) <= INDEX_LIMIT:
            content = fs.cat_file(key)
            requests += 1
        elif not local.name.lower().endswith(MODEL_SUFFIXES) and info.get("size", 0):
            content = fs.cat_file(key, start=0, end=SNIFF_BYTES)
            requests += 1
        local.write_bytes(content)
    return requests


def _save(
    protocol: str, parent: PurePosixPath, base: Path, found: Path, listed: dict[str, dict]
) -> RemoteSave:
    from wpipe.readers import model_files

    members = []
    size, mtime, tags = 0, 0.0, []
    for member in model_files(found):
        key = _key(parent, member.relative_to(base).as_posix())
        info = listed[key]
        members.append((f"{protocol}://{key}", member.relative_to(found.parent).as_posix()))
        size += int(info.get("size", 0))
        mtime = max(mtime, _mtime(info))
        tags.append(str(info.get("ETag") or info.get("etag") or info.get("size")))
    url = f"{protocol}://{_key(parent, found.relative_to(base).as_posix())}"
    return RemoteSave(url, tuple(members), size, mtime, ",".join(tags))


def _mtime(info: dict) -> float:
    stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if stamp is None:
        return 0.0
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)


def storage_options(url: str) -> dict[str, str]:
    """deltalake storage options for a lake at `url`. Credentials, region and endpoint are
    left to the library, which reads the same standard AWS settings as s3fs; only what the
    endpoint itself implies is added (plain-http endpoints, as MinIO or moto on a laptop,
    must be allowed explicitly), and how commits are made safe."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    extras.require("s3fs", "s3", f"{url.split('://')[0]}:// lakes")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint is None:
        import botocore.session

        endpoint = botocore.session.Session().get_config_variable("endpoint_url")
    # Commits are conditional puts (If-None-Match: a second writer of a version fails and
    # retries on the next one): no rename, no lock service, and never the unsafe fallback
    # an AWS_S3_ALLOW_UNSAFE_RENAME in the environment would select.
    options = {"conditional_put": "etag", "AWS_S3_ALLOW_UNSAFE_RENAME": "false"}
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    return options


def open_lake(where: str | os.PathLike) -> Lake:
    """The lake at a folder or a URL; a lake on object storage gets `storage_options`."""
    if is_url(where):
        return Lake.open(str(where), storage_options(str(where)))
    return Lake.open(str(Path(where).resolve()))


def temp_root() -> str | None:
    return os.environ.get(TMP_ENV) or None


@contextmanager
def fetched(save: RemoteSave) -> Iterator[Path]:
    """A local copy of `save` (its members under their relative names), removed on exit."""
    fs = filesystem(save.url)
    folder = Path(tempfile.mkdtemp(prefix="wpipe-fetch-", dir=temp_root()))
    try:
        for url, relative in save.members:
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(url, str(target))
        yield folder / PurePosixPath(save.url).name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def open_save(path: str) -> Iterator[Any]:
    """`readers.open_model` for a local path or a URL (read from a temporary local copy)."""
    from wpipe.readers import ModelReadError, open_model

    if not is_url(path):
        with open_model(path) as model:
            yield model
        return
    saves = [s for s in discover([path], _local_saves).saves if s.url == path.rstrip("/")]
    if not saves:
        raise ModelReadError("missing-object", f"{path}: no such model save")
    with fetched(saves[0]) as local, open_model(local, where=path) as model:
        yield model
