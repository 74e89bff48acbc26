"""Forms snapshots: the store's content-addressed canonical runs tables, written once, read by id.

    <root>/forms/<snapshot_id>/runs.parquet     canonical runs, sorted (race_date, race_id, box, dog_id)
    <root>/forms/<snapshot_id>/rejects.parquet  source_file, source_row (1-based data row, header excluded), reason
                                                (a gruviz_core.formats.REASONS code), raw (JSON of the row's cells as strings)
    <root>/forms/<snapshot_id>/manifest.json    counts, files with sha256, rejects_by_reason, warnings, accounting identity
    <root>/forms/LATEST                         newest snapshot id

What a snapshot holds is computed by gruviz_core.formats.reader (`Forms`: runs, rejects, accounting,
content id) from the files flows.sources reads; the ingest stage (flows/stages/ingest.py) decides
whether forms/LATEST moves to it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from gruviz_core import __version__
from gruviz_core.errors import NotFoundError
from gruviz_core.formats.reader import SNAPSHOT_VERSION, Forms
from gruviz_core.schema import conform
from storage import fs
from storage.atomic import publish_dir, read_pointer, remove_tree, write_json_atomic, write_text_atomic
from storage.fs import StorePath
from storage.layout import StoreLayout

__all__ = [
    "latest_snapshot",
    "load_rejects",
    "load_snapshot",
    "read_manifest",
    "set_latest",
    "snapshot_keys",
    "write_snapshot",
]


def write_snapshot(root: str | StorePath, forms: Forms) -> StorePath:
    """Write `forms` as the snapshot of its content id (once: an id already written is left as it is) and
    return its directory; forms/LATEST does not move (set_latest).

    Local: written under forms/.tmp and published whole. Object storage: written under its final prefix,
    manifest.json last (readers require it)."""
    layout = StoreLayout.at(root)
    summary, runs, rejects = forms.summary, forms.runs, forms.rejects
    final = layout.snapshot(summary.snapshot_id)
    if (final / "manifest.json").exists():
        return final
    remote = not isinstance(final, Path)
    tmp = final if remote else layout.forms / ".tmp" / f"{summary.snapshot_id}.{uuid.uuid4().hex[:8]}"
    if not remote:
        tmp.mkdir(parents=True, exist_ok=True)
    try:
        fs.write_parquet(runs, tmp / "runs.parquet")
        fs.write_parquet(rejects, tmp / "rejects.parquet")
        write_json_atomic(tmp / "manifest.json", _manifest(forms))
        if remote:
            return final  # same content, same id: a concurrent writer of the same snapshot writes the same objects
        try:
            publish_dir(tmp, final)
        except (FileExistsError, OSError):
            if not (final / "manifest.json").exists():  # someone else published the same content: fine
                raise
    finally:
        if not remote:
            remove_tree(tmp)
    return final


def set_latest(root: str | StorePath, snapshot_id: str) -> None:
    """Point forms/LATEST at `snapshot_id` (written atomically, after the snapshot)."""
    write_text_atomic(StoreLayout.at(root).forms / "LATEST", snapshot_id + "\n")


def load_snapshot(root: str | StorePath, snapshot_id: str | None = None) -> pd.DataFrame:
    """The canonical runs table of a snapshot (None = LATEST)."""
    path = _snapshot_dir(root, snapshot_id) / "runs.parquet"
    return conform(fs.read_parquet(path), where=str(path))


def snapshot_keys(root: str | StorePath, snapshot_id: str) -> pd.DataFrame:
    """The (dog_id, race_id) of every run in a snapshot, as text: which runs a later snapshot adds."""
    path = _snapshot_dir(root, snapshot_id) / "runs.parquet"
    return fs.read_parquet(path, columns=["dog_id", "race_id"]).astype(str)


def load_rejects(root: str | StorePath, snapshot_id: str | None = None) -> pd.DataFrame:
    """The rejected rows of a snapshot (None = LATEST): source_file, source_row, reason, raw."""
    return fs.read_parquet(_snapshot_dir(root, snapshot_id) / "rejects.parquet")


def read_manifest(root: str | StorePath, snapshot_id: str | None = None) -> dict:
    """The manifest.json of a snapshot (None = LATEST): counts, files, rejects_by_reason, warnings."""
    return json.loads((_snapshot_dir(root, snapshot_id) / "manifest.json").read_text(encoding="utf-8"))


def latest_snapshot(root: str | StorePath) -> str | None:
    """The id forms/LATEST names, or None before the first ingest."""
    return read_pointer(StoreLayout.at(root).forms / "LATEST")


def _snapshot_dir(root: str | StorePath, snapshot_id: str | None) -> StorePath:
    layout = StoreLayout.at(root)
    sid = snapshot_id or latest_snapshot(root)
    if sid is None:
        raise NotFoundError(f"{layout.forms}: no forms snapshot yet; run `gruviz ingest SOURCE...` first")
    d = layout.snapshot(sid)
    if not (d / "manifest.json").exists():
        raise NotFoundError(f"{d}: no such forms snapshot; `ls {layout.forms}` lists the ids there")
    return d


def _manifest(forms: Forms) -> dict:
    """manifest.json: the summary, the accounting identity, per-file entries, the date span, versions."""
    summary, dates = forms.summary, forms.runs["race_date"]
    return {
        **summary.to_dict(),
        "identity": "rows_in = accepted + rejected + duplicates_merged",
        "balanced": summary.balanced,
        "files": forms.files,
        "sources": sorted({m["format"] for m in forms.files}),
        "first_date": None if dates.dropna().empty else str(dates.min().date()),
        "last_date": None if dates.dropna().empty else str(dates.max().date()),
        "columns": list(forms.runs.columns),
        "snapshot_version": SNAPSHOT_VERSION,
        "code_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
