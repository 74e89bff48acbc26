"""The Store on object storage (any fsspec URL: s3://, gs://, ...) and its in-process twin (memory://).

An object PUT is atomic; there is no rename, so a staged prefix is its final one, published by a marker
written last. The lock is a lease: an object created only if absent (S3 If-None-Match: *), renewed by a
heartbeat with conditional writes (If-Match), taken over by exactly one waiter once it expires. MemoryStore
keeps those semantics in process, for tests. See storage.store for the protocol."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from upath import UPath

from gruviz_core.errors import NotFoundError, StoreError
from storage.store import LockHeld, Missing, StorePath, _Base

__all__ = ["ObjectStore", "MemoryStore"]

_S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 10, "retries": {"max_attempts": 2, "mode": "standard"}}
"""botocore's timeouts and attempts: with s3fs's own retries (_S3FS_RETRIES) a store that stops answering fails a
request within about a minute instead of hanging a night or a page for minutes (the read timeout is between
bytes, not for a whole object)."""
_S3FS_RETRIES = 2
"""s3fs retries a timed-out call itself on top of botocore (5 times by default)."""
_NO_LISTING_CACHE = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
"""Protocols whose filesystems take `use_listings_cache`: off, so every exists/list asks the store (other writers
change it) and nothing here has a cache to invalidate."""


def _lease_body(owner: str, ttl_s: float) -> bytes:
    now = datetime.now(UTC).timestamp()
    return json.dumps({"owner": owner, "heartbeat": now, "expires": now + ttl_s}).encode()


def _parse_lease(data: bytes) -> dict:
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}  # unreadable: expired, may be taken over
    return info if isinstance(info, dict) else {}



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
        if scheme in ("s3", "s3a") and "config_kwargs" not in opts:
            opts = {**opts, "config_kwargs": _S3_TIMEOUTS}
        self.fs, path = fsspec.core.url_to_fs(url, **opts)
        if scheme in ("s3", "s3a"):
            self.fs.retries = _S3FS_RETRIES
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
            self.fs.info(bucket)  # not exists(): that answers False for an endpoint that does not answer
        except FileNotFoundError:
            raise NotFoundError(f"{what} {self.url}: bucket {bucket!r} does not exist (or these credentials cannot "
                                "see it); create it or fix GRUVIZ_HOME / --home") from None
        except Exception as exc:  # noqa: BLE001 - credentials, endpoint: the same refusal, with its reason
            raise StoreError(f"{what} {self.url}: cannot reach bucket {bucket!r} ({type(exc).__name__}: {exc}); check "
                             "the endpoint and credentials (AWS_* variables, AWS_ENDPOINT_URL_S3)") from None
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
        return bool(self.fs.exists(self._p(key)))

    def is_dir(self, key: str = "") -> bool:
        try:
            return bool(self.fs.isdir(self._p(key)))
        except FileNotFoundError:
            return False

    def list(self, key: str = "") -> list[str]:
        try:
            entries = self.fs.ls(self._p(key), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = self._p(key).rstrip("/")
        names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries if str(e).rstrip("/") != base}
        return sorted(names)

    def remove(self, key: str) -> None:
        p = self._p(key)
        with contextlib.suppress(FileNotFoundError):
            if self.fs.isdir(p):
                self.fs.rm(p, recursive=True)
            else:
                self.fs.rm_file(p)

    def modified(self, key: str) -> float | None:
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
        return True

    def _etag(self, path: str) -> str:
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

    def stage(self, key: str, *, replace_marker: str | None = None) -> str:
        """`key` itself, claimed by creating its writer object (so a second writer of the same key is refused).
        With `replace_marker`, what is there goes first, that marker before the rest (readers stop trusting it)."""
        key = self._key(key)
        if replace_marker is not None:
            self.remove(f"{key}/{replace_marker}")
            self.remove(key)
        if not self.create(f"{key}/{self.writer}", f"pid {os.getpid()} on {socket.gethostname()}\n".encode()):
            raise StoreError(f"{self._url(key)}: being written or exists already; ids are unique, start again "
                             "(it picks a new id)")
        return key

    def publish(self, staged: str, key: str, *, marker: str, body: bytes = b"", replace: bool = False) -> None:
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
            return self._tagged(key)

    def replace_if_match(self, key: str, data: bytes, tag: str) -> bool:
        with _MEMORY_LOCK:
            if (self._tagged(key) or (b"", None))[1] != tag:
                return False
            self.fs.pipe_file(self._p(key), data)
            return True

    def delete_if_match(self, key: str, tag: str) -> bool:
        with _MEMORY_LOCK:
            if (self._tagged(key) or (b"", None))[1] != tag:
                return False
            self.fs.rm_file(self._p(key))
            return True

    def _tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and their digest (its version tag); None when absent. Hold _MEMORY_LOCK."""
        try:
            data = bytes(self.fs.cat_file(self._p(key)))
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()
