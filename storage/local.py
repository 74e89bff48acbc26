"""The Store on a local directory: every write to a temporary sibling, fsynced and renamed over its key;
locks are flocks (released with their process, so never stale); a staged directory is published by one
rename. See storage.store for the protocol."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import typing
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from gruviz_core.errors import StoreError
from storage.store import LockHeld, Missing, StorePath, _Base

__all__ = ["LocalStore"]



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

    def stage(self, key: str, *, replace_marker: str | None = None) -> str:
        """A fresh directory <parent>/.tmp/<name>.<nonce> to write `key` under before publishing it."""
        parent, _, name = self._key(key).rpartition("/")
        staged = "/".join(p for p in (parent, self.tmp, f"{name}.{uuid.uuid4().hex[:8]}") if p)
        self._p(staged).mkdir(parents=True)
        return staged

    def publish(self, staged: str, key: str, *, marker: str, body: bytes = b"", replace: bool = False) -> None:
        """Write `marker` inside the staged directory, then rename it to `key`, which must not exist unless
        `replace` (then the old one is renamed aside first and removed after). A publish repeated after it
        succeeded (a retry) finds `key` marked and the staging gone: a no-op."""
        src, dst = self._p(staged), self._p(key)
        if not src.exists() and (dst / marker).exists():
            return
        if dst.exists() and not replace:
            raise StoreError(f"{dst} already exists; ids are unique, refusing to overwrite it with {src}")
        self.write_bytes(f"{self._key(staged)}/{marker}", body)
        dst.parent.mkdir(parents=True, exist_ok=True)
        old = src.with_name(f".old.{src.name}")
        if dst.exists():
            os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
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
