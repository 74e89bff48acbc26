"""Where the store lives: a local directory or any fsspec URL (s3://bucket/prefix, gs://..., memory://...).

The one module that knows local from remote; the rest of `storage` reads the same for both.

    local   "./gruviz-data", "/srv/gruviz", "file:///srv/gruviz"  -> pathlib.Path (absolute). Writes go to a
            temporary sibling then an atomic rename; locks are flocks; nothing here changes them.
    remote  "s3://bucket/prefix" (any URL with a scheme other than file)   -> upath.UPath. Object stores
            have no rename: an object PUT is atomic on its own, a directory is written under a prefix of
            its own and marked complete by an object written last (see storage.runs.publish_run).

Credentials and endpoints come from the object store client's own configuration, so that every
process (a Dask worker too) finds them without gruviz passing anything: for S3 the AWS variables
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL_S3` for an
S3-compatible server such as MinIO or moto), or ~/.aws/config; fsspec's `FSSPEC_S3_*` variables work too.
Directory listings are never cached for remote stores (another process may have written since).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TypeAlias
from urllib.parse import unquote, urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

__all__ = [
    "StorePath",
    "store_path",
    "is_remote",
    "write_bytes",
    "create_exclusive",
    "read_tagged",
    "replace_if_match",
    "delete_if_match",
    "remove_tree",
    "zarr_store",
    "write_parquet",
    "read_parquet",
    "parquet_schema",
    "modified_s",
    "tree_staging",
    "publish_tree",
]

StorePath: TypeAlias = Path | UPath
"""A path in the store: pathlib.Path for a local store, a UPath for an fsspec URL."""

_NO_LISTING_CACHE = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
"""Protocols whose filesystems take `use_listings_cache` (all object stores fsspec knows)."""


def store_path(p: str | os.PathLike | StorePath) -> StorePath:
    """A local path (absolute) or a UPath for a URL; paths already made are returned as they are."""
    if isinstance(p, UPath) and not isinstance(p, Path):
        return p
    if isinstance(p, Path):
        return p
    text = os.fspath(p) if isinstance(p, os.PathLike) else str(p)
    scheme = urlparse(text).scheme if "://" in text else ""
    if scheme == "file":
        return Path(unquote(urlparse(text).path)).expanduser()
    if scheme:
        opts = {"use_listings_cache": False} if scheme in _NO_LISTING_CACHE else {}
        return UPath(text, **opts)
    return Path(text).expanduser()


def is_remote(p: StorePath | str) -> bool:
    """True for a store on an fsspec URL (no rename, no flock), False for a local directory."""
    return not isinstance(store_path(p), Path)


def write_bytes(path: StorePath, data: bytes) -> None:
    """One object PUT (atomic on object stores: readers see the old object or the new one)."""
    path.write_bytes(data)


def create_exclusive(path: StorePath, data: bytes) -> bool:
    """Create `path` holding `data` only if it does not exist (S3: a PUT with If-None-Match: *);
    False when it exists already. Local: O_CREAT|O_EXCL."""
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True
    try:
        path.fs.pipe_file(path.path, data, mode="create")
    except FileExistsError:
        return False
    return True


def read_tagged(path: StorePath) -> tuple[bytes, str] | None:
    """An object's bytes and the tag of that very version (S3: its ETag), None when it does not exist; for
    replace_if_match / delete_if_match. Object storage only (local stores lock with flock)."""
    for _ in range(5):
        try:
            before = _etag(path)
            data = path.fs.cat_file(path.path)
            if _etag(path) == before:  # no write between: these bytes are that version's
                return data, before
        except FileNotFoundError:
            return None
    raise OSError(f"{path}: changed on every one of 5 reads; cannot read one version of it")


def replace_if_match(path: StorePath, data: bytes, tag: str) -> bool:
    """Overwrite `path` only if it is still the version `tag` (S3: a PUT with If-Match); False when another
    writer changed or deleted it since. Of several writers holding the same tag, exactly one succeeds."""
    try:
        path.fs.pipe_file(path.path, data, IfMatch=tag)
    except (FileNotFoundError, FileExistsError):
        return False
    except OSError as exc:
        if _precondition_failed(exc):
            return False
        raise
    return True


def delete_if_match(path: StorePath, tag: str) -> bool:
    """Delete `path` only if it is still the version `tag` (S3: a DELETE with If-Match); False otherwise."""
    bucket, key, _ = path.fs.split_path(path.path)
    try:
        path.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=tag)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if _precondition_failed(exc):
            return False
        raise
    finally:
        path.fs.invalidate_cache(path.path)
    return True


def _etag(path: StorePath) -> str:
    path.fs.invalidate_cache(path.path)
    return str(path.fs.info(path.path)["ETag"])


def _precondition_failed(exc: BaseException) -> bool:
    """Whether an object store refused a conditional request (HTTP 412) rather than failing otherwise."""
    cause = exc.__cause__ or exc.__context__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code", "") if cause is not None else ""
    return code in ("PreconditionFailed", "412") or "pre-condition" in str(exc).lower()


def remove_tree(path: StorePath) -> None:
    """Delete a directory (local) or every object under a prefix (remote); missing is fine."""
    if isinstance(path, Path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.fs.rm(path.path, recursive=True)
    except FileNotFoundError:
        pass


def zarr_store(path: StorePath, *, read_only: bool = False):
    """The Zarr store at `path`: LocalStore for a directory, FsspecStore for a URL."""
    import zarr

    if isinstance(path, Path):
        return zarr.storage.LocalStore(path, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(str(path), storage_options=dict(path.storage_options),
                                             read_only=read_only)


def write_parquet(df: pd.DataFrame, path: StorePath) -> None:
    """A DataFrame as zstd Parquet, no index, in one write (remote) or to `path` itself (local)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if isinstance(path, Path):
        pq.write_table(table, path, compression="zstd")
        return
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    path.write_bytes(buf.getvalue())


def read_parquet(path: StorePath, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file as a DataFrame (the columns asked for, or all)."""
    if isinstance(path, Path):
        return pd.read_parquet(path, columns=columns)
    with path.open("rb") as f:
        return pd.read_parquet(f, columns=columns)


def parquet_schema(path: StorePath) -> pa.Schema:
    """The Arrow schema of a Parquet file (its footer only)."""
    if isinstance(path, Path):
        return pq.read_schema(path)
    with path.open("rb") as f:
        return pq.read_schema(f)


def modified_s(path: StorePath) -> float | None:
    """Last modification time (seconds since the epoch) of a file or object; None when missing."""
    try:
        return float(path.stat().st_mtime)
    except (FileNotFoundError, OSError):
        return None


def tree_staging(final: StorePath, marker: str) -> StorePath:
    """Where to write a directory tree that replaces `final` whole, for `publish_tree` to put in place; readers
    trust a tree only with its `marker` object in it.

    Local: a fresh temporary sibling (a killed writer leaves it aside, never at `final`). Object storage (no
    rename): `final` itself, emptied, its marker deleted first so readers stop trusting it before anything goes."""
    if isinstance(final, Path):
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    (final / marker).unlink(missing_ok=True)
    remove_tree(final)
    return final


def publish_tree(staging: StorePath, final: StorePath, marker: str) -> None:
    """Write `marker` into a tree written at `tree_staging(final)`, last, and put the tree at `final`: local,
    renamed over it (the tree it replaces is renamed aside, then removed); object storage, there already."""
    write_bytes(staging / marker, b"")
    if not isinstance(final, Path):
        return
    old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)
