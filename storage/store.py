"""One storage interface: the only module that knows a local directory from object storage.

    Store        the protocol every part of `storage` uses: keys ("runs/<id>/run.json", "/"-separated,
                 relative to the store's root), bytes written atomically, Parquet with one codec, JSON and
                 typed records, pointers that only move forward, publish with a marker written last, one
                 lock, a Zarr store for a key
    LocalStore   (storage.local) a directory: a temporary sibling then a rename for every write; flock locks; a staged
                 directory is published by one rename
    ObjectStore  (storage.objects) any fsspec URL (s3://bucket/prefix, gs://...): one PUT per object (atomic on its own); no
                 rename, so a staged prefix is the final one, published by its marker; the lock is a lease
                 (an object created only if absent, renewed by a heartbeat, taken over when it expires)
    MemoryStore  (storage.objects) in-process, with object storage's semantics (no rename, conditional writes): the test twin

    open_store(location) -> Store   a path, a URL, a UPath or a Store; every other module starts here

Errors: a missing key is `Missing` (a NotFoundError and a FileNotFoundError); a lock held elsewhere is
`LockHeld` (a StoreError naming the holder). Credentials and endpoints for object storage come from the
client's own configuration (for S3 the AWS variables, AWS_ENDPOINT_URL_S3 for MinIO or moto), so every
process finds them. Listings are never cached (another process may have written since).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from gruviz_core.errors import ConfigError, NotFoundError, StoreError
from gruviz_core.records import from_json, to_json

PARQUET_ROWS = 1 << 20
"""Rows in a Parquet row group (Arrow's default): parts of a table this long write the whole table's file."""

__all__ = [
    "Store", "open_store", "StorePath", "Missing", "LockHeld",
    "json_bytes", "split", "location", "zarr_store", "str_objects",
]

StorePath: TypeAlias = Path | UPath
"""A location handed between processes: pathlib.Path for a local store, a UPath for a URL."""

T = TypeVar("T")



class Missing(NotFoundError, FileNotFoundError):
    """A key that is not in the store."""


class LockHeld(StoreError):
    """A lock another process holds."""


@runtime_checkable
class Store(Protocol):
    """A store rooted somewhere; every method takes keys relative to that root."""

    def location(self, key: str = "") -> StorePath: ...
    def child(self, key: str) -> Store: ...
    def exists(self, key: str = "") -> bool: ...
    def is_dir(self, key: str = "") -> bool: ...
    def list(self, key: str = "") -> list[str]: ...
    def remove(self, key: str) -> None: ...
    def modified(self, key: str) -> float | None: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def create(self, key: str, data: bytes) -> bool: ...
    def open(self, key: str) -> typing.BinaryIO: ...
    def zarr(self, key: str, *, read_only: bool = False) -> Any: ...
    def lock(self, key: str, *, ttl_s: float = 300.0, wait_s: float = 0.0,
             what: str = "another writer") -> contextlib.AbstractContextManager: ...
    def hold(self, key: str) -> contextlib.AbstractContextManager: ...
    def stage(self, key: str, *, replace_marker: str | None = None) -> str: ...
    def publish(self, staged: str, key: str, *, marker: str, body: bytes = b"", replace: bool = False) -> None: ...
    def staged(self, parent: str, *, marker: str) -> list[str]: ...
    def abandoned(self, staged: str, *, grace_s: float | None = None) -> bool: ...
    def discard(self, staged: str) -> bool: ...
    def retract(self, key: str, *, marker: str) -> None: ...
    def probe(self, what: str = "store", *, write: bool = True) -> None: ...
    @property
    def local_root(self) -> Path | None: ...
    # the helpers below come from _Base and read the same on every adapter
    def read_text(self, key: str) -> str: ...
    def write_text(self, key: str, text: str) -> None: ...
    def read_json(self, key: str) -> Any: ...
    def write_json(self, key: str, obj: Any) -> None: ...
    def read_record(self, key: str, cls: type[T]) -> T: ...
    def write_record(self, key: str, record: Any) -> None: ...
    def read_parquet(self, key: str, columns: list[str] | None = None) -> pd.DataFrame: ...
    def write_parquet(self, key: str, df: pd.DataFrame | Iterable[pd.DataFrame],
                      schema: pa.Schema | None = None) -> None: ...
    def parquet_schema(self, key: str) -> pa.Schema: ...
    def pointer(self, key: str) -> str | None: ...
    def set_pointer(self, key: str, value: str, *, rank=None) -> bool: ...


def open_store(location: str | os.PathLike | StorePath | Store) -> Store:
    """The store rooted at `location`: a directory (a path or file:// URL), memory://..., or any fsspec URL."""
    if isinstance(location, _Base):
        return location
    if isinstance(location, UPath) and not isinstance(location, Path):
        text = str(location)
        opts = dict(location.storage_options)
    else:
        text, opts = os.fspath(location) if isinstance(location, os.PathLike) else str(location), {}
    scheme = urlparse(text).scheme if "://" in text else ""
    from storage.local import LocalStore
    from storage.objects import MemoryStore, ObjectStore

    if scheme == "file":
        return LocalStore(Path(unquote(urlparse(text).path)))
    if scheme == "memory":
        return MemoryStore(text)
    if scheme:
        return ObjectStore(text, **opts)
    return LocalStore(Path(text))


def location(where: str | os.PathLike | StorePath | Store) -> StorePath:
    """The handle of a place in a store (a path, a URL or a Store): an absolute Path, or a UPath for a URL."""
    return open_store(where).location()


def split(where: str | os.PathLike | StorePath) -> tuple[Store, str]:
    """The store holding `where` (its parent) and the key of `where` in it: for code handed a location."""
    loc = location(where)
    return open_store(loc.parent), loc.name


def zarr_store(where: str | os.PathLike | StorePath, *, read_only: bool = False) -> Any:
    """The Zarr store at a location (Store.zarr of its key in the store holding it)."""
    store, key = split(where)
    return store.zarr(key, read_only=read_only)


def str_objects(a: Any) -> Any:
    """An object array of str, as Zarr's variable-length strings are written: the array itself when every
    element is already a str (pandas' check: 10 ms for a million rows), else each converted (0.26 s)."""
    a = np.asarray(a, dtype=object)
    return a if pd.api.types.infer_dtype(a, skipna=False) in ("string", "empty") else a.astype(str).astype(object)


# ------------------------------------------------------------------------------------ records


def json_bytes(obj: Any) -> bytes:
    """A record or plain data as the store writes JSON: indented, keys sorted, UTF-8, a final newline."""
    return (json.dumps(to_json(obj), indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


# ------------------------------------------------------------------------------------ shared


class _Base:
    """What reads the same on every adapter: text, JSON, records, Parquet, pointers."""

    url: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __str__(self) -> str:
        return self.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Base) and type(other) is type(self) and other.url == self.url

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.url))

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        """A JSON document; Missing when absent, StoreError naming the key when it is not JSON."""
        data = self.read_bytes(key)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreError(f"{self.location(key)}: not readable JSON ({exc}); the file is damaged, "
                             "recompute it or restore it from a backup") from exc

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json_bytes(obj))

    def read_record(self, key: str, cls: type[T]) -> T:
        return from_json(cls, self.read_json(key), str(self.location(key)))

    def write_record(self, key: str, record: Any) -> None:
        self.write_json(key, record)

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pd.DataFrame:
        with self.open(key) as f:
            return pd.read_parquet(f, columns=columns)

    def write_parquet(self, key: str, df: pd.DataFrame | Iterable[pd.DataFrame],
                      schema: pa.Schema | None = None) -> None:
        """A frame as zstd Parquet, no index, in one atomic write; `schema` casts it to the table's schema. `df` may
        also be the parts of one table (frames with the same columns, made as they are consumed: a slice of rows
        each), written one after another: one part's Arrow copy exists at a time, beside the compressed bytes.
        Parts of PARQUET_ROWS rows give the file of the whole frame (Arrow's row groups are that long).

        Float columns are written without dictionary encoding: Arrow tries a dictionary first and gives up on
        values that rarely repeat, which tripled the write (the Iggy night's row_summary: 256 -> 86 ms, and
        14.2 MB instead of 16.3 MB); ids, names, cohorts and integer columns keep theirs."""
        buf, writer = io.BytesIO(), None
        for part in [df] if isinstance(df, pd.DataFrame) else df:
            table = pa.Table.from_pandas(part, preserve_index=False)
            if schema is not None:
                table = table.select(schema.names).cast(schema)
            if writer is None:
                dictionary = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
                writer = pq.ParquetWriter(buf, table.schema, compression="zstd", use_dictionary=dictionary)
            elif not table.schema.equals(writer.schema):
                table = table.cast(writer.schema)  # e.g. a part whose column is all missing
            writer.write_table(table)
        if writer is None:
            raise ConfigError(f"{self.location(key)}: no parts to write")
        writer.close()
        self.write_bytes(key, buf.getvalue())

    def parquet_schema(self, key: str) -> pa.Schema:
        with self.open(key) as f:
            return pq.read_schema(f)

    def pointer(self, key: str) -> str | None:
        """The id a pointer (LATEST, CURRENT) names, or None when there is none yet."""
        try:
            return self.read_text(key).strip() or None
        except FileNotFoundError:
            return None

    def set_pointer(self, key: str, value: str, *, rank=None) -> bool:
        """Point `key` at `value`; with `rank` (id -> sortable), only forward: False when the current one
        ranks higher. Callers hold the store's lock, so no other writer moves it in between."""
        current = self.pointer(key) if rank is not None else None
        if current is not None and current != value and rank(value) < rank(current):
            return False
        self.write_text(key, value + "\n")
        return True

    def _key(self, key: str) -> str:
        key = key.strip("/")
        if any(part in ("..", ".") for part in key.split("/")) or "\\" in key:
            raise StoreError(f"{self.url}: key {key!r} leaves the store; keys are '/'-separated names under it")
        return key
