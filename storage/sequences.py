"""A snapshot's raw ragged sequences (the features stage's output, a cache), in Zarr v3.

    <root>/features/<snapshot_id>/sequences.zarr/               gruviz's own features
    <root>/features/<snapshot_id>/custom-<key>/sequences.zarr/  built by a team's feature callable

    sequences.zarr/  attributes: feature_names, context_names, CF ragged-array conventions
                     per dog (dims "dog"):  row_start, row_size (int64), dog_id, dog_name (string)
                     per row (dims "obs"):  values (obs, feature), context (obs, context) float32 (NaN unknown),
                                            race_id (string), race_date (int32 days since 1970-01-01, CF-decoded
                                            by xarray), won, market_prob (float32, NaN unknown)
                     _COMPLETE              written last: readers trust a store only with it

The same "contiguous ragged array" layout as the states store (storage.states): rows of dog d are
row_start[d] : row_start[d] + row_size[d]. Per-row arrays come in chunks of about 1 MiB (Blosc zstd,
byte shuffle), sharded, so a reader of rows [a, b) (one extraction block) reads only the chunks
covering them, locally or by ranged reads from object storage, through Zarr itself.

Published whole: written under a temporary sibling renamed into place (local), or under its own prefix with
_COMPLETE written last (object storage); Store.stage / Store.publish hold that difference. `save_sequences`
writes a Sequences at once; `SequenceWriter` takes it block by block of dogs (the features stage's way, so
memory follows a block, not the snapshot), in whole shards, and publishes once at the end.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from gruviz_core.byo import FeatureSpec
from gruviz_core.errors import NotFoundError, StoreError
from gruviz_core.sequences import ROW_META, SequenceRows, Sequences, row_index
from storage.layout import StoreLayout
from storage.store import StorePath, split, str_objects, zarr_store

__all__ = [
    "sequences_path",
    "stored_sequence_spec",
    "save_sequences",
    "SequenceWriter",
    "load_sequences",
    "load_sequence_meta",
    "load_sequence_rows",
    "open_sequence_rows",
    "RowsOnDemand",
    "SEQUENCES",
    "COMPLETE",
]

log = logging.getLogger(__name__)

SEQUENCES = "sequences.zarr"
"""Name of a snapshot's sequences store inside features/<snapshot_id>/ (or its custom-<key>/)."""
COMPLETE = "_COMPLETE"
"""The object written last into a sequences store: without it the store is not read."""
FORMAT = 1
"""Version of this layout (group attribute `gruviz_sequences`); a store of another version is rebuilt."""
CHUNK_BYTES = 1 << 20
"""Target size of one uncompressed chunk of a per-row array (about 300 KiB stored)."""
SHARD_CHUNKS = 32
"""Most chunks per shard: one file or object per ~32 MiB of a per-row array."""
_STR_BYTES = 16
"""About the length of a race id: a chunk of strings holds as many rows as ~1 MiB of them."""
_DATE_FILL = np.iinfo(np.int32).min
_EPOCH_UNITS = "days since 1970-01-01"
_LEGACY = "sequences.npz"
"""The cache file older versions wrote beside the store: dead weight once the store is built."""


def _compressor() -> BloscCodec:
    # zstd-1 with byte shuffle: the model inputs at about a third of their size (lz4: a half), as fast to write
    return BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


def sequences_path(root: str | StorePath, snapshot_id: str, spec: FeatureSpec | None = None) -> StorePath:
    """Where a snapshot's raw sequences are cached: features/<snapshot_id>/sequences.zarr, or under
    custom-<key>/ for sequences built by a team's feature callable."""
    d = StoreLayout.at(root).features(snapshot_id)
    if spec is not None and spec.custom:
        d = d / f"custom-{spec.key}"
    return d / SEQUENCES


