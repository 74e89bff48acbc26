"""The ingest stage: form files (paths, directories, globs) -> a content-addressed forms snapshot.

Reads the sources' bytes (flows.sources), adapts, merges and accounts for every row
(gruviz_core.formats.reader), writes the snapshot (storage.forms) and moves forms/LATEST to it.

Sanity gates: an ingest with no data rows, or in which a file has no accepted row, raises InputError
naming the file(s) and does not move forms/LATEST (in the second case the snapshot is still written,
so that its rejects.parquet can be read).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flows.progress import report
from flows.sources import read_forms
from gruviz_core.errors import InputError
from gruviz_core.formats.reader import Forms, InflateLimit, IngestSummary
from storage.forms import latest_snapshot, set_latest, write_snapshot
from storage.store import StorePath

__all__ = ["ingest", "run"]


def run(sources: list[str], root: str | Path, *, fmt: str | None = None, inflate: dict | None = None) -> IngestSummary:
    """Read, adapt and account for every row of `sources`; write the snapshot; return its summary.
    `inflate`: InflateLimit's fields (Settings.inflate_limit), how far a compressed file may inflate."""
    return ingest(list(sources), root, fmt=fmt, progress=_report, inflate=InflateLimit(**(inflate or {})))


def ingest(sources: list[str] | str, root: str | StorePath, *, fmt: str | None = None,
           progress: Callable[[int, int, int], None] | None = None,
           inflate: InflateLimit | None = None) -> IngestSummary:
    """Read every source (files, directories, globs), write a forms snapshot, point forms/LATEST at it.
    `progress(files_read, files, rows_read)` is called as files are read.

    Raises InputError naming the file(s), without moving forms/LATEST, when there is no data row or
    when a file has no accepted row (the snapshot is written all the same, for its rejects).
    """
    forms = read_forms(sources, fmt=fmt, progress=progress, inflate=inflate)
    s = forms.summary
    if s.rows_in == 0:
        raise InputError(f"{_names(s.files)}: no data rows (empty or header only); nothing ingested, "
                         f"forms/LATEST not moved. Check the export.")
    where = write_snapshot(root, forms)
    empty = [m for m in forms.files if m["accepted"] == 0]
    if empty:
        raise InputError(_no_accepted_message(forms, empty, where / "rejects.parquet", latest_snapshot(root)))
    set_latest(root, s.snapshot_id)
    return s


def _report(files_read: int, files: int, rows: int) -> None:
    report("ingest", files_read, files, unit="files", rows=rows)


def _names(files: list[str], limit: int = 5) -> str:
    shown = ", ".join(files[:limit])
    return shown + (f" and {len(files) - limit} more" if len(files) > limit else "")


def _no_accepted_message(forms: Forms, empty: list[dict], rejects: StorePath, before: str | None) -> str:
    rej = forms.rejects
    lines = []
    for m in empty[:5]:
        if m["rows"] == 0:
            lines.append(f"{m['path']}: no data rows (header only)")
            continue
        why = rej.loc[rej["source_file"] == m["path"], "reason"].value_counts()
        lines.append(f"{m['path']}: none of its {m['rows']} rows accepted (rejected: "
                     + ", ".join(f"{k} {v}" for k, v in why.items()) + ")")
    more = f"; and {len(empty) - 5} more file(s)" if len(empty) > 5 else ""
    return ("; ".join(lines) + more + f". forms/LATEST not moved (still {before or 'unset'}); the rows are in "
            f"{rejects}. Fix the file(s) or leave them out of the sources.")
