"""The ingest stage: form files (paths, directories, globs) -> a content-addressed forms snapshot."""

from __future__ import annotations

from pathlib import Path

from flows.progress import report
from storage.forms import InflateLimit, IngestSummary
from storage.forms import ingest as _ingest

__all__ = ["run"]


def run(sources: list[str], root: str | Path, *, fmt: str | None = None, inflate: dict | None = None) -> IngestSummary:
    """Read, adapt and account for every row of `sources`; write the snapshot; return its summary.
    `inflate`: InflateLimit's fields (Settings.inflate_limit), how far a compressed file may inflate."""
    return _ingest(list(sources), root, fmt=fmt, progress=_report, inflate=InflateLimit(**(inflate or {})))


def _report(files_read: int, files: int, rows: int) -> None:
    report("ingest", files_read, files, unit="files", rows=rows)
