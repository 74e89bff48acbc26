"""One storage interface: the only module that knows a local directory from object storage.

    Store        the protocol every part of `storage` uses: keys ("runs/<id>/run.json", "/"-separated,
                 relative to the store's root), bytes written atomically, Parquet with one codec, JSON and
                 typed records, pointers that only move forward, publish with a marker written last, one
                 lock, a Zarr store for a key
    LocalStore   a directory: a temporary sibling then a rename for every write; flock locks; a staged
                 directory is published by one rename
    ObjectStore  any fsspec URL (s3://bucket/prefix, gs://...): one PUT per object (atomic on its own); no
                 rename, so a staged prefix is the final one, published by its marker; the lock is a lease
                 (an object created only if absent, renewed by a heartbeat, taken over when it expires)
    MemoryStore  in-process, with object storage's semantics (no rename, conditional writes): the test twin

    open_store(location) -> Store   a path, a URL, a UPath or a Store; every other module starts here

Errors: a missing key is `Missing` (a NotFoundError and a FileNotFoundError); a lock held elsewhere is
`LockHeld` (a StoreError naming the holder). Credentials and endpoints for object storage come from the
client's own configuration (for S3 the AWS variables, AWS_ENDPOINT_URL_S3 for MinIO or moto), so every
process finds them. Listings are never cached (another process may have written since).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import threading
import time
import types
import typing
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar, runtime_checkable
from urllib.parse import unquote, urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from gruviz_core.errors import NotFoundError, StoreError

__all__ = [
    "Store", "LocalStore", "ObjectStore", "MemoryStore", "open_store", "StorePath", "Missing", "LockHeld",
    "to_json", "from_json", "split", "location",
]

StorePath: TypeAlias = Path | UPath
"""A location handed between processes: pathlib.Path for a local store, a UPath for a URL."""

T = TypeVar("T")

_NO_LISTING_CACHE = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
"""Protocols whose filesystems take `use_listings_cache` (all object stores fsspec knows)."""


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
    def stage(self, key: str) -> str: ...
    def publish(self, staged: str, key: str, *, marker: str, body: bytes = b"") -> None: ...
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
    def write_parquet(self, key: str, df: pd.DataFrame, schema: pa.Schema | None = None) -> None: ...
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


# ------------------------------------------------------------------------------------ records


def to_json(obj: Any) -> Any:
    """A record (a dataclass, nested or not) or plain data as JSON-ready data; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def from_json(cls: type[T], data: Any, where: str = "record") -> T:
    """The frozen dataclass `cls` from JSON data: fields typed as tuples or records are rebuilt, unknown keys
    are ignored, a missing field without a default is a StoreError naming it."""
    if not isinstance(data, dict):
        raise StoreError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kw[f.name] = _as(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise StoreError(f"{where}: no field {f.name!r} for {cls.__name__}; the record is damaged or from "
                             "another version, recompute it")
    return cls(**kw)


def _as(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _as(inner[0], value, where) if len(inner) == 1 else value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_as(item, v, where) for v in value)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_json(hint, value, where)
    return value


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
        self.write_text(key, json.dumps(to_json(obj), indent=2, sort_keys=True, default=str) + "\n")

    def read_record(self, key: str, cls: type[T]) -> T:
        return from_json(cls, self.read_json(key), str(self.location(key)))

    def write_record(self, key: str, record: Any) -> None:
        self.write_json(key, record)

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pd.DataFrame:
        with self.open(key) as f:
            return pd.read_parquet(f, columns=columns)

    def write_parquet(self, key: str, df: pd.DataFrame, schema: pa.Schema | None = None) -> None:
        """A frame as zstd Parquet, no index, in one atomic write; `schema` casts it to the table's schema."""
        table = pa.Table.from_pandas(df, preserve_index=False)
        if schema is not None:
            table = table.select(schema.names).cast(schema)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
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


def _lease_body(owner: str, ttl_s: float) -> bytes:
    now = datetime.now(UTC).timestamp()
    return json.dumps({"owner": owner, "heartbeat": now, "expires": now + ttl_s}).encode()


def _parse_lease(data: bytes) -> dict:
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}  # unreadable: expired, may be taken over
    return info if isinstance(info, dict) else {}


# ------------------------------------------------------------------------------------ local


