"""Forms snapshots: ingest source files into a content-addressed canonical runs table.

    <root>/forms/<snapshot_id>/runs.parquet     canonical runs, sorted (race_date, race_id, box, dog_id)
    <root>/forms/<snapshot_id>/rejects.parquet  source_file, source_row (1-based data row, header excluded), reason
                                                (a gruviz_core.formats.REASONS code), raw (JSON of the row's cells as strings)
    <root>/forms/<snapshot_id>/manifest.json    counts, files with sha256, rejects_by_reason, accounting identity
    <root>/forms/LATEST                         newest snapshot id

The snapshot id is a hash of the content (runs and rejects), so the same input gives the same id
whatever the order or location of its files. Every input row is accounted for:
`rows_in = accepted + rejected + duplicates_merged`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from gruviz_core import __version__
from gruviz_core.errors import GruvizError, InputError, NotFoundError, StoreError, UnreadableFileError
from gruviz_core.formats import Adapted, adapt
from gruviz_core.schema import CANONICAL_COLUMNS, conform
from storage.atomic import publish_dir, read_pointer, remove_tree, write_json_atomic, write_text_atomic
from storage.layout import StoreLayout

__all__ = [
    "IngestSummary",
    "ingest",
    "load_snapshot",
    "load_rejects",
    "read_manifest",
    "latest_snapshot",
    "expand_sources",
    "read_source",
]

SUFFIXES = (".csv", ".csv.gz", ".parquet")
KEY = ["race_id", "dog_id"]
"""One row per (dog, race): rows sharing this key are duplicates, merged."""
SORT = ["race_date", "race_id", "box", "dog_id"]
SNAPSHOT_VERSION = "forms-v1"
"""Bump when the canonical content of a snapshot changes meaning (it is part of the id)."""


@dataclass(frozen=True)
class IngestSummary:
    """What an ingest did; also stored in the snapshot's manifest.json."""

    snapshot_id: str
    """Content hash of the snapshot (16 hex)."""
    rows_in: int
    """Data rows read from all files."""
    accepted: int
    """Rows in runs.parquet."""
    rejected: int
    """Rows in rejects.parquet."""
    duplicates_merged: int
    """Rows folded into another row of the same (dog, race)."""
    dogs: int
    """Distinct dog_id."""
    races: int
    """Distinct race_id."""
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    """Reason code -> rejected rows."""
    files: list[str] = field(default_factory=list)
    """Source files read, in the order read."""

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.accepted + self.rejected + self.duplicates_merged

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- public API


def ingest(sources: list[str] | str, root: str | Path, *, fmt: str | None = None) -> IngestSummary:
    """Read every source (files, directories, globs), write a forms snapshot, point forms/LATEST at it."""
    layout = StoreLayout.at(root)
    files = expand_sources(sources)
    runs_parts, reject_parts, file_meta = [], [], []
    rows_in = 0
    for path in files:
        raw = read_source(path)
        adapted = adapt(raw, fmt, where=str(path))
        rows_in += len(raw)
        runs_parts.append(adapted.runs.assign(_file=str(path)))
        reject_parts.append(_reject_table(raw, adapted, path))
        file_meta.append(
            {"path": str(path), "sha256": _sha256(path), "bytes": path.stat().st_size, "rows": len(raw),
             "format": _fmt_of(adapted, fmt), "accepted": len(adapted.runs), "rejected": len(adapted.rejects)}
        )
    combined = pd.concat(runs_parts, ignore_index=True) if runs_parts else conform(pd.DataFrame(columns=CANONICAL_COLUMNS))
    runs, duplicates = _merge_duplicates(combined)
    rejects = _concat_rejects(reject_parts)
    summary_counts = {
        "rows_in": rows_in,
        "accepted": len(runs),
        "rejected": len(rejects),
        "duplicates_merged": duplicates,
    }
    if rows_in != len(runs) + len(rejects) + duplicates:
        raise StoreError(f"ingest accounting broken: {summary_counts}; this is a bug in storage.forms, please report it")
    snapshot_id = _content_id(runs, rejects)
    by_reason = {str(k): int(v) for k, v in rejects["reason"].value_counts().sort_index().items()}
    summary = IngestSummary(
        snapshot_id=snapshot_id,
        **summary_counts,
        dogs=int(runs["dog_id"].nunique()),
        races=int(runs["race_id"].nunique()),
        rejects_by_reason=by_reason,
        files=[str(p) for p in files],
    )
    _write_snapshot(layout, summary, runs, rejects, file_meta)
    return summary


