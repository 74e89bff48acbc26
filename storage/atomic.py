"""Atomic writes: readers see the old thing or the new thing, never half of either.

Local: a temporary sibling, fsync, rename. Object storage (storage.fs): one PUT per object, which
is atomic already; a directory is never renamed there (publish_dir refuses: write under the final
prefix and mark it complete last instead).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from gruviz_core.errors import StoreError
from storage import fs

__all__ = ["write_bytes_atomic", "write_text_atomic", "write_json_atomic", "read_pointer", "publish_dir"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a sibling temp file, fsync, then rename over `path` (remote: one PUT)."""
    path = fs.store_path(path)
    if not isinstance(path, Path):
        fs.write_bytes(path, data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_pointer(path: str | Path) -> str | None:
    """The id a pointer file (LATEST, CURRENT) names, or None when there is none yet."""
    try:
        text = fs.store_path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def publish_dir(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Rename a fully written directory into place. `final_dir` must not exist (ids are unique). Local only."""
    if fs.is_remote(tmp_dir) or fs.is_remote(final_dir):
        raise StoreError(f"publish_dir({tmp_dir}, {final_dir}): object storage has no rename; write under the "
                         "final prefix and mark it complete last (a bug in storage if reached)")
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if final_dir.exists():
        raise StoreError(f"{final_dir} already exists; ids are unique, refusing to overwrite it with {tmp_dir}")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)


def remove_tree(path: str | Path) -> None:
    """Delete a directory or a prefix; missing is fine."""
    p = fs.store_path(path)
    if isinstance(p, Path):
        shutil.rmtree(p, ignore_errors=True)
    else:
        fs.remove_tree(p)
