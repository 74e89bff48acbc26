"""Where the store lives: a local directory or any fsspec URL (s3://bucket/prefix, gs://..., memory://...).

The one module that knows local from remote; the rest of `storage` reads the same for both.

    local   "./gruviz-data", "/srv/gruviz", "file:///srv/gruviz"  -> pathlib.Path (absolute). Writes go to a
            temporary sibling then an atomic rename; locks are flocks; nothing here changes them.
    remote  "s3://bucket/prefix" (any URL with a scheme other than file)   -> upath.UPath. Object stores
            have no rename: an object PUT is atomic on its own, a directory is written under a prefix of
            its own and marked complete by an object written last (see storage.states.publish_run).

Credentials and endpoints come from the object store client's own configuration, so that every
process (a Dask worker too) finds them without gruviz passing anything: for S3 the AWS variables
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL_S3` for an
S3-compatible server such as MinIO or moto), or ~/.aws/config; fsspec's `FSSPEC_S3_*` variables work too.
Directory listings are never cached for remote stores (another process may have written since).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias
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
    "load_npz",
    "npz_layout",
    "npz_rows",
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


def load_npz(path: StorePath) -> Any:
    """np.load of an .npz at `path` (a local path, or the object read into memory); use as a context manager."""
    import numpy as np

    if isinstance(path, Path):
        return np.load(path, allow_pickle=False)
    return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)


def npz_layout(path: StorePath, names: Sequence[str]) -> dict[str, Any]:
    """Where the rows of members `names` of an uncompressed .npz start in the file, for `npz_rows(layout=)`:
    {"size": bytes, "members": {name: [data offset, shape, dtype descr]}}. Members not laid out for
    offsets (compressed, Fortran-ordered, object dtype) are left out; npz_rows reads those through the zip.

    Read once (say by the flow) and handed to many readers of rows (the blocks), each of them skips the zip
    directory and the member headers: one read (one ranged GET on object storage) per member."""
    import numpy as np

    members: dict[str, list] = {}
    with _open_small(path) as f, zipfile.ZipFile(f) as zf:
        for name in names:
            info = zf.getinfo(f"{name}.npy")
            where = _stored_npy(f, info) if info.compress_type == zipfile.ZIP_STORED else None
            if where is not None:
                offset, shape, dtype = where
                members[name] = [offset, list(shape), np.lib.format.dtype_to_descr(dtype)]
        size = f.seek(0, io.SEEK_END)
    return {"size": size, "members": members}


def npz_rows(path: StorePath, names: Sequence[str], start: int = 0, stop: int | None = None,
             whole: Sequence[str] = (), layout: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rows [start, stop) (stop None: to the end) of members `names` of an uncompressed .npz (np.savez),
    read at their offsets, and the members `whole` whole, in one open of the file.

    Only those rows' bytes are read, from a local file or (by ranged GETs) an object, so a reader of
    one block of rows holds that block, not the file. Members stored compressed, Fortran-ordered or
    of object dtype are loaded whole and sliced. `layout` (npz_layout of the same file) skips the zip
    directory and member headers when the file's size still matches it. Returns {name: array}.
    """
    import numpy as np

    want = [*((n, (start, stop)) for n in names), *((n, (0, None)) for n in whole)]
    out: dict[str, Any] = {}
    with _open_small(path) as f:
        known = (layout or {}).get("members", {})
        if layout is not None and f.seek(0, io.SEEK_END) == layout.get("size"):
            for name, (a, b) in want:
                if name in known:
                    offset, shape, descr = known[name]
                    out[name] = _read_rows(f, name, offset, tuple(shape), np.lib.format.descr_to_dtype(descr), a, b)
        rest = [(n, ab) for n, ab in want if n not in out]
        if rest:
            with zipfile.ZipFile(f) as zf:
                for name, (a, b) in rest:
                    info = zf.getinfo(f"{name}.npy")
                    where = _stored_npy(f, info) if info.compress_type == zipfile.ZIP_STORED else None
                    if where is None:  # not laid out for offsets: the member whole, then its rows
                        with zf.open(info) as member:
                            out[name] = np.lib.format.read_array(member, allow_pickle=False)[a:b].copy()
                    else:
                        out[name] = _read_rows(f, name, *where, a, b)
    return out


def _open_small(path: StorePath):
    """The file or object opened for reading; objects with 64 KiB read-ahead blocks (small reads: small GETs)."""
    return path.open("rb") if isinstance(path, Path) else path.open("rb", block_size=1 << 16)


def _stored_npy(f, info: zipfile.ZipInfo):
    """(data offset, shape, dtype) of a stored (uncompressed) .npy member, or None when its layout does not
    allow reading rows by offset."""
    import numpy as np

    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"{info.filename}: not a zip local file header at {info.header_offset}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return None
    if fortran or dtype.hasobject or not shape:
        return None
    return f.tell(), shape, dtype


def _read_rows(f, name: str, offset: int, shape: tuple, dtype, start: int, stop: int | None):
    """Rows [start, stop) of a C-ordered array of `shape` and `dtype` whose data starts at `offset`."""
    import numpy as np

    stop = shape[0] if stop is None else stop
    start, stop = max(0, min(start, shape[0])), max(0, min(stop, shape[0]))
    stop = max(stop, start)
    row_bytes = dtype.itemsize * math.prod(shape[1:])
    out = np.empty((stop - start, *shape[1:]), dtype=dtype)
    view = memoryview(out.reshape(-1).view(np.uint8)) if out.nbytes else memoryview(b"")  # any dtype (datetime, str)
    f.seek(offset + start * row_bytes)
    got = 0
    while got < out.nbytes:
        chunk = f.read(min(out.nbytes - got, 1 << 26))
        if not chunk:
            raise ValueError(f"{name}.npy: ends after {got} of {out.nbytes} bytes of rows {start}..{stop}")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    return out
