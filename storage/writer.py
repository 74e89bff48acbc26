"""Writing a run's states store: the arrays laid out by begin_run, then block by block, each block owning whole
shards (see storage.states for the layout). A block streams: for each shard it owns and each seed, dogs touching
the shard go through the model in length-sorted batches, worker threads fill a shard buffer from each batch, and a
writer thread compresses and writes the whole shard while the next one is computed (at most two shard sets exist:
memory is bounded by a few shards, whatever the number of dogs)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync as zarr_sync

from gruviz_core.errors import ConfigError, StoreError
from gruviz_core.records import to_json
from gruviz_core.sequences import ROW_META, ROW_SUMMARY
from storage.layout import RunLayout
from storage.runs import BlockMarker, RunPlan, stage_run, write_marker
from storage.states import _DATE_FILL, _EPOCH_UNITS, _units_path
from storage.store import StorePath, open_store, str_objects, zarr_store

__all__ = ["begin_run", "BlockWriter", "block_span", "ShardBuffers", "CHUNK_BYTES", "SHARD_CHUNKS", "MIN_SHARDS"]

CHUNK_BYTES = 512 * 1024
"""Target size of one uncompressed inner chunk of h/z/r (measured best on 2 cores)."""
SHARD_CHUNKS = 128
"""Most inner chunks per shard: one file per ~64 MiB of float16 states."""
MIN_SHARDS = 8
"""Smaller runs get smaller shards, so compute overlaps writes and blocks have shards to own."""
def _compressor() -> BloscCodec:
    # the GRU's float16 states hardly compress (about 1.1x): lz4 gives zstd-1's size at 2-3x its speed
    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


_WRITE_CONFIG = {"write_empty_chunks": True}
"""Writers skip zarr's per-chunk 'all fill value?' test: every row written is data, and the test cost more
than the compression."""


# ----------------------------------------------------------------------------------------- writing


def begin_run(
    root: str | Path, run_id: str, meta: dict, *, offsets: np.ndarray, dog_id: np.ndarray, dog_name: np.ndarray,
    n_layers: int, n_units: int, seeds: Sequence[int], block_dogs: int | None = None,
    block_shards: int | None = None, chunk_rows: int | None = None, shard_chunks: int | None = None,
    parallel: int = 1,
) -> RunPlan:
    """Create runs/.tmp/<run_id>.<nonce>/ with every array and the per-dog metadata written.

    offsets: (dog + 1,); dog_id, dog_name: (dog,). Per-row arrays (dog_index, step, ROW_META) are
    created empty: each block writes its own rows' shards (BlockWriter.write_rows), so the work
    scales out with the blocks and this process never holds a row's metadata.
    Blocks span `block_shards` shards, or at most about `block_dogs` dogs in whole shards, or the whole
    run. From `block_dogs`, the shards are shared out evenly among the blocks, and with `parallel` > 1
    (blocks that run at once) the number of blocks is rounded up to a multiple of it (one shard per
    block at least), so no block is left running alone at the end: on the Iggy night, 2 blocks of 5
    and 3 shards became 2 of 4. `chunk_rows` overrides the ~512 KiB inner chunk (tests use tiny ones);
    shards hold `shard_chunks` chunks, by default 128 or fewer so the run has >= 8 shards.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n_dogs, n_obs = len(offsets) - 1, int(offsets[-1]) if len(offsets) else 0
    _check_inputs(run_id, offsets, n_obs, n_dogs, dog_id=dog_id, dog_name=dog_name)
    chunk_rows = int(chunk_rows or max(1, CHUNK_BYTES // (2 * n_layers * n_units)))
    if shard_chunks is None:  # up to 128 chunks, fewer so a run has >= MIN_SHARDS units to pipeline and share
        shard_chunks = int(np.clip(-(-n_obs // (chunk_rows * MIN_SHARDS)), 1, SHARD_CHUNKS))
    if n_layers < 1 or n_units < 1 or not seeds or shard_chunks < 1:
        raise ConfigError(f"run {run_id}: n_layers={n_layers}, n_units={n_units}, seeds={list(seeds)}, "
                          f"shard_chunks={shard_chunks}; each must be >= 1")
    shard_rows = chunk_rows * shard_chunks
    n_shards = max(1, -(-n_obs // shard_rows))
    if block_shards is None:
        if block_dogs:
            mean_len = n_obs / max(n_dogs, 1)
            most = max(1, int(np.ceil(block_dogs * mean_len / shard_rows)))
            n_blocks = -(-n_shards // most)
            if parallel > 1:
                n_blocks = min(n_shards, -(-n_blocks // parallel) * parallel)
            block_shards = -(-n_shards // n_blocks)
        else:
            block_shards = n_shards
    tmp = stage_run(root, run_id)
    plan = RunPlan(str(tmp), run_id, n_dogs, n_obs, n_layers, n_units, tuple(int(s) for s in seeds),
                   chunk_rows, shard_rows, int(block_shards))
    _create_arrays(plan, meta, offsets, dog_id, dog_name)
    plan.save()
    open_store(tmp).write_json("meta.json", meta)
    return plan


def _check_inputs(run_id: str, offsets: np.ndarray, n_obs: int, n_dogs: int, **arrays: np.ndarray) -> None:
    if len(offsets) < 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise ConfigError(f"run {run_id}: offsets must start at 0 and never decrease (got {offsets[:5]}...)")
    for name, a in arrays.items():
        want = n_dogs if name in ("dog_id", "dog_name") else n_obs
        if len(a) != want:
            raise ConfigError(f"run {run_id}: {name} has {len(a)} entries, expected {want} "
                              f"({'dogs' if want == n_dogs else 'rows'} from offsets)")


def _create_arrays(plan: RunPlan, meta: dict, offsets, dog_id, dog_name):
    store = zarr_store(RunLayout.at(plan.path).states)
    root = zarr.create_group(store, attributes={
        "run_id": plan.run_id, "seeds": list(plan.seeds), "n_layers": plan.n_layers, "n_units": plan.n_units,
        "layout": "contiguous ragged array: rows of dog d are row_start[d] : row_start[d] + row_size[d]",
        "Conventions": "CF-1.11",
        "featureType": "trajectory",
    })
    n_obs, n_dogs, cr, sr = plan.n_obs, plan.n_dogs, plan.chunk_rows, plan.shard_rows
    dog_chunk = max(1, min(n_dogs, 1 << 16))
    row_chunk = (max(1, min(cr, n_obs)),)
    row_shard = (max(1, min(sr, n_obs)) // row_chunk[0] * row_chunk[0],)
    dog_coords = "dog_id dog_name"  # CF `coordinates`: xarray makes these coordinates on `dog`
    row_coords = "dog_index step race_date race_id"  # ... and these on `obs`

    def per_dog(name, data, dtype, attributes, **kw):
        a = root.create_array(name, shape=(n_dogs,), dtype=dtype, chunks=(dog_chunk,), dimension_names=("dog",),
                              attributes=attributes, **kw)
        if n_dogs:
            a[:] = data

    def per_row(name, dtype, attributes, group=root, **kw):  # written block by block (BlockWriter.write_rows)
        if dtype is not str:  # numbers: Blosc, so whole shards take the direct encoder (zarr's own path cost
            kw.setdefault("compressors", _compressor())  # ~0.25 ms of Python per 16 KiB inner chunk)
        group.create_array(name, shape=(n_obs,), dtype=dtype, chunks=row_chunk, shards=row_shard,
                           dimension_names=("obs",), attributes=attributes, **kw)

    sizes = np.diff(offsets)
    per_dog("row_start", offsets[:-1], "int64", {"long_name": "first row (obs) of the dog", "units": "1",
                                                  "coordinates": dog_coords})
    per_dog("row_size", sizes, "int64", {"long_name": "number of rows (races) of the dog", "units": "1",
                                         "sample_dimension": "obs", "coordinates": dog_coords})
    per_dog("dog_id", str_objects(dog_id), str,
            {"long_name": "dog id", "cf_role": "trajectory_id"})
    per_dog("dog_name", str_objects(dog_name), str,
            {"long_name": "dog name (display)"})
    index_attrs = {"long_name": "index of the row's dog on the dog dimension", "instance_dimension": "dog"}
    per_row("dog_index", "int32", index_attrs)
    per_row("step", "int32", {"long_name": "race number in the dog's observed history (1 = first)", "units": "1"})
    per_row("race_date", "int32", {"long_name": "date of the race", "units": _EPOCH_UNITS,
                                   "calendar": "proleptic_gregorian", "_FillValue": int(_DATE_FILL)},
            fill_value=_DATE_FILL)
    per_row("race_id", str, {"long_name": "race id"})
    per_row("won", "float32", {"long_name": "won the race (1), lost (0), unknown (NaN)", "units": "1",
                               "coordinates": row_coords}, fill_value=np.nan)
    per_row("market_prob", "float32", {"long_name": "market implied win probability, renormalised within the race",
                                       "units": "1", "coordinates": row_coords}, fill_value=np.nan)
    root.create_array("score", shape=(n_obs, len(plan.seeds)), dtype="float32", chunks=(row_chunk[0], 1),
                      shards=(row_shard[0], 1), compressors=_compressor(), fill_value=np.nan,
                      dimension_names=("obs", "seed"),
                      attributes={"long_name": "model score of the race (softmax within the race gives win "
                                  "probabilities)", "units": "1", "coordinates": row_coords})
    state_chunk = (cr, plan.n_layers, plan.n_units)
    state_shard = (sr, plan.n_layers, plan.n_units)
    for k in range(len(plan.seeds)):
        g = root.create_group(f"seed{k}", attributes={"seed": plan.seeds[k]})
        # a copy of dog_index per seed group: xarray's DataTree inherits only indexed coordinates, and
        # CF `coordinates` name variables of the same group (runs of one value: it compresses to ~nothing)
        per_row("dog_index", "int32", index_attrs, group=g)
        for name, what in (("h", "GRU hidden state after the step"), ("z", "GRU update gate (1 keeps the old state)"),
                           ("r", "GRU reset gate")):
            g.create_array(name, shape=(n_obs, plan.n_layers, plan.n_units), dtype="float16", chunks=state_chunk,
                           shards=state_shard, compressors=_compressor(), fill_value=np.nan,
                           dimension_names=("obs", "layer", "unit"),
                           attributes={"long_name": what, "units": "1", "coordinates": "dog_index"})
        sg = g.create_group("summary", attributes={"about": "per-row summaries of the float32 states, written by "
                                                   "the extraction blocks; the stats stage aggregates these"})
        for name, what in ROW_SUMMARY.items():  # a chunk per shard of h: a few hundred KiB, read whole by the stats
            sg.create_array(name, shape=(n_obs, plan.n_layers), dtype="float32", chunks=(row_shard[0], plan.n_layers),
                            compressors=_compressor(), fill_value=np.nan, dimension_names=("obs", "layer"),
                            attributes={"long_name": what, "units": "1"})


def _row_arrays(offsets: np.ndarray, a: int, b: int, rows: Mapping[str, np.ndarray], row_base: int) -> dict:
    """{name: (b - a,) data} of every per-row metadata array for rows [a, b); rows[...] start at row_base."""
    dog = (np.searchsorted(offsets, np.arange(a, b), "right") - 1).astype(np.int32)  # (n,) dog of each row
    sl = slice(a - row_base, b - row_base)
    days = np.asarray(rows["race_date"][sl], dtype="datetime64[D]")
    return {
        "dog_index": dog,
        "step": (np.arange(a, b) - offsets[dog] + 1).astype(np.int32),
        "race_date": np.where(np.isnat(days), _DATE_FILL, days.astype(np.int64)).astype(np.int32),
        "race_id": str_objects(rows["race_id"][sl]),
        "won": np.asarray(rows["won"][sl], dtype=np.float32),
        "market_prob": np.asarray(rows["market_prob"][sl], dtype=np.float32),
    }


def block_span(plan_or_tmpdir: RunPlan | str | StorePath, block_index: int) -> tuple[int, int]:
    """[start, stop) input rows a block needs: every row of every dog with a row in the block (a dog
    straddling two blocks is computed by both). Reads only the run's per-dog row starts."""
    plan = plan_or_tmpdir if isinstance(plan_or_tmpdir, RunPlan) else RunPlan.load(plan_or_tmpdir)
    a, b = plan.block_rows(block_index)
    if b <= a:
        return a, a
    root = zarr.open_group(zarr_store(RunLayout.at(plan.path).states), mode="r")
    offsets = np.append(root["row_start"][:], plan.n_obs).astype(np.int64)
    first, end = _dogs_with_rows(offsets, a, b)
    return int(offsets[first]), int(offsets[end])


def _dogs_with_rows(offsets: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """[first, end) dog indices whose rows overlap rows [a, b) (a < b), offsets: (dog + 1,)."""
    return int(np.searchsorted(offsets, a, "right")) - 1, int(np.searchsorted(offsets, b, "left"))


class _ShardEncoder:
    """Writes whole shards of a sharded array by encoding its inner chunks with numcodecs directly (`_Chunk`:
    numbers as bytes then Blosc or zstd, strings as vlen-utf8 then either): the Zarr v3 sharding format (encoded
    chunks, then the (offset, nbytes) uint64 index and its crc32c, index at the end), one copy of the data; an
    unsharded array's chunks likewise (a chunk is its own "shard"). Zarr's own write copies each inner chunk several
    times and runs ~0.25 ms of Python per chunk while holding the GIL (the store wrote at a fifth of the codec's
    speed, and the GRU thread waited; race_id's strings held the GIL ~0.2 s of a 3 s run at 50k dogs). `of`
    returns None for an array laid out otherwise (zarr's path is used); tests/test_states.py checks the bytes are
    zarr's own."""

    _EMPTY = np.iinfo(np.uint64).max

    def __init__(self, array: zarr.Array, codec, inner_rows: int, shard_rows: int, plain: bool = False):
        self.array, self.codec, self.inner_rows, self.shard_rows = array, codec, inner_rows, shard_rows
        self.fill = array.metadata.fill_value
        self.plain = plain
        """An unsharded array (codecs: bytes or vlen-utf8, then a compressor): each chunk is one encoded piece."""

    @classmethod
    def of(cls, array: zarr.Array) -> _ShardEncoder | None:
        from zarr.codecs import ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        meta = array.metadata
        codecs = tuple(getattr(meta, "codecs", ()))
        plain = cls._chunk_codec(codecs)
        if plain is not None and tuple(meta.chunk_grid.chunk_shape[1:]) == tuple(array.shape[1:]):
            rows = int(meta.chunk_grid.chunk_shape[0])  # unsharded: a chunk is a "shard"
            return cls(array, plain, rows, rows, plain=True)
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sh = codecs[0]
        inner = cls._chunk_codec(tuple(sh.codecs))
        if (inner is None or sh.index_location != ShardingCodecIndexLocation.end
                or not cls._is_index_codecs(tuple(sh.index_codecs))
                or tuple(sh.chunk_shape[1:]) != tuple(meta.chunk_grid.chunk_shape[1:])
                or any(s % c for s, c in zip(array.shape[1:], sh.chunk_shape[1:]))):
            return None  # inner chunks split rows only (a shard may hold one column of several, as the scores)
        return cls(array, inner, int(sh.chunk_shape[0]), int(meta.chunk_grid.chunk_shape[0]))

    @staticmethod
    def _chunk_codec(codecs: tuple):
        """What encodes one chunk as these codecs do, or None: little-endian bytes then Blosc (numbers), or
        vlen-utf8 then zstd or Blosc (strings)."""
        from numcodecs import VLenUTF8, Zstd
        from zarr.codecs import BytesCodec, VLenUTF8Codec, ZstdCodec

        if len(codecs) != 2:
            return None
        first, comp = codecs
        if isinstance(comp, BloscCodec):
            from numcodecs import Blosc

            shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
            squeeze = Blosc(cname=str(comp.cname.value), clevel=int(comp.clevel), shuffle=shuffle[str(comp.shuffle.value)],
                            blocksize=int(comp.blocksize), typesize=int(comp.typesize))
        elif isinstance(comp, ZstdCodec):
            squeeze = Zstd(level=comp.level, checksum=comp.checksum)
        else:
            return None
        if isinstance(first, BytesCodec) and first.endian is not None and str(first.endian.value) == "little":
            return _Chunk(None, squeeze)
        if isinstance(first, VLenUTF8Codec):
            return _Chunk(VLenUTF8(), squeeze)
        return None

    @staticmethod
    def _is_index_codecs(codecs: tuple) -> bool:
        from zarr.codecs import BytesCodec, Crc32cCodec

        return (len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and str(codecs[0].endian.value) == "little"
                and isinstance(codecs[1], Crc32cCodec))

    def covers(self, sel: tuple[slice, ...]) -> bool:
        """Whether the selection is whole shards: rows from a shard's start to a shard's end (the last may end at the
        array's end), and in each other dimension all of it or exactly one shard's span."""
        s0, s1 = sel[0].start, sel[0].stop
        n = self.array.shape[0]
        rows = s0 % self.shard_rows == 0 and s0 < s1 <= n and (s1 % self.shard_rows == 0 or s1 == n)
        span = self.array.metadata.chunk_grid.chunk_shape[1:]
        return rows and all(
            (d.start or 0) % c == 0 and ((d.stop if d.stop is not None else size) - (d.start or 0)) in (c, size)
            for d, c, size in zip(sel[1:], span, self.array.shape[1:]))

    def encode(self, buf: np.ndarray) -> bytes:
        """One shard's bytes from its rows buf: (n <= shard_rows, ...) in the array's dtype."""
        import google_crc32c

        buf = self.codec.rows(buf, self.array.dtype)
        if self.plain:
            return bytes(self.codec.encode(self._padded(buf)))
        n_inner = self.shard_rows // self.inner_rows
        index = np.full((n_inner, 2), self._EMPTY, dtype="<u8")
        parts, at = [], 0
        for j in range(n_inner):
            a, b = j * self.inner_rows, (j + 1) * self.inner_rows
            if a >= len(buf):
                break  # past the array's end: an empty chunk
            enc = self.codec.encode(self._padded(buf[a:b]))
            parts.append(enc)
            index[j] = at, len(enc)
            at += len(enc)
        raw = index.reshape(n_inner, *([1] * (buf.ndim - 1)), 2).tobytes()
        return b"".join([*parts, raw, google_crc32c.value(raw).to_bytes(4, "little")])

    def _padded(self, piece: np.ndarray) -> np.ndarray:
        """A whole inner chunk: at the array's edge, padded with the fill value."""
        if len(piece) == self.inner_rows:
            return piece
        pad = np.full((self.inner_rows - len(piece), *piece.shape[1:]), self.fill, dtype=piece.dtype)
        return np.concatenate([piece, pad])

    async def write(self, sel: tuple[slice, ...], buf: np.ndarray) -> None:
        """Write buf at the selection of whole shards (`covers`), one shard after another."""
        from zarr.core.buffer import default_buffer_prototype

        span = self.array.metadata.chunk_grid.chunk_shape[1:]
        cols = tuple((d.start or 0) // c for d, c in zip(sel[1:], span)) + (0,) * (buf.ndim - len(sel))
        for a in range(0, len(buf), self.shard_rows):
            key = self.array.metadata.encode_chunk_key(((sel[0].start + a) // self.shard_rows, *cols))
            data = await asyncio.to_thread(self.encode, buf[a : a + self.shard_rows])
            await (self.array.store_path / key).set(default_buffer_prototype().buffer.from_bytes(data))


@dataclass(frozen=True)
class _Chunk:
    """One chunk's encoding: `vlen` (numcodecs VLenUTF8) for strings, None for numbers as little-endian bytes;
    then `squeeze`, the compressor (numcodecs Blosc or Zstd)."""

    vlen: object
    squeeze: object

    def rows(self, buf: np.ndarray, dtype) -> np.ndarray:
        """buf as the chunks are cut from: contiguous in the array's dtype, or an object array of str."""
        if self.vlen is not None:
            return np.asarray(buf, dtype=object)
        return np.ascontiguousarray(buf, dtype=dtype)

    def encode(self, piece: np.ndarray) -> bytes:
        return self.squeeze.encode(piece if self.vlen is None else self.vlen.encode(piece))


def _writable(a: zarr.Array) -> zarr.Array:
    return a.with_config(_WRITE_CONFIG)


@dataclass(frozen=True)
class ShardBuffers:
    """One seed's in-memory shard: rows [s0, s1) of everything a block writes for it."""

    seed: int
    """Seed position k (the store's seed<k>)."""
    s0: int
    """First row."""
    s1: int
    """One past the last row."""
    h: np.ndarray
    """(n, L, H) float16 states."""
    z: np.ndarray
    """(n, L, H) float16 update gates."""
    r: np.ndarray
    """(n, L, H) float16 reset gates."""
    score: np.ndarray
    """(n, 1) float32 scores."""
    summary: dict[str, np.ndarray]
    """{ROW_SUMMARY name: (n, L) float32} per-row summaries."""
    filled: list[int] = field(default_factory=lambda: [0])
    """[rows filled so far], added to by the workers filling the set (under their shared lock): the writer writes a
    shard only once every row of it was filled, so a reused buffer never carries an earlier shard's rows."""


class BlockWriter:
    """Writes the shards of one block of a run: the stage computes, this persists.

    Open it as a context manager; `shards()` yields each shard's rows [s0, s1) and the dogs with
    rows in it, `buffers(k, s0, s1)` gives seed k's empty shard buffers, `write(buffers, after=...)`
    hands them to a writer thread that waits for the futures still filling them (so compute overlaps
    filling, compression and writes), `write_units(k, arrays)` keeps the block's per-unit
    accumulators, and `done(marker)` writes the block's done marker last.
    """

    def __init__(self, plan_or_tmpdir: RunPlan | str | StorePath, block_index: int):
        self.plan = plan_or_tmpdir if isinstance(plan_or_tmpdir, RunPlan) else RunPlan.load(plan_or_tmpdir)
        self.block_index = block_index
        root = zarr.open_group(zarr_store(RunLayout.at(self.plan.path).states), mode="r+")
        self.offsets = np.append(root["row_start"][:], self.plan.n_obs).astype(np.int64)
        """(dog + 1,) row offsets of every dog of the run."""
        self.dog_ids = root["dog_id"][:] if self.plan.n_dogs else np.array([], dtype=object)
        self.rows = self.plan.block_rows(block_index)
        self._arrays = [tuple(_writable(root[f"seed{k}/{q}"]) for q in ("h", "z", "r"))
                        for k in range(len(self.plan.seeds))]
        self._encoders = [tuple(_ShardEncoder.of(a) for a in arrs) for arrs in self._arrays]
        self._summary = [{name: _writable(root[f"seed{k}/summary/{name}"]) for name in ROW_SUMMARY}
                         for k in range(len(self.plan.seeds))]
        self._summary_enc = [{name: _ShardEncoder.of(a) for name, a in arrs.items()} for arrs in self._summary]
        self._score = _writable(root["score"])
        self._score_enc = _ShardEncoder.of(self._score)
        self._root = root
        a, b = self.rows
        first, end = _dogs_with_rows(self.offsets, a, b) if b > a else (0, 0)
        self.first_dog, self.dogs_total = first, end - first
        self.span = ((int(self.offsets[self.first_dog]), int(self.offsets[self.first_dog + self.dogs_total]))
                     if b > a else (a, a))
        """[start, stop) input rows the block reads: every row of its dogs (see `block_span`)."""
        self._writer = _ShardWriter()
        self._free: list[ShardBuffers] = []  # whole-shard buffer sets written and free again
        self._free_lock = threading.Lock()
        self._sets: dict[int, ShardBuffers] = {}  # id of a handed-out h view -> its whole set

    def __enter__(self) -> BlockWriter:
        self._writer.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.__exit__(exc_type, exc, tb)

    def shards(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(s0, s1, dogs) per shard of the block: rows [s0, s1) and the dogs (indices) with rows there."""
        a, b = self.rows
        offsets = self.offsets
        for s0 in range(a, b, self.plan.shard_rows):
            s1 = min(s0 + self.plan.shard_rows, b)
            dogs = np.arange(*_dogs_with_rows(offsets, s0, s1), dtype=np.int64)
            yield s0, s1, dogs[offsets[dogs + 1] > offsets[dogs]]

    def dogs_finished(self, s1: int) -> int:
        """Dogs of this block whose rows all lie before row s1."""
        finished = int(np.searchsorted(self.offsets[1:], s1, "right")) - self.first_dog
        return min(max(finished, 0), self.dogs_total)

    def reserve(self) -> None:
        """Wait for room for one more shard set in memory (at most two exist)."""
        self._writer.reserve()

    def write_rows(self, rows: Mapping[str, np.ndarray], row_base: int) -> None:
        """Hand the block's own rows of per-row metadata to the writer thread: dog_index and step from
        the offsets, ROW_META from `rows` ({name: array} of rows from `row_base`, covering the block)."""
        a, b = self.rows
        if b <= a:
            return
        for name in ROW_META:
            if row_base > a or row_base + len(rows[name]) < b:
                raise ConfigError(f"run {self.plan.run_id} block {self.block_index}: {name} has {len(rows[name])} "
                                  f"rows from row {row_base}; the block writes rows {a}..{b}")
        data = _row_arrays(self.offsets, a, b, rows, row_base)
        arrays = [(self._root[name], data[name]) for name in data]
        arrays += [(self._root[f"seed{k}/dog_index"], data["dog_index"]) for k in range(len(self.plan.seeds))]
        rows_sel = (slice(a, b),)
        items = [(_writable(arr), rows_sel, d, _ShardEncoder.of(arr)) for arr, d in arrays]
        self._writer.reserve()
        self._writer.put(items)

    def buffers(self, k: int, s0: int, s1: int) -> ShardBuffers:
        """Seed k's buffers for rows [s0, s1) (call `reserve()` first: they are large): NaN when new.

        A set the writer thread has written is reused as it is: the computing thread neither allocates nor fills
        ~3 x 15 MB per shard (0.35 s of the GRU thread's 7.5 s at 50,000 dogs). The fillers count the rows they
        fill, and the writer refuses a shard with a row left unfilled (see `ShardBuffers.filled`)."""
        n = s1 - s0
        with self._free_lock:
            full = self._free.pop() if self._free else None
        if full is None:
            full = self._new_set()
        buf = ShardBuffers(k, s0, s1, full.h[:n], full.z[:n], full.r[:n], full.score[:n],
                           {name: a[:n] for name, a in full.summary.items()})
        self._sets[id(buf.h)] = full
        return buf

    def _new_set(self) -> ShardBuffers:
        rows, L = self.plan.shard_rows, self.plan.n_layers
        return ShardBuffers(0, 0, rows, *(np.full((rows, L, self.plan.n_units), np.nan, np.float16) for _ in range(3)),
                            score=np.full((rows, 1), np.nan, np.float32),
                            summary={name: np.full((rows, L), np.nan, np.float32) for name in ROW_SUMMARY})

    def _recycle(self, full: ShardBuffers) -> None:
        """In the writer thread, once a set is written: free for `buffers`."""
        with self._free_lock:
            self._free.append(full)

    def write(self, buf: ShardBuffers, *, after: Sequence[cf.Future] = ()) -> None:
        """Hand a reserved shard's buffers to the writer thread, which writes them once every future in
        `after` (the work still filling them) is done; a failed future fails the block."""
        arrs, enc, k = self._arrays[buf.seed], self._encoders[buf.seed], buf.seed
        rows = (slice(buf.s0, buf.s1),)
        items = [(arrs[0], rows, buf.h, enc[0]), (arrs[1], rows, buf.z, enc[1]), (arrs[2], rows, buf.r, enc[2])]
        items += [(self._summary[k][name], rows, buf.summary[name], self._summary_enc[k][name])
                  for name in ROW_SUMMARY if name in buf.summary]
        items.append((self._score, (*rows, slice(k, k + 1)), buf.score, self._score_enc))
        full = self._sets.pop(id(buf.h), None)  # buffers of `buffers` go back to the free sets once written
        where = f"run {self.plan.run_id} block {self.block_index}: seed {k}'s shard of rows {buf.s0}..{buf.s1}"
        self._writer.put(items, after=after, check=lambda: _check_filled(buf, where),
                         then=None if full is None else (lambda: self._recycle(full)))

    def write_units(self, k: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Keep seed k's per-unit accumulators of this block's rows ({name: array}, opaque here) beside its
        done marker, for the stats stage to merge (`read_units`). Call after the with block, before `done`:
        a block run again replaces them, and only a block with its marker counts."""
        group = zarr.create_group(zarr_store(_units_path(self.plan.path, self.block_index, k)), overwrite=True)
        for name, a in arrays.items():
            a = np.asarray(a)
            group.create_array(name, data=a, chunks=a.shape)  # one chunk each: read whole
        with warnings.catch_warnings():  # consolidated metadata (a zarr-python extension to v3): one read opens it
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(group.store)

    def done(self, marker: dict) -> dict:
        """Write the block's done marker (after every shard is on disk: call after the with block).

        The marker names its run, so a marker can never count for another run's block."""
        record = BlockMarker(**{**marker, "run_id": self.plan.run_id, "block": self.block_index,
                                "rows": tuple(marker["rows"]), "check_max_err": tuple(marker["check_max_err"])})
        write_marker(record, self.plan.path)
        return to_json(record)


def _check_filled(buf: ShardBuffers, where: str) -> None:
    if buf.filled[0] != buf.s1 - buf.s0:
        raise StoreError(f"{where}: {buf.filled[0]} rows were filled, the shard has {buf.s1 - buf.s0}; not written")


class _ShardWriter:
    """Writes whole shards in one worker thread, so compute overlaps compression and writes.

    At most `in_flight` shard sets exist at once (one being written, one being filled): `reserve()`
    before allocating the next set blocks until the writer has finished an earlier one.
    """

    def __init__(self, in_flight: int = 2):
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="gruviz-shard-writer")
        self._slots = threading.Semaphore(in_flight)
        self._error: BaseException | None = None

    def __enter__(self) -> _ShardWriter:
        return self

    def reserve(self) -> None:
        """Wait for room for one more shard set in memory."""
        self._slots.acquire()
        self._raise()

    def put(self, items, *, after: Sequence[cf.Future] = (), check=None, then=None) -> None:
        """Hand over a reserved shard set: [(array, selection, values, _ShardEncoder or None)] (see `_write_all`),
        written once the futures in `after` are done and `check()` passed; `then()` runs after the write."""
        self._raise()
        self._pool.submit(self._write, items, tuple(after), check, then)

    def _write(self, items, after, check, then) -> None:
        try:
            for f in after:
                f.result()  # re-raises a filling job's error
            if check is not None:
                check()
            if self._error is None:
                _write_all(items)
                if then is not None:
                    then()
        except BaseException as e:  # re-raised in the computing thread
            self._error = e
        finally:
            self._slots.release()

    def _raise(self) -> None:
        if self._error is not None:
            raise StoreError(f"shard writer failed: {self._error!r}") from self._error

    def __exit__(self, exc_type, exc, tb) -> None:
        self._pool.shutdown(wait=True)
        if exc is None:
            self._raise()


def _write_all(items: Sequence[tuple]) -> None:
    """Write several (array, selection, values[, _ShardEncoder]) concurrently on zarr's event loop: one array's
    compression overlaps another's file write. A whole shard with an encoder goes through it."""

    def one(a: zarr.Array, sel: tuple, v: np.ndarray, enc: _ShardEncoder | None = None):
        if enc is not None and enc.covers(sel):
            return enc.write(sel, v)
        return a.async_array.setitem(sel, v)

    async def gather():
        await asyncio.gather(*(one(*item) for item in items))

    zarr_sync(gather())