class LocalStore(_Base):
    """A directory. Writes go to a temporary sibling, are fsynced and renamed over the key."""

    tmp = ".tmp"
    """Where staged directories are written before their rename (a sibling of the published ones)."""
    grace_s = 600.0
    """A staged directory with no holder is left alone this long (a writer between stage and hold)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def _p(self, key: str) -> Path:
        key = self._key(key)
        return self.root / key if key else self.root

    @property
    def local_root(self) -> Path | None:
        """The directory itself (for inputs a command makes that must be local files, such as the demo's)."""
        return self.root

    def probe(self, what: str = "store", *, write: bool = True) -> None:
        """Create the directory if missing and prove it writable by creating and removing a file in it
        (`write` False: nothing to prove, a missing directory is an empty store)."""
        if not write:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".gruviz-probe-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"probe\n")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"{what} {self.root} is not writable ({exc.strerror or exc}); create it with write "
                             "permission or point the setting elsewhere") from None

    def location(self, key: str = "") -> StorePath:
        return self._p(key)

    def child(self, key: str) -> LocalStore:
        return LocalStore(self._p(key))

    def exists(self, key: str = "") -> bool:
        return self._p(key).exists()

    def is_dir(self, key: str = "") -> bool:
        return self._p(key).is_dir()

    def list(self, key: str = "") -> list[str]:
        p = self._p(key)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []

    def remove(self, key: str) -> None:
        p = self._p(key)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def modified(self, key: str) -> float | None:
        try:
            return float(self._p(key).stat().st_mtime)
        except OSError:
            return None

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._p(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise Missing(f"{self._p(key)}: missing") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._p(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def create(self, key: str, data: bytes) -> bool:
        path = self._p(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    def open(self, key: str) -> typing.BinaryIO:
        try:
            return open(self._p(key), "rb")
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise Missing(f"{self._p(key)}: missing") from exc

    def zarr(self, key: str, *, read_only: bool = False) -> Any:
        import zarr

        return zarr.storage.LocalStore(self._p(key), read_only=read_only)

    @contextlib.contextmanager
    def lock(self, key: str, *, ttl_s: float = 300.0, wait_s: float = 0.0,
             what: str = "another writer") -> Iterator[None]:
        """An flock on `key`, waited for up to `wait_s`: released with its process, so never stale; LockHeld
        naming the holder."""
        path = self._p(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    f.seek(0)
                    holder = f.read().strip() or "another process"
                    raise LockHeld(f"store {self.url}: {what} is running ({holder} holds {path}); wait for it to "
                                   "finish (the lock is released when that process ends)") from None
            try:
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()}\n")
                f.flush()
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Mark the staged `key` as owned by this process (an flock beside it) so no sweep removes it."""
        with open(self._holder(key), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _holder(self, staged: str) -> Path:
        p = self._p(staged)
        return p.with_name(p.name + ".lock")

    def stage(self, key: str) -> str:
        """A fresh directory <parent>/.tmp/<name>.<nonce> to write `key` under before publishing it."""
        parent, _, name = self._key(key).rpartition("/")
        staged = "/".join(p for p in (parent, self.tmp, f"{name}.{uuid.uuid4().hex[:8]}") if p)
        self._p(staged).mkdir(parents=True)
        return staged

    def publish(self, staged: str, key: str, *, marker: str, body: bytes = b"") -> None:
        """Write `marker` inside the staged directory, then rename it to `key` (which must not exist).
        A publish repeated after it succeeded (a retry) finds `key` marked and the staging gone: a no-op."""
        src, dst = self._p(staged), self._p(key)
        if not src.exists() and (dst / marker).exists():
            return
        if dst.exists():
            raise StoreError(f"{dst} already exists; ids are unique, refusing to overwrite it with {src}")
        self.write_bytes(f"{self._key(staged)}/{marker}", body)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        _fsync_dir(dst.parent)
        self._holder(staged).unlink(missing_ok=True)

    def staged(self, parent: str, *, marker: str) -> list[str]:
        tmp = self._p(f"{parent}/{self.tmp}")
        if not tmp.is_dir():
            return []
        for lock in tmp.glob("*.lock"):  # holders' lock files left by removed stagings
            if not lock.with_suffix("").exists() and _unlocked(lock):
                lock.unlink(missing_ok=True)
        return [f"{self._key(parent)}/{self.tmp}/{d.name}".lstrip("/") for d in sorted(tmp.iterdir())
                if d.is_dir() and not d.name.startswith(".")]

    def abandoned(self, staged: str, *, grace_s: float | None = None) -> bool:
        """No live process holds it (its holder crashed), or nobody ever held it and it is older than grace."""
        lock = self._holder(staged)
        if lock.exists():
            return _unlocked(lock)
        age = self.modified(staged)
        return age is not None and datetime.now().timestamp() - age > (self.grace_s if grace_s is None else grace_s)

    def discard(self, staged: str) -> bool:
        key = self._key(staged)
        if f"/{self.tmp}/" not in f"/{key}" or key.rsplit("/", 1)[-1].startswith("."):
            raise StoreError(f"{self._p(key)} is not a staged directory under a {self.tmp}/; refusing to delete it")
        existed = self._p(key).exists()
        self.remove(key)
        self._holder(key).unlink(missing_ok=True)
        return existed

    def retract(self, key: str, *, marker: str) -> None:
        """Take a published directory away whole: one rename into .tmp, then delete it."""
        src = self._p(key)
        parent, _, name = self._key(key).rpartition("/")
        doomed = self._p("/".join(p for p in (parent, self.tmp, f".deleted.{name}.{uuid.uuid4().hex[:8]}") if p))
        doomed.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlocked(lock: Path) -> bool:
    """True when no process holds an flock on `lock` (tested by taking and dropping it)."""
    try:
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
            return True
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------------ object storage


class ObjectStore(_Base):
    """Any fsspec URL. An object PUT is atomic; there is no rename: a staged prefix is its final one."""

    grace_s = 6 * 3600.0
    """An unpublished prefix untouched this long is a dead writer's (longer than any night)."""
    writer = "_WRITER"
    """The object `stage` creates only if absent, so one writer owns a prefix."""

    def __init__(self, url: str, **storage_options: Any):
        import fsspec

        scheme = urlparse(url).scheme
        opts = {"use_listings_cache": False, **storage_options} if scheme in _NO_LISTING_CACHE else storage_options
        self.fs, path = fsspec.core.url_to_fs(url, **opts)
        self.storage_options = opts
        self.scheme = scheme
        self.path = path.rstrip("/")
        self.url = url.rstrip("/")

    def _p(self, key: str) -> str:
        key = self._key(key)
        return f"{self.path}/{key}" if key else self.path

    def _url(self, key: str) -> str:
        key = self._key(key)
        return f"{self.url}/{key}" if key else self.url

    @property
    def local_root(self) -> Path | None:
        return None

    def probe(self, what: str = "store", *, write: bool = True) -> None:
        """Prove the bucket answers (and, with `write`, takes writes: a probe object written and deleted)."""
        bucket = self.path.split("/", 1)[0]
        try:
            found = self.fs.exists(bucket)
        except Exception as exc:  # noqa: BLE001 - credentials, endpoint: the same refusal, with its reason
            raise StoreError(f"{what} {self.url}: cannot reach bucket {bucket!r} ({type(exc).__name__}: {exc}); check "
                             "the endpoint and credentials (AWS_* variables, AWS_ENDPOINT_URL_S3)") from None
        if not found:
            raise NotFoundError(f"{what} {self.url}: bucket {bucket!r} does not exist (or these credentials cannot "
                                "see it); create it or fix GRUVIZ_HOME / --home")
        if not write:
            return
        key = f".gruviz-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.write_bytes(key, b"probe\n")
            self.remove(key)
        except Exception as exc:  # noqa: BLE001 - any client error (permissions, quota) is the same refusal
            raise StoreError(f"{what} {self.url} is not writable ({type(exc).__name__}: {exc}); check the "
                             "credentials' permissions on the bucket, or point GRUVIZ_HOME elsewhere") from None

    def location(self, key: str = "") -> StorePath:
        return UPath(self._url(key), **self.storage_options)

    def child(self, key: str) -> ObjectStore:
        return type(self)(self._url(key), **self.storage_options)

    def exists(self, key: str = "") -> bool:
        self.fs.invalidate_cache()
        return bool(self.fs.exists(self._p(key)))

    def is_dir(self, key: str = "") -> bool:
        self.fs.invalidate_cache()
        try:
            return bool(self.fs.isdir(self._p(key)))
        except FileNotFoundError:
            return False

    def list(self, key: str = "") -> list[str]:
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self._p(key), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = self._p(key).rstrip("/")
        names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries if str(e).rstrip("/") != base}
        return sorted(names)

    def remove(self, key: str) -> None:
        p = self._p(key)
        self.fs.invalidate_cache()
        with contextlib.suppress(FileNotFoundError):
            if self.fs.isdir(p):
                self.fs.rm(p, recursive=True)
            else:
                self.fs.rm_file(p)
        self.fs.invalidate_cache()

    def modified(self, key: str) -> float | None:
        self.fs.invalidate_cache(self._p(key))
        try:
            return float(self.fs.modified(self._p(key)).timestamp())
        except (FileNotFoundError, OSError, NotImplementedError, IsADirectoryError):
            return None

    def read_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._p(key)))
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise Missing(f"{self._url(key)}: missing") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._p(key), data)
        self.fs.invalidate_cache(self._p(key))

    def create(self, key: str, data: bytes) -> bool:
        """Create `key` only if absent (S3: a PUT with If-None-Match: *); False when it exists."""
        try:
            self.fs.pipe_file(self._p(key), data, mode="create")
        except FileExistsError:
            return False
        return True

    def open(self, key: str) -> typing.BinaryIO:
        try:
            return self.fs.open(self._p(key), "rb", block_size=1 << 16)
        except FileNotFoundError as exc:
            raise Missing(f"{self._url(key)}: missing") from exc

    def zarr(self, key: str, *, read_only: bool = False) -> Any:
        import zarr

        return zarr.storage.FsspecStore.from_url(self._url(key), storage_options=dict(self.storage_options),
                                                 read_only=read_only)

    # conditional writes: the lease lock's primitives (S3 If-Match; MemoryStore overrides them)

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """An object's bytes and the tag of that very version (S3: its ETag); None when absent."""
        path = self._p(key)
        for _ in range(5):
            try:
                before = self._etag(path)
                data = self.fs.cat_file(path)
                if self._etag(path) == before:  # no write between: these bytes are that version's
                    return data, before
            except FileNotFoundError:
                return None
        raise StoreError(f"{self._url(key)}: changed on every one of 5 reads; cannot read one version of it")

    def replace_if_match(self, key: str, data: bytes, tag: str) -> bool:
        """Overwrite `key` only if it is still version `tag`; of several writers holding it, one succeeds."""
        try:
            self.fs.pipe_file(self._p(key), data, IfMatch=tag)
        except (FileNotFoundError, FileExistsError):
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        return True

    def delete_if_match(self, key: str, tag: str) -> bool:
        """Delete `key` only if it is still version `tag`."""
        path = self._p(key)
        bucket, obj, _ = self.fs.split_path(path)
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=obj, IfMatch=tag)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        finally:
            self.fs.invalidate_cache(path)
        return True

    def _etag(self, path: str) -> str:
        self.fs.invalidate_cache(path)
        return str(self.fs.info(path)["ETag"])

    @contextlib.contextmanager
    def lock(self, key: str, *, ttl_s: float = 300.0, wait_s: float = 0.0,
             what: str = "another writer") -> Iterator[None]:
        """A lease, waited for up to `wait_s`: an object created only if absent holding its owner and an expiry, renewed every ttl/3
        by a heartbeat thread and deleted on exit; a holder killed without cleaning up blocks others for at
        most `ttl_s`, after which one of them (a conditional write on the version read) takes it over."""
        owner = f"pid {os.getpid()} on {socket.gethostname()} ({uuid.uuid4().hex[:8]})"
        deadline = time.monotonic() + wait_s
        while not self.create(key, _lease_body(owner, ttl_s)):
            try:
                self._take_over(key, _lease_body(owner, ttl_s), what)
                break
            except LockHeld:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(ttl_s / 3):
                try:
                    held = self.read_tagged(key)
                    if held is None or _parse_lease(held[0]).get("owner") != owner:
                        return  # taken over after an expiry: never write over another's lock
                    if not self.replace_if_match(key, _lease_body(owner, ttl_s), held[1]):
                        return
                except Exception:  # noqa: BLE001 - a failed renewal is retried next beat; the ttl allows two misses
                    continue

        th = threading.Thread(target=beat, name="gruviz-lock-heartbeat", daemon=True)
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join(timeout=10)
            held = self.read_tagged(key)
            if held is not None and _parse_lease(held[0]).get("owner") == owner:
                self.delete_if_match(key, held[1])

    def _take_over(self, key: str, body: bytes, what: str) -> None:
        held = self.read_tagged(key)
        if held is None:  # released between the create and the read
            if self.create(key, body):
                return
            raise LockHeld(f"store {self.url}: {what} took the lock {self._url(key)} just now; wait for it to finish")
        info = _parse_lease(held[0])
        if info.get("expires", 0.0) > datetime.now(UTC).timestamp():
            until = datetime.fromtimestamp(info["expires"], UTC).isoformat(timespec="seconds")
            raise LockHeld(f"store {self.url}: {what} is running ({info.get('owner')} holds {self._url(key)}, "
                           f"renewed until {until}); wait for it to finish, or delete {self._url(key)} if it is "
                           "known dead")
        if not self.replace_if_match(key, body, held[1]):
            raise LockHeld(f"store {self.url}: {what} took the expired lock {self._url(key)} just now; wait for it "
                           "to finish")

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        yield  # sweeps spare recent prefixes (grace_s) and run under the nightly lock

    def stage(self, key: str) -> str:
        """`key` itself, claimed by creating its writer object (so a second writer of the same key is refused)."""
        key = self._key(key)
        if not self.create(f"{key}/{self.writer}", f"pid {os.getpid()} on {socket.gethostname()}\n".encode()):
            raise StoreError(f"{self._url(key)}: being written or exists already; ids are unique, start again "
                             "(it picks a new id)")
        return key

    def publish(self, staged: str, key: str, *, marker: str, body: bytes = b"") -> None:
        """Write `marker` last under the key's prefix (written where it was staged); repeating it is a no-op."""
        if self._key(staged) != self._key(key):
            raise StoreError(f"{self._url(staged)}: not the prefix of {self._url(key)}; on object storage a prefix "
                             "is published where it was staged")
        self.write_bytes(f"{self._key(key)}/{marker}", body)

    def staged(self, parent: str, *, marker: str) -> list[str]:
        parent = self._key(parent)
        return [f"{parent}/{n}".lstrip("/") for n in self.list(parent)
                if not n.startswith(".") and self.is_dir(f"{parent}/{n}") and not self.exists(f"{parent}/{n}/{marker}")]

    def abandoned(self, staged: str, *, grace_s: float | None = None) -> bool:
        touched = [t for t in (self.modified(f"{staged}/{self.writer}"), self.modified(f"{staged}/run.json"))
                   if t is not None]
        grace = self.grace_s if grace_s is None else grace_s
        return not touched or datetime.now(UTC).timestamp() - max(touched) > grace

    def discard(self, staged: str) -> bool:
        existed = self.is_dir(staged)
        self.remove(staged)
        return existed

    def retract(self, key: str, *, marker: str) -> None:
        """The marker goes first (readers stop listing it), then the prefix."""
        self.remove(f"{self._key(key)}/{marker}")
        self.remove(key)