def load_snapshot(root: str | Path, snapshot_id: str | None = None) -> pd.DataFrame:
    """The canonical runs table of a snapshot (None = LATEST)."""
    path = _snapshot_dir(root, snapshot_id) / "runs.parquet"
    return conform(pd.read_parquet(path), where=str(path))


def load_rejects(root: str | Path, snapshot_id: str | None = None) -> pd.DataFrame:
    """The rejected rows of a snapshot (None = LATEST): source_file, source_row, reason, raw."""
    return pd.read_parquet(_snapshot_dir(root, snapshot_id) / "rejects.parquet")


def read_manifest(root: str | Path, snapshot_id: str | None = None) -> dict:
    """The manifest.json of a snapshot (None = LATEST): counts, files, rejects_by_reason."""
    return json.loads((_snapshot_dir(root, snapshot_id) / "manifest.json").read_text(encoding="utf-8"))


def latest_snapshot(root: str | Path) -> str | None:
    """The id forms/LATEST names, or None before the first ingest."""
    return read_pointer(StoreLayout.at(root).forms / "LATEST")


def expand_sources(sources: list[str] | str) -> list[Path]:
    """Files named, found under directories (recursively) or matched by globs; sorted, each once."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    found: list[Path] = []
    for src in map(str, sources):
        p = Path(src).expanduser()
        if p.is_dir():
            found += [f for f in p.rglob("*") if f.is_file() and _readable_suffix(f)]
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(src):
            matches = [Path(m) for m in glob.glob(os.path.expanduser(src), recursive=True)]
            found += [m for m in matches if m.is_file() and _readable_suffix(m)]
            if not matches:
                raise InputError(f"{src}: the glob matches no file; check the pattern")
        else:
            raise UnreadableFileError(f"{src}: no such file or directory")
    files = sorted({f.resolve() for f in found})
    if not files:
        raise InputError(f"{', '.join(map(str, sources))}: no .csv, .csv.gz or .parquet files found")
    return files


def read_source(path: str | Path) -> pd.DataFrame:
    """A source file as a raw table: CSV cells as strings (utf-8, else latin-1), Parquet as typed."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            raw = pd.read_parquet(path)
        elif name.endswith(".csv") or name.endswith(".csv.gz") or name.endswith(".txt"):
            raw = _read_csv(path)
        else:
            raise UnreadableFileError(f"{path}: not a .csv, .csv.gz or .parquet file")
    except GruvizError:
        raise
    except Exception as exc:  # pandas/pyarrow/gzip raise many kinds; all mean "cannot read this file"
        raise UnreadableFileError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); is it a CSV/Parquet file?") from exc
    raw.columns = [str(c).strip().lstrip("\ufeff") for c in raw.columns]
    return raw


# ---------------------------------------------------------------- helpers


def _read_csv(path: Path) -> pd.DataFrame:
    kw = dict(dtype=str, keep_default_na=False, na_filter=False, compression="infer")
    try:
        return pd.read_csv(path, encoding="utf-8-sig", **kw)
    except UnicodeDecodeError:
        return pd.read_csv(path, encoding="latin-1", **kw)
    except pd.errors.EmptyDataError as exc:
        raise UnreadableFileError(f"{path}: empty file (no header line); remove it or add a header") from exc


def _readable_suffix(p: Path) -> bool:
    return p.name.lower().endswith(SUFFIXES)


def _fmt_of(adapted: Adapted, fmt: str | None) -> str:
    if fmt:
        return fmt
    src = adapted.runs["source"]
    return str(src.iloc[0]) if len(src) else "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reject_table(raw: pd.DataFrame, adapted: Adapted, path: Path) -> pd.DataFrame:
    rows = adapted.rejects["source_row"].to_numpy()
    cells = raw.iloc[rows - 1].astype("string").fillna("")
    raw_json = [json.dumps(r, ensure_ascii=False, sort_keys=False) for r in cells.to_dict("records")]
    return pd.DataFrame(
        {"source_file": str(path), "source_row": rows.astype(np.int64),
         "reason": adapted.rejects["reason"].astype(str).to_numpy(), "raw": raw_json}
    )


def _concat_rejects(parts: list[pd.DataFrame]) -> pd.DataFrame:
    cols = {"source_file": "string", "source_row": "int64", "reason": "string", "raw": "string"}
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()})
    out = pd.concat(parts, ignore_index=True).astype(cols)
    return out.sort_values(["source_file", "source_row"], kind="stable").reset_index(drop=True)


