"""Change detection: whether tonight's form sources are exactly the files the latest snapshot was made of."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from flows.sources import expand_sources
from storage.forms import latest_snapshot, read_manifest

__all__ = ["NO_NEW_DATA", "SourceCheck", "check_sources"]

NO_NEW_DATA = "no new form data (the sources are unchanged since the last snapshot)"


@dataclass(frozen=True)
class SourceCheck:
    """Tonight's sources against the store's latest snapshot."""

    latest: str | None
    """The latest snapshot id; None in a store without one."""
    changed: bool
    """Whether the sources differ from the files (path, size, sha256) `latest` was made of (True without one)."""


def check_sources(root: str, sources: list[str]) -> SourceCheck:
    """Whether `sources` changed since the latest snapshot in the store at `root`."""
    latest = latest_snapshot(root)
    return SourceCheck(latest, latest is None or not _same_files(root, latest, sources))


def _same_files(root: str, snapshot_id: str, sources: list[str]) -> bool:
    """Whether `sources` expand to exactly the files (path, size, sha256) the snapshot was made of."""
    try:
        recorded = {f["path"]: f for f in read_manifest(root, snapshot_id).get("files", [])}
        files = expand_sources(sources)
    except (OSError, KeyError, TypeError, ValueError):
        return False
    if {str(p) for p in files} != set(recorded):
        return False
    return all(recorded[str(p)].get("bytes") == p.stat().st_size and recorded[str(p)].get("sha256") == _sha256(p)
               for p in files)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