def _precondition_failed(exc: BaseException) -> bool:
    """Whether an object store refused a conditional request (HTTP 412) rather than failing otherwise."""
    cause = exc.__cause__ or exc.__context__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code", "") if cause is not None else ""
    return code in ("PreconditionFailed", "412") or "pre-condition" in str(exc).lower()


# ------------------------------------------------------------------------------------ memory

_MEMORY_LOCK = threading.Lock()
"""Serialises MemoryStore's conditional writes (fsspec's memory filesystem is one dict per process)."""


class MemoryStore(ObjectStore):
    """In-process objects (fsspec's memory filesystem) with object storage's semantics: no rename,
    conditional writes by version tags. Two MemoryStores with one URL see the same objects."""

    def __init__(self, url: str | None = None, **storage_options: Any):
        super().__init__(url or f"memory://gruviz-{uuid.uuid4().hex[:12]}", **storage_options)

    def create(self, key: str, data: bytes) -> bool:
        with _MEMORY_LOCK:
            if self.fs.exists(self._p(key)):
                return False
            self.fs.pipe_file(self._p(key), data)
            return True

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        with _MEMORY_LOCK:
            try:
                data = bytes(self.fs.cat_file(self._p(key)))
            except FileNotFoundError:
                return None
            return data, hashlib.sha256(data).hexdigest()

    def replace_if_match(self, key: str, data: bytes, tag: str) -> bool:
        with _MEMORY_LOCK:
            try:
                current = bytes(self.fs.cat_file(self._p(key)))
            except FileNotFoundError:
                return False
            if hashlib.sha256(current).hexdigest() != tag:
                return False
            self.fs.pipe_file(self._p(key), data)
            return True

    def delete_if_match(self, key: str, tag: str) -> bool:
        with _MEMORY_LOCK:
            try:
                current = bytes(self.fs.cat_file(self._p(key)))
            except FileNotFoundError:
                return False
            if hashlib.sha256(current).hexdigest() != tag:
                return False
            self.fs.rm_file(self._p(key))
            return True