def _merge_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per (race_id, dog_id): duplicates give each column its first non-missing value, in content order."""
    df = df.drop(columns=["_file", "source_row"])
    # content order, independent of file order: sort keys, then a hash of the whole row as tie-break
    df["_h"] = pd.util.hash_pandas_object(df, index=False).to_numpy()
    df = df.sort_values(SORT + ["_h"], kind="stable", na_position="last").reset_index(drop=True)
    dup = df.duplicated(KEY, keep=False).to_numpy()
    n_dup = 0
    if dup.any():
        clash = df[dup]
        merged = clash.groupby(KEY, sort=False, dropna=False).first()
        merged = merged.reset_index()
        n_dup = len(clash) - len(merged)
        df = pd.concat([df[~dup], merged], ignore_index=True)
    runs = conform(df, where="merged runs")
    runs = _one_display_name(runs)
    runs = runs.sort_values(SORT, kind="stable", na_position="last").reset_index(drop=True)
    return runs, n_dup


def _one_display_name(runs: pd.DataFrame) -> pd.DataFrame:
    """A dog spelled differently across files gets one display name: its most frequent, ties alphabetical."""
    if runs.empty:
        return runs
    counts = runs.groupby(["dog_id", "dog_name"], sort=False).size().reset_index(name="n")
    counts = counts.sort_values(["dog_id", "n", "dog_name"], ascending=[True, False, True], kind="stable")
    best = counts.drop_duplicates("dog_id").set_index("dog_id")["dog_name"]
    runs["dog_name"] = runs["dog_id"].map(best).astype("string")
    return runs


def _content_id(runs: pd.DataFrame, rejects: pd.DataFrame) -> str:
    h = hashlib.sha256(SNAPSHOT_VERSION.encode())
    h.update(",".join(f"{c}:{runs[c].dtype}" for c in runs.columns).encode())
    h.update(pd.util.hash_pandas_object(runs, index=False).to_numpy().tobytes())
    # rejects by content (file name, not its directory; row; reason; cells), order-free
    rej = pd.DataFrame(
        {"f": rejects["source_file"].map(lambda p: Path(p).name), "r": rejects["source_row"],
         "why": rejects["reason"], "raw": rejects["raw"]}
    )
    hr = np.sort(pd.util.hash_pandas_object(rej, index=False).to_numpy()) if len(rej) else np.array([], np.uint64)
    h.update(hr.tobytes())
    return h.hexdigest()[:16]


def _snapshot_dir(root: str | Path, snapshot_id: str | None) -> Path:
    layout = StoreLayout.at(root)
    sid = snapshot_id or latest_snapshot(root)
    if sid is None:
        raise NotFoundError(f"{layout.forms}: no forms snapshot yet; run `gruviz ingest SOURCE...` first")
    d = layout.snapshot(sid)
    if not (d / "manifest.json").exists():
        raise NotFoundError(f"{d}: no such forms snapshot; `ls {layout.forms}` lists the ids there")
    return d


def _write_snapshot(layout: StoreLayout, summary: IngestSummary, runs: pd.DataFrame,
                    rejects: pd.DataFrame, file_meta: list[dict]) -> None:
    final = layout.snapshot(summary.snapshot_id)
    if not (final / "manifest.json").exists():
        tmp = layout.forms / ".tmp" / f"{summary.snapshot_id}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            runs.to_parquet(tmp / "runs.parquet", index=False)
            rejects.to_parquet(tmp / "rejects.parquet", index=False)
            dates = runs["race_date"]
            manifest = {
                **summary.to_dict(),
                "identity": "rows_in = accepted + rejected + duplicates_merged",
                "balanced": summary.balanced,
                "files": file_meta,
                "sources": sorted({m["format"] for m in file_meta}),
                "first_date": None if dates.empty else str(dates.min().date()),
                "last_date": None if dates.empty else str(dates.max().date()),
                "columns": list(runs.columns),
                "snapshot_version": SNAPSHOT_VERSION,
                "code_version": __version__,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            write_json_atomic(tmp / "manifest.json", manifest)
            try:
                publish_dir(tmp, final)
            except (FileExistsError, OSError):
                if not (final / "manifest.json").exists():  # someone else published the same content: fine
                    raise
        finally:
            remove_tree(tmp)
    write_text_atomic(layout.forms / "LATEST", summary.snapshot_id + "\n")
