"""Whole-shard writes of the states arrays, without zarr's per-chunk machinery.

Writing a shard through `zarr.Array.__setitem__` encodes its inner chunks one by one through an
asyncio codec pipeline: for the (rows, layer, unit) float16 states that cost about 3x the
compression itself (bench/extract.py, `d`). A block always writes whole shards, so it can encode
a shard itself: each inner chunk through numcodecs' Blosc with the array's own settings, the
chunks concatenated, then the shard index (offset and length of each chunk, uint64 little endian)
with its crc32c, at the end. The bytes are the ones zarr writes (tests compare them byte for byte)
and are stored with one `set` through the array's own store, local or remote.

`ShardEncoder.of(array)` returns None for any array whose layout is not exactly that (not
sharded, chunked along more than the row axis, other codecs, index at the start...): those are
written through zarr.
"""

from __future__ import annotations

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as zarr_sync

__all__ = ["ShardEncoder", "write_shard"]

_EMPTY = np.iinfo(np.uint64).max
"""Offset and length of an inner chunk the shard does not hold (zarr's sharding spec)."""


class ShardEncoder:
    """Encodes and stores whole shards of one sharded, Blosc-compressed array chunked along rows only."""

    def __init__(self, array: zarr.Array, blosc, shard_rows: int, chunk_rows: int):
        self.array, self._blosc = array, blosc
        self.shard_rows, self.chunk_rows = shard_rows, chunk_rows
        self._fill = array.metadata.fill_value

    @classmethod
    def of(cls, array: zarr.Array) -> ShardEncoder | None:
        """The encoder for `array`, or None when its layout is not the one this writes."""
        import numcodecs

        meta = array.metadata
        if getattr(meta, "zarr_format", None) != 3 or len(meta.codecs) != 1 or not isinstance(meta.codecs[0], ShardingCodec):
            return None
        shard = meta.codecs[0]
        inner, index = tuple(shard.codecs), tuple(shard.index_codecs)
        dtype = np.dtype(array.dtype)
        if not (len(inner) == 2 and isinstance(inner[0], BytesCodec) and isinstance(inner[1], BloscCodec)
                and len(index) == 2 and isinstance(index[0], BytesCodec) and isinstance(index[1], Crc32cCodec)
                and shard.index_location == ShardingCodecIndexLocation.end
                and _little(inner[0], dtype) and _little(index[0], np.dtype("<u8"))):
            return None
        shard_shape, chunk_shape = tuple(meta.chunk_grid.chunk_shape), tuple(shard.chunk_shape)
        if shard_shape[1:] != tuple(array.shape[1:]) or chunk_shape[1:] != shard_shape[1:]:
            return None  # chunked along more than the rows
        if shard_shape[0] % chunk_shape[0] or dtype.kind not in "fiu":
            return None
        b = inner[1]
        if b.typesize not in (None, dtype.itemsize):
            return None
        shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                   "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[_name(b.shuffle)]
        blosc = numcodecs.Blosc(cname=_name(b.cname), clevel=int(b.clevel), shuffle=shuffle, blocksize=int(b.blocksize))
        return cls(array, blosc, int(shard_shape[0]), int(chunk_shape[0]))

    def encode(self, buf: np.ndarray) -> bytes:
        """The bytes of one shard holding rows `buf` (at most shard_rows of them, from a shard boundary)."""
        n, cr = len(buf), self.chunk_rows
        n_chunks = self.shard_rows // cr
        index = np.full((n_chunks, 2), _EMPTY, dtype="<u8")
        parts, offset = [], 0
        for j in range(min(n_chunks, -(-n // cr))):
            piece = buf[j * cr : (j + 1) * cr]
            if len(piece) < cr:  # the array's last chunk: padded with the fill value, as zarr does
                full = np.empty((cr, *buf.shape[1:]), dtype=buf.dtype)
                full[: len(piece)] = piece
                full[len(piece) :] = self._fill
                piece = full
            if _all_fill(piece, self._fill):  # zarr leaves empty chunks out (write_empty_chunks off)
                continue
            data = self._blosc.encode(np.ascontiguousarray(piece))
            index[j] = offset, len(data)
            parts.append(data)
            offset += len(data)
        if not parts:
            return b""
        import google_crc32c

        idx = index.reshape((n_chunks, *([1] * (buf.ndim - 1)), 2)).tobytes()
        return b"".join(parts) + idx + int(google_crc32c.value(idx)).to_bytes(4, "little")

    def write(self, s0: int, buf: np.ndarray) -> None:
        """Store rows [s0, s0 + len(buf)) as the whole shard they make up."""
        if s0 % self.shard_rows or len(buf) > self.shard_rows:
            raise ValueError(f"{self.array.path}: rows {s0}..{s0 + len(buf)} are not one whole shard "
                             f"of {self.shard_rows} rows")
        stop = min(s0 + self.shard_rows, self.array.shape[0])
        if s0 + len(buf) != stop:
            raise ValueError(f"{self.array.path}: shard at row {s0} has rows {s0}..{stop}, got {len(buf)}")
        data = self.encode(np.asarray(buf, dtype=self.array.dtype))
        key = self.array.metadata.encode_chunk_key((s0 // self.shard_rows,) + (0,) * (buf.ndim - 1))
        target = self.array.store_path / key
        if data:
            zarr_sync(target.set(default_buffer_prototype().buffer.from_bytes(data)))
        else:
            zarr_sync(target.delete())


def write_shard(array: zarr.Array, s0: int, s1: int, buf: np.ndarray, encoders: dict) -> None:
    """array[s0:s1] = buf, through a ShardEncoder where the array's layout allows (cached in `encoders`)."""
    key = array.path
    if key not in encoders:
        encoders[key] = ShardEncoder.of(array)
    enc = encoders[key]
    if enc is None or s0 % enc.shard_rows or s1 != min(s0 + enc.shard_rows, array.shape[0]):
        array[s0:s1] = buf
        return
    enc.write(s0, buf)


def _all_fill(piece: np.ndarray, fill) -> bool:
    if isinstance(fill, float | np.floating) and np.isnan(fill):
        return bool(np.isnan(piece).all())
    return bool((piece == fill).all())


def _little(codec: BytesCodec, dtype: np.dtype) -> bool:
    return dtype.itemsize == 1 or _name(codec.endian) in ("little", "None")


def _name(v) -> str:
    return str(getattr(v, "value", v))