def stored_sequence_spec(path: str | StorePath) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(feature names, context names) of cached sequences, or None when absent, incomplete, of another
    layout version, or unreadable (the features stage then builds them again)."""
    store, key = split(path)
    if not store.exists(f"{key}/{COMPLETE}"):
        return None
    try:
        attrs = _open(path).attrs
        if attrs.get("gruviz_sequences") != FORMAT:
            return None
        return tuple(attrs["feature_names"]), tuple(attrs["context_names"])
    except (OSError, ValueError, KeyError):
        log.warning("sequences at %s unreadable; rebuilding", path)
        return None


# ------------------------------------------------------------------ writing


def save_sequences(seqs: Sequences, path: str | StorePath) -> None:
    """Write sequences as one store, whole: readers see the old store or the complete new one, never part."""
    with SequenceWriter(path, seqs.n_obs, seqs.feature_names, seqs.context_names) as writer:
        writer.append(seqs)


class SequenceWriter:
    """Writes a snapshot's sequences block by block of whole dogs, in order (`append`), and publishes the store whole
    at `close`: readers see the old store or the complete new one, never part. Used as a context manager, an error
    (or a kill) before `close` leaves only the staging, discarded here or swept later.

    Memory: the block appended, plus less than one shard of each per-row array not yet written (rows are written in
    whole shards) and the per-dog ids and names, written at `close`."""

    def __init__(self, path: str | StorePath, n_obs: int, feature_names: Sequence[str], context_names: Sequence[str]):
        self._store, self._key = split(path)
        self._staged = self._store.stage(self._key, replace_marker=COMPLETE)
        try:
            self._arrays = _Arrays(self._store.location(self._staged), n_obs, feature_names, context_names)
        except BaseException:
            self._store.discard(self._staged)
            raise

    def append(self, seqs: Sequences) -> None:
        """The next dogs' rows (their offsets counted from their first row)."""
        self._arrays.append(seqs)

    def close(self) -> None:
        """Write what is left, check every row came, publish."""
        self._arrays.finish()
        self._store.publish(self._staged, self._key, marker=COMPLETE, replace=True)
        self._store.remove(_LEGACY)

    def abort(self) -> None:
        """Drop the staging: the old store (if any) stays as it was."""
        self._store.discard(self._staged)

    def __enter__(self) -> SequenceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


_ROW_ARRAYS = ("values", "context", "race_id", "race_date", "won", "market_prob")


class _Arrays:
    """The arrays of one sequences store being written at `at`: per-row arrays created whole (n_obs rows) and filled
    in whole shards as rows arrive; per-dog arrays written at `finish`."""

    def __init__(self, at: StorePath, n_obs: int, feature_names: Sequence[str], context_names: Sequence[str]):
        self.n_obs = int(n_obs)
        self.root = zarr.create_group(zarr_store(at), attributes={
            "gruviz_sequences": FORMAT,
            "feature_names": list(feature_names), "context_names": list(context_names),
            "layout": "contiguous ragged array: rows of dog d are row_start[d] : row_start[d] + row_size[d]",
            "Conventions": "CF-1.11", "featureType": "trajectory",
        })
        row_coords = "race_date race_id"
        floats = {"compressors": _compressor(), "fill_value": np.nan}
        self._per_row("values", "float32", (len(feature_names),), ("obs", "feature"),
                      {"long_name": "what the race showed about the dog (known after it); columns: feature_names",
                       "coordinates": row_coords}, **floats)
        self._per_row("context", "float32", (len(context_names),), ("obs", "context"),
                      {"long_name": "what is known before the race; columns: context_names", "coordinates": row_coords},
                      **floats)
        self._per_row("race_id", str, (), ("obs",), {"long_name": "race id"})
        self._per_row("race_date", "int32", (), ("obs",),
                      {"long_name": "date of the race", "units": _EPOCH_UNITS, "calendar": "proleptic_gregorian",
                       "_FillValue": int(_DATE_FILL)}, fill_value=_DATE_FILL)
        self._per_row("won", "float32", (), ("obs",),
                      {"long_name": "won the race (1), lost (0), unknown (NaN)", "units": "1",
                       "coordinates": row_coords}, **floats)
        self._per_row("market_prob", "float32", (), ("obs",),
                      {"long_name": "market implied win probability, renormalised within the race", "units": "1",
                       "coordinates": row_coords}, **floats)
        self.rows = 0  # rows appended
        self.written = dict.fromkeys(_ROW_ARRAYS, 0)  # rows of each array written
        self.pending: dict[str, list[np.ndarray]] = {name: [] for name in _ROW_ARRAYS}
        self.sizes: list[np.ndarray] = []
        self.dog_id: list[np.ndarray] = []
        self.dog_name: list[np.ndarray] = []

    def _per_row(self, name, dtype, tail, dims, attributes, **kw) -> None:
        item = _STR_BYTES if dtype is str else np.dtype(dtype).itemsize
        chunks, shards = _row_chunks(self.n_obs, item * int(np.prod(tail, dtype=np.int64)))
        self.root.create_array(name, shape=(self.n_obs, *tail), dtype=dtype, chunks=(chunks, *tail),
                               shards=(shards, *tail), dimension_names=dims, attributes=attributes, **kw)

    def append(self, seqs: Sequences) -> None:
        n = seqs.n_obs
        if self.rows + n > self.n_obs:
            raise StoreError(f"sequences: {self.rows + n} rows appended to a store laid out for {self.n_obs}")
        self.rows += n
        self.sizes.append(np.asarray(seqs.row_size, np.int64))
        self.dog_id.append(str_objects(seqs.dog_id))
        self.dog_name.append(str_objects(seqs.dog_name))
        data = {"values": np.asarray(seqs.values, np.float32), "context": np.asarray(seqs.context, np.float32),
                "race_id": str_objects(seqs.race_id), "race_date": _encode_days(seqs.race_date),
                "won": np.asarray(seqs.won, np.float32), "market_prob": np.asarray(seqs.market_prob, np.float32)}
        for name, a in data.items():
            self.pending[name].append(a)
            self._flush(name, last=False)

    def _flush(self, name: str, *, last: bool) -> None:
        """Write the pending rows of `name` up to the last whole shard (all of them when `last`)."""
        arr = self.root[name]
        start, have = self.written[name], sum(len(a) for a in self.pending[name])
        shard = arr.shards[0] if arr.shards else arr.chunks[0]
        stop = start + have if last else (start + have) // shard * shard
        if stop <= start:
            return
        data = self.pending[name][0] if len(self.pending[name]) == 1 else np.concatenate(self.pending[name])
        arr[start:stop] = data[: stop - start]
        self.pending[name] = [data[stop - start:].copy()] if stop - start < len(data) else []  # not a view of it all
        self.written[name] = stop

    def finish(self) -> None:
        if self.rows != self.n_obs:
            raise StoreError(f"sequences: {self.rows} rows appended to a store laid out for {self.n_obs}")
        for name in _ROW_ARRAYS:
            if self.n_obs:
                self._flush(name, last=True)
        sizes = np.concatenate(self.sizes) if self.sizes else np.zeros(0, np.int64)
        n_dogs = len(sizes)
        dog_chunk = (max(1, min(n_dogs, 1 << 16)),)
        dog_coords = "dog_id dog_name"

        def per_dog(name, data, dtype, attributes):
            a = self.root.create_array(name, shape=(n_dogs,), dtype=dtype, chunks=dog_chunk, dimension_names=("dog",),
                                       attributes=attributes)
            if n_dogs:
                a[:] = data

        starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64) if n_dogs else np.zeros(0, np.int64)
        per_dog("row_start", starts, "int64", {"long_name": "first row (obs) of the dog", "units": "1",
                                               "coordinates": dog_coords})
        per_dog("row_size", sizes, "int64", {"long_name": "number of rows (races) of the dog", "units": "1",
                                             "sample_dimension": "obs", "coordinates": dog_coords})
        per_dog("dog_id", _joined(self.dog_id), str, {"long_name": "dog id", "cf_role": "trajectory_id"})
        per_dog("dog_name", _joined(self.dog_name), str, {"long_name": "dog name (display)"})
        with warnings.catch_warnings():  # consolidated metadata is a zarr-python extension to v3: one read opens it all
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(self.root.store)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=object)


