"""The run store: every hidden state and gate of every step of every dog, in Zarr v3.

    <run>/states.zarr/   root, per dog (dims "dog"):  row_start, row_size (int64), dog_id, dog_name (string)
                         per row (dims "obs"):        step (int32, 1-based), race_date (int32 days since
                                                      1970-01-01, CF-decoded by xarray), race_id (string),
                                                      won, market_prob (float32, NaN unknown)
                         score (obs, seed) float32    each seed's score of each race
                         seed<k>/h, z, r              (obs, layer, unit) float16, Blosc lz4 bitshuffle,
                                                      NaN fill, inner chunks ~512 KiB, shards of <= 128 chunks
                         seed<k>/summary/<name>       (obs, layer) float32 per-row summaries from the float32
                                                      states (gruviz_core.sequences.ROW_SUMMARY), NaN fill
    <run>/plan.json      the row layout and blocks (written by begin_run)
    <run>/blocks/<b>.json  done marker of block b, written after its last shard is on disk
    <run>/blocks/<b>.seed<k>.zarr/  block b's per-unit accumulators of seed k (a small Zarr group of opaque
                         arrays; the stats stage merges them), written before the marker
    <run>/run.json       run metadata (finish_run)
    <run>/_COMPLETE      written last, just before the atomic rename that publishes the run

Publishing, LATEST, the nightly lock and hygiene are storage.runs' (the run's lifecycle).

`seed<k>` is the k-th model of the set (k = 0..S-1); `run.json["seeds"]` holds their seed values.

Rows are the dogs' rows in ragged order with no padding (`row_start` = the Sequences offsets).
Blocks are chosen by rows: block b owns whole shards [b * block_shards, (b + 1) * block_shards),
and computes every dog with a row in them; a dog straddling two blocks is computed by both and
each writes only its own rows. So concurrent writers never share a chunk or a shard (writers that
do lose rows silently), and a block is a unit of work any process or machine can run.

Writing (begin_run, BlockWriter) is storage.writer's; this module reads the states.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr
from zarr.core.sync import sync as zarr_sync

from gruviz_core.errors import NotFoundError, StoreError
from gruviz_core.results import DogStates  # re-exported: the record moved to gruviz_core.results
from gruviz_core.sequences import ROW_META, ROW_SUMMARY  # re-exported: the per-row members a block writes
from storage.layout import RunLayout
from storage.runs import COMPLETE, RunPlan
from storage.store import StorePath, location, zarr_store

__all__ = ["ROW_META", "ROW_SUMMARY", "prefetch", "open_states", "open_dataset", "StatesReader", "DogStates", "Chunk",
           "STATES"]

STATES = "states.zarr"
"""Name of the states store inside a run (its path: storage.layout.RunLayout.states)."""
_DATE_FILL = np.iinfo(np.int32).min
_EPOCH_UNITS = "days since 1970-01-01"


def _units_path(run_dir: StorePath, block: int, seed: int) -> StorePath:
    """<run>/blocks/<b>.seed<k>.zarr: block b's per-unit accumulators of seed position k, beside its marker."""
    return RunLayout.at(run_dir).blocks / f"{block}.seed{seed}.zarr"

# ----------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Chunk:
    """A run of rows read in one go (one shard, or the part of one inside the rows asked for)."""

    start: int
    """First row."""
    stop: int
    """One past the last row."""
    h: np.ndarray
    """(n, L, H) float32."""
    z: np.ndarray
    """(n, L, H) float32."""
    r: np.ndarray
    """(n, L, H) float32."""


def open_states(run_dir: str | StorePath, *, allow_incomplete: bool = False) -> StatesReader:
    """Read a published run (with _COMPLETE); `allow_incomplete` lets the stats stage read its tmp run."""
    run_dir = location(run_dir)
    if not RunLayout.at(run_dir).states.exists():
        raise NotFoundError(f"{run_dir}: no {STATES}; not a run directory (see storage.states.latest_run)")
    if not allow_incomplete and not RunLayout.at(run_dir).complete.exists():
        raise StoreError(f"{run_dir}: no {COMPLETE} marker, the run is not published (it may still be written or "
                         "its writer died); read a published run, or pass allow_incomplete=True inside the pipeline")
    return StatesReader(run_dir)


