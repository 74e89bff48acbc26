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

from collections.abc import Sequence
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gruviz_core import __version__
from gruviz_core.errors import NotFoundError, StoreError
from gruviz_core.formats.reader import SNAPSHOT_VERSION, Forms
from gruviz_core.schema import CANONICAL, conform, placed_from_place
from storage.store import Store, StorePath, json_bytes, open_store

_FORMS = "forms"
_DTYPES = {c.name: c.dtype for c in CANONICAL}
_MANIFEST = "manifest.json"
"""Written last into a snapshot: a snapshot without it does not exist for readers."""

__all__ = [
    "latest_snapshot",
    "load_rejects",
    "load_snapshot",
    "load_snapshot_columns",
    "read_manifest",
    "set_latest",
    "snapshot_keys",
    "write_snapshot",
]


def write_snapshot(root: str | StorePath, forms: Forms) -> StorePath:
    """Write `forms` as the snapshot of its content id (once: an id already written is left as it is) and
    return its directory; forms/LATEST does not move (set_latest). Staged, then published whole with
    manifest.json last (readers require it)."""
    store = open_store(root)
    key = f"{_FORMS}/{forms.summary.snapshot_id}"
    if store.exists(f"{key}/{_MANIFEST}"):
        return store.location(key)
    try:
        staged = store.stage(key)
    except StoreError:
        if store.exists(f"{key}/{_MANIFEST}"):  # the same content staged by another writer: the same snapshot
            return store.location(key)
        raise
    try:
        store.write_parquet(f"{staged}/runs.parquet", forms.runs)
        store.write_parquet(f"{staged}/rejects.parquet", forms.rejects)
        store.publish(staged, key, marker=_MANIFEST, body=json_bytes(_manifest(forms)))
    except BaseException as exc:
        published = store.exists(f"{key}/{_MANIFEST}")
        if staged != key or not published:
            store.discard(staged)  # the temporary directory, or on object storage the partial prefix
        if not (isinstance(exc, StoreError) and published):  # else another writer published the same content
            raise
    return store.location(key)


def set_latest(root: str | StorePath, snapshot_id: str) -> None:
    """Point forms/LATEST at `snapshot_id` (written atomically, after the snapshot)."""
    open_store(root).set_pointer(f"{_FORMS}/LATEST", snapshot_id)


def load_snapshot(root: str | StorePath, snapshot_id: str | None = None) -> pd.DataFrame:
    """The canonical runs table of a snapshot (None = LATEST)."""
    store, key = _snapshot(root, snapshot_id)
    return conform(store.read_parquet(f"{key}/runs.parquet"), where=str(store.location(f"{key}/runs.parquet")))


def load_snapshot_columns(root: str | StorePath, snapshot_id: str, columns: Sequence[str]) -> pd.DataFrame:
    """Some columns of a snapshot's runs table, in its row order: numbers and dates in their canonical dtypes, text
    columns as pandas Categoricals whose categories are sorted (codes order as the text does: 4 bytes a row or
    less, where the text would cost its length again). A column the snapshot lacks is missing (<NA>); `placed`
    comes from finish_pos and field_size there, as `conform` does. What the features stage reads in passes."""
    store, key = _snapshot(root, snapshot_id)
    with store.open(f"{key}/runs.parquet") as f:
        pf = pq.ParquetFile(f)
        have = set(pf.schema_arrow.names)
        want = list(dict.fromkeys(columns))
        derive_placed = "placed" in want and "placed" not in have
        read = [c for c in want if c in have]
        if derive_placed:
            read += [c for c in ("finish_pos", "field_size") if c in have and c not in read]
        text = [c for c in read if _DTYPES[c] == "string" and _is_text(pf.schema_arrow.field(c).type)]
        n = pf.metadata.num_rows
        pf = pq.ParquetFile(f, read_dictionary=text)
        out: dict[str, pd.Series] = {}
        for name in read:  # a column at a time: Arrow's copy of one column at most beside the frame
            col = pf.read(columns=[name], use_threads=False).column(0)
            out[name] = _categories_sorted(col) if name in text else _canonical(name, col)
            del col
            pa.default_memory_pool().release_unused()  # the pool keeps freed buffers, as resident memory, otherwise
    for name in want:
        if name not in out:
            out[name] = pd.Series(pd.NA, index=pd.RangeIndex(n), dtype=_DTYPES[name])
    if derive_placed:
        out["placed"] = placed_from_place(out["finish_pos"], out["field_size"])
    return pd.DataFrame({name: out[name] for name in want})


def _categories_sorted(col: pa.ChunkedArray) -> pd.Series:
    s = pd.Series(col.unify_dictionaries().to_pandas() if col.num_chunks else col.to_pandas())
    if not isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype("category")
    cats = s.cat.categories
    return s if cats.is_monotonic_increasing else s.cat.reorder_categories(cats.sort_values())


def _canonical(name: str, col: pa.ChunkedArray) -> pd.Series:
    mapper = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
              pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.bool_(): pd.BooleanDtype()}.get
    return pd.Series(col.to_pandas(types_mapper=mapper)).astype(_DTYPES[name])


def snapshot_keys(root: str | StorePath, snapshot_id: str) -> pd.DataFrame:
    """The (dog_id, race_id) of every run in a snapshot, as text: which runs a later snapshot adds."""
    store, key = _snapshot(root, snapshot_id)
    return store.read_parquet(f"{key}/runs.parquet", columns=["dog_id", "race_id"]).astype(str)


def load_rejects(root: str | StorePath, snapshot_id: str | None = None) -> pd.DataFrame:
    """The rejected rows of a snapshot (None = LATEST): source_file, source_row, reason, raw."""
    store, key = _snapshot(root, snapshot_id)
    return store.read_parquet(f"{key}/rejects.parquet")


def read_manifest(root: str | StorePath, snapshot_id: str | None = None) -> dict:
    """The manifest.json of a snapshot (None = LATEST): counts, files, rejects_by_reason, warnings."""
    store, key = _snapshot(root, snapshot_id)
    return store.read_json(f"{key}/{_MANIFEST}")


def latest_snapshot(root: str | StorePath) -> str | None:
    """The id forms/LATEST names, or None before the first ingest."""
    return open_store(root).pointer(f"{_FORMS}/LATEST")


def _snapshot(root: str | StorePath, snapshot_id: str | None) -> tuple[Store, str]:
    """The store and the key of a written snapshot (None = LATEST); NotFoundError naming what is missing."""
    store = open_store(root)
    sid = snapshot_id or latest_snapshot(root)
    if sid is None:
        raise NotFoundError(f"{store.location(_FORMS)}: no forms snapshot yet; run `gruviz ingest SOURCE...` first")
    key = f"{_FORMS}/{sid}"
    if not store.exists(f"{key}/{_MANIFEST}"):
        raise NotFoundError(f"{store.location(key)}: no such forms snapshot; `ls {store.location(_FORMS)}` lists "
                            "the ids there")
    return store, key


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


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