def _row_chunks(n_obs: int, row_bytes: int) -> tuple[int, int]:
    """(rows per chunk, rows per shard) of a per-row array whose rows take `row_bytes` each."""
    chunk = max(1, min(CHUNK_BYTES // max(row_bytes, 1), n_obs))
    return chunk, chunk * int(np.clip(-(-n_obs // chunk), 1, SHARD_CHUNKS))


# ------------------------------------------------------------------ reading


def load_sequences(path: str | StorePath) -> Sequences:
    """Every row of the sequences at `path`."""
    root = _open_complete(path)
    n_obs = int(root["values"].shape[0])
    got = _read(root, ("values", "context", *ROW_META), 0, n_obs)
    meta = _dogs(root)
    return Sequences(values=got["values"], context=got["context"], offsets=meta["offsets"], dog_id=meta["dog_id"],
                     dog_name=meta["dog_name"], race_id=got["race_id"], race_date=got["race_date"], won=got["won"],
                     market_prob=got["market_prob"], feature_names=tuple(root.attrs["feature_names"]),
                     context_names=tuple(root.attrs["context_names"]))


def load_sequence_meta(path: str | StorePath) -> dict[str, np.ndarray]:
    """A snapshot's dog metadata: {"offsets": (dog + 1,) int64, "dog_id", "dog_name": (dog,) object}, what
    storage.writer.begin_run takes; no per-row array is read."""
    return _dogs(_open_complete(path))


def load_sequence_rows(path: str | StorePath, start: int, stop: int, meta: Sequence[str] = ROW_META) -> SequenceRows:
    """Rows [start, stop) of a snapshot's model inputs and the `meta` members of ROW_META: only the chunks
    covering those rows are read (ranged reads on object storage), so memory follows the rows asked for."""
    root = _open_complete(path)
    n_obs = int(root["values"].shape[0])
    if not 0 <= start <= stop <= n_obs:
        raise StoreError(f"sequences {path}: rows {start}..{stop} asked for, the store has {n_obs} rows; "
                         "rebuild the features (gruviz ingest)")
    got = _read(root, ("values", "context", *meta), start, stop)
    return SequenceRows(start, got.pop("values"), got.pop("context"), tuple(root.attrs["feature_names"]),
                        tuple(root.attrs["context_names"]), got)


def open_sequence_rows(path: str | StorePath, meta: Sequence[str] = ()) -> SequenceRows:
    """Every row of a snapshot's sequences as a SequenceRows whose `values` and `context` are read on demand
    (`RowsOnDemand`: x[rows] reads only the chunks holding those rows); the `meta` members are read whole."""
    root = _open_complete(path)
    n_obs = int(root["values"].shape[0])
    return SequenceRows(0, RowsOnDemand(root["values"]), RowsOnDemand(root["context"]),
                        tuple(root.attrs["feature_names"]), tuple(root.attrs["context_names"]),
                        _read(root, meta, 0, n_obs) if meta else {})


class RowsOnDemand:
    """A per-row array of a sequences store read by rows when asked: `x[rows]` (a slice, integer or bool array) or
    `x[rows, cols]` -> those rows, decoding only the chunks that hold them. Memory: what is asked, plus a window of
    WINDOW_CHUNKS chunks at a time (Zarr's own orthogonal selection costs about 1 KB per row asked for)."""

    WINDOW_CHUNKS = 8

    def __init__(self, array: zarr.Array):
        self._array = array
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self._window = int(array.chunks[0]) * self.WINDOW_CHUNKS

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, slice):
            return self._array.get_orthogonal_selection((rows, cols))
        rows = row_index(rows, len(self))
        order = None if np.all(rows[1:] >= rows[:-1]) else np.argsort(rows, kind="stable")
        got = self._sorted(rows if order is None else rows[order], cols)
        if order is None:
            return got
        out = np.empty_like(got)
        out[order] = got
        return out

    def _sorted(self, rows: np.ndarray, cols) -> np.ndarray:
        """Rows (ascending) read a window of chunks at a time, windows without any of them skipped."""
        if len(rows) and not 0 <= rows[0] <= rows[-1] < len(self):
            raise IndexError(f"rows {rows[0]}..{rows[-1]} asked for, the array has {len(self)}")
        win = rows // self._window
        cuts = np.r_[0, np.flatnonzero(np.diff(win)) + 1, len(rows)] if len(rows) else np.zeros(1, np.int64)
        parts = []
        for i, j in zip(cuts[:-1], cuts[1:]):
            a = int(win[i]) * self._window
            block = self._array.get_orthogonal_selection((slice(a, min(a + self._window, len(self))), cols))
            parts.append(block[rows[i:j] - a])
        if parts:
            return np.concatenate(parts)
        return self._array.get_orthogonal_selection((slice(0, 0), cols))


def _open(path: StorePath) -> zarr.Group:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return zarr.open_group(zarr_store(path, read_only=True), mode="r", zarr_format=3)


def _open_complete(path: str | StorePath) -> zarr.Group:
    store, key = split(path)
    if not store.exists(f"{key}/{COMPLETE}"):
        raise NotFoundError(f"{path}: no complete sequences store (no {COMPLETE}: never built, or its writer died); "
                            "run the features stage again (gruviz nightly builds it)")
    return _open(path)


def _dogs(root: zarr.Group) -> dict[str, np.ndarray]:
    got = _read(root, ("row_start", "dog_id", "dog_name"), 0, int(root["row_start"].shape[0]))
    offsets = np.append(got["row_start"], root["values"].shape[0]).astype(np.int64)
    return {"offsets": offsets, "dog_id": got["dog_id"], "dog_name": got["dog_name"]}


def _read(root: zarr.Group, names: Sequence[str], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows [start, stop) of arrays `names`, decoded (strings as objects, dates as datetime64[D]); the arrays
    are read at once (each array's chunks concurrently too, by zarr)."""
    arrays = [root[name] for name in names]
    with ThreadPoolExecutor(max(1, len(arrays)), thread_name_prefix="gruviz-seq-read") as pool:
        data = list(pool.map(lambda a: a[start:stop], arrays))
    return {name: _decoded(name, a) for name, a in zip(names, data)}


def _decoded(name: str, a: np.ndarray) -> np.ndarray:
    if name == "race_date":
        return _decode_days(a)
    return a.astype(object) if a.dtype.kind == "T" else a  # zarr's strings (numpy StringDType) as str objects


def _encode_days(days: np.ndarray) -> np.ndarray:
    """datetime64 (NaT unknown) -> int32 days since the epoch (fill = unknown)."""
    d = np.asarray(days, dtype="datetime64[D]")
    return np.where(np.isnat(d), _DATE_FILL, d.astype(np.int64)).astype(np.int32)


def _decode_days(a: np.ndarray) -> np.ndarray:
    """int32 days since the epoch (fill = unknown) -> datetime64[D]."""
    out = a.astype("datetime64[D]")
    out[a == _DATE_FILL] = np.datetime64("NaT")
    return out