class StatesReader:
    """Reads a run's states store: per-dog index, per-row tables, each dog's states, shard-sized chunks."""

    def __init__(self, run_dir: StorePath):
        self.run_dir = run_dir
        store = zarr_store(RunLayout.at(run_dir).states, read_only=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._root = zarr.open_group(store, mode="r")
        attrs = self._root.attrs
        self.seeds: list[int] = list(attrs["seeds"])
        self.n_layers: int = int(attrs["n_layers"])
        self.n_units: int = int(attrs["n_units"])
        self._row_start = self._root["row_start"][:]
        self._row_size = self._root["row_size"][:]
        self.n_dogs: int = len(self._row_start)
        self.n_obs: int = int(self._root["step"].shape[0])
        self._dog_id = _strs(self._root["dog_id"][:]) if self.n_dogs else np.array([], dtype=object)
        self._dog_name: np.ndarray | None = None
        self._pos: dict[str, int] | None = None
        self._arrays: dict[str, zarr.Array] = {}

    @property
    def meta(self) -> dict:
        """run.json (empty before finish_run)."""
        p = RunLayout.at(self.run_dir).run_json
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}

    @property
    def shard_rows(self) -> int:
        return int(self._arr("seed0/h").shards[0])

    def _arr(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self._root[name]
        return self._arrays[name]

    def _names(self) -> np.ndarray:
        if self._dog_name is None:
            self._dog_name = _strs(self._root["dog_name"][:]) if self.n_dogs else np.array([], dtype=object)
        return self._dog_name

    def index(self) -> pd.DataFrame:
        """Per dog: dog_index, dog_id, dog_name, row_start, row_size."""
        return pd.DataFrame({
            "dog_index": np.arange(self.n_dogs, dtype=np.int64), "dog_id": self._dog_id,
            "dog_name": self._names(), "row_start": self._row_start, "row_size": self._row_size,
        })

    def rows(self) -> pd.DataFrame:
        """Per row: step, race_date, race_id, won, market_prob, dog_index."""
        return pd.DataFrame({
            "step": self._arr("step")[:], "race_date": _days(self._arr("race_date")[:]),
            "race_id": _strs(self._arr("race_id")[:]), "won": self._arr("won")[:],
            "market_prob": self._arr("market_prob")[:],
            "dog_index": np.repeat(np.arange(self.n_dogs, dtype=np.int64), self._row_size),
        })

    def race_dates(self) -> np.ndarray:
        """(obs,) datetime64[D] every row's race date (NaT unknown): `rows()`'s one column, without the strings."""
        return _days(self._arr("race_date")[:])

    def scores(self) -> np.ndarray:
        """(obs, seed) float32 every seed's score of every race."""
        return self._arr("score")[:]

    def row_summaries(self, seed: int = 0) -> dict[str, np.ndarray]:
        """{ROW_SUMMARY name: (obs, L) float32} the per-row summaries the blocks stored for seed position `seed`."""
        self._check_seed(seed)
        g = f"seed{seed}/summary/"
        try:
            arrays = [self._arr(g + name) for name in ROW_SUMMARY]
        except KeyError:
            raise NotFoundError(f"{self.run_dir}: seed{seed} has no per-row summaries ({g}...); the run was "
                                "written before the blocks stored them: extract the night again") from None
        return dict(zip(ROW_SUMMARY, _read_all(arrays, [(slice(None),)] * len(arrays))))

    def read_units(self, seed: int = 0) -> list[dict[str, np.ndarray]]:
        """Every block's per-unit accumulators of seed position `seed` (`BlockWriter.write_units`), block order."""
        self._check_seed(seed)
        plan = RunPlan.load(self.run_dir)
        out = []
        for b in range(plan.n_blocks):
            p = _units_path(self.run_dir, b, seed)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    group = zarr.open_group(zarr_store(p, read_only=True), mode="r", zarr_format=3)
                    arrays = dict(group.arrays())
            except FileNotFoundError:
                raise NotFoundError(f"{p}: block {b} left no per-unit accumulators for seed{seed}; the run was "
                                    "written before the blocks kept them, or the block died: extract the night "
                                    "again") from None
            out.append(dict(zip(arrays, _read_all(list(arrays.values()), [...] * len(arrays)))))
        return out

    def dog_index(self, dog_id: str) -> int:
        if self._pos is None:
            self._pos = {str(d): i for i, d in enumerate(self._dog_id)}
        try:
            return self._pos[str(dog_id)]
        except KeyError:
            raise NotFoundError(f"{self.run_dir}: no dog {dog_id!r} in this run ({self.n_dogs} dogs); "
                                "see index() for the ids") from None

    def dog(self, dog_id: str, seed: int = 0) -> DogStates:
        """Every step of one dog (by id) under seed position `seed`."""
        return self.dog_at(self.dog_index(dog_id), seed)

    def dog_at(self, d: int, seed: int = 0) -> DogStates:
        """Every step of the dog at position `d`."""
        return self._dogs_at([d], seed)[0]

    def dogs(self, ids: Sequence[str], seed: int = 0) -> list[DogStates]:
        """Every step of each dog (by id) under seed position `seed`, read in one round trip."""
        return self._dogs_at([self.dog_index(i) for i in ids], seed)

    def _dogs_at(self, positions: Sequence[int], seed: int) -> list[DogStates]:
        self._check_seed(seed)
        g = f"seed{seed}/"
        arrays = [self._arr(n) for n in ("race_date", "race_id", "score", g + "h", g + "z", g + "r")]
        spans = [(int(self._row_start[d]), int(self._row_start[d] + self._row_size[d])) for d in positions]
        sels = [sel for a, b in spans for sel in ((slice(a, b),), (slice(a, b),), (slice(a, b), seed),
                                                   *((slice(a, b),),) * 3)]
        got = _read_all(arrays * len(spans), sels)  # every dog's 6 reads at once, decoded on zarr's threads
        out = []
        for i, (d, (a, b)) in enumerate(zip(positions, spans)):
            date, race, score, h, z, r = got[6 * i: 6 * i + 6]
            out.append(DogStates(
                dog_index=d, dog_id=str(self._dog_id[d]), dog_name=str(self._names()[d]),
                step=np.arange(1, b - a + 1, dtype=np.int32), race_date=_days(date), race_id=_strs(race),
                score=score, h=h.astype(np.float32), z=z.astype(np.float32), r=r.astype(np.float32)))
        return out

    def iter_chunks(self, seed: int = 0, rows: tuple[int, int] | slice | None = None) -> Iterator[Chunk]:
        """h, z, r of rows [start, stop) (all by default) in pieces aligned to shards, one read each."""
        self._check_seed(seed)
        start, stop = (0, self.n_obs) if rows is None else (
            (rows.start or 0, self.n_obs if rows.stop is None else rows.stop) if isinstance(rows, slice) else rows)
        start, stop = max(0, int(start)), min(self.n_obs, int(stop))
        g, sr = f"seed{seed}/", self.shard_rows
        s0 = start
        while s0 < stop:
            s1 = min((s0 // sr + 1) * sr, stop)
            yield Chunk(s0, s1, *(self._arr(g + q)[s0:s1].astype(np.float32) for q in ("h", "z", "r")))
            s0 = s1

    def _check_seed(self, seed: int) -> None:
        if not 0 <= seed < len(self.seeds):
            raise NotFoundError(f"{self.run_dir}: seed position {seed} out of range; the run has "
                                f"{len(self.seeds)} seeds {self.seeds} at positions 0..{len(self.seeds) - 1}")


def prefetch(it: Iterator, depth: int = 1) -> Iterator:
    """Iterate `it` in a worker thread, `depth` items ahead: reads (zarr/blosc release the GIL) overlap the
    statistics of the previous chunk. Memory: depth more chunks. The reader's error reaches the consumer."""
    end = object()
    with cf.ThreadPoolExecutor(1, thread_name_prefix="gruviz-prefetch") as pool:
        ahead = collections.deque(pool.submit(next, it, end) for _ in range(depth))
        while (x := ahead.popleft().result()) is not end:
            ahead.append(pool.submit(next, it, end))
            yield x


def _read_all(arrays: Sequence[zarr.Array], selections: Sequence[tuple]) -> list[np.ndarray]:
    """Read several selections concurrently on zarr's event loop (a dog's 6 reads cost about one)."""

    async def gather():
        return await asyncio.gather(*(a.async_array.getitem(s) for a, s in zip(arrays, selections)))

    return list(zarr_sync(gather()))

def _strs(a: np.ndarray) -> np.ndarray:
    """Zarr's variable-length strings (numpy StringDType) as an object array of str."""
    return a.astype(object)


def _days(a: np.ndarray) -> np.ndarray:
    """int32 days since the epoch (fill = unknown) -> datetime64[D]."""
    out = a.astype("datetime64[D]")
    out[a == _DATE_FILL] = np.datetime64("NaT")
    return out


def open_dataset(run_dir: str | StorePath, seed: int = 0, *, allow_incomplete: bool = False):
    """The run as one lazy xarray.Dataset: h, z, r (obs, layer, unit), per-row and per-dog variables."""
    import xarray as xr

    reader = open_states(run_dir, allow_incomplete=allow_incomplete)
    reader._check_seed(seed)
    path = RunLayout.at(reader.run_dir).states
    consolidated = (path / "zarr.json").exists() and "consolidated_metadata" in (path / "zarr.json").read_text()
    store = zarr_store(path, read_only=True)
    base = xr.open_zarr(store, consolidated=consolidated or None, zarr_format=3)
    states = xr.open_zarr(store, group=f"seed{seed}", consolidated=False, zarr_format=3)
    ds = xr.merge([base, states], compat="override", join="override")
    return ds.assign_coords(
        layer=np.arange(reader.n_layers), unit=np.arange(reader.n_units), seed=np.array(reader.seeds),
    ).assign_attrs(seed=reader.seeds[seed], run_dir=str(run_dir))
