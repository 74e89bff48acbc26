"""storage.shards: whole shards encoded by gruviz are the bytes zarr itself writes, and read back the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from storage.shards import ShardEncoder, write_shard

BLOSC = BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


def _array(root: Path, shape, chunks, shards, dtype="float16", fill=np.nan, compressors=(BLOSC,)):
    g = zarr.create_group(zarr.storage.LocalStore(root))
    return g.create_array("a", shape=shape, dtype=dtype, chunks=chunks, shards=shards, compressors=compressors,
                          fill_value=fill)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and "c" in p.parts}


@pytest.mark.parametrize("n_obs, layers, dtype, fill", [
    (3 * 640 - 77, 2, "float16", np.nan),  # a partial last shard and a partial last chunk
    (1280, 1, "float16", np.nan),
    (1000, None, "int32", 0),  # a 1-D per-row array (each seed's dog_index)
])
def test_shards_are_the_bytes_zarr_writes(tmp_path, n_obs, layers, dtype, fill):
    rng = np.random.default_rng(n_obs)
    tail = () if layers is None else (layers, 16)
    x = (np.tanh(rng.normal(size=(n_obs, *tail))) if dtype == "float16" else rng.integers(0, 9, size=n_obs))
    x = x.astype(dtype)
    x[64:128] = fill  # a chunk of fill values only: zarr leaves it out, so must we
    written = {}
    for mode in ("zarr", "gruviz"):
        root = tmp_path / mode
        a = _array(root, (n_obs, *tail), (64, *tail), (640, *tail), dtype, fill)
        encoders: dict = {}
        for s0 in range(0, n_obs, 640):
            s1 = min(s0 + 640, n_obs)
            if mode == "zarr":
                a[s0:s1] = x[s0:s1]
            else:
                write_shard(a, s0, s1, x[s0:s1], encoders)
        if mode == "gruviz":
            assert isinstance(encoders["a"], ShardEncoder)
        written[mode] = _files(root)
        back = zarr.open_array(zarr.storage.LocalStore(root), path="a")[:]
        np.testing.assert_array_equal(back, x)
    assert written["gruviz"] and written["gruviz"] == written["zarr"]


def test_other_layouts_go_through_zarr(tmp_path):
    """Arrays this does not encode (other codecs, chunked across columns, unaligned rows) are written by zarr."""
    x = np.arange(2000 * 4, dtype=np.float32).reshape(2000, 4)
    zstd = _array(tmp_path / "zstd", (2000, 4), (100, 4), (500, 4), "float32", compressors="auto")
    cols = _array(tmp_path / "cols", (2000, 4), (100, 1), (500, 1), "float32")
    assert ShardEncoder.of(zstd) is None and ShardEncoder.of(cols) is None
    plain = _array(tmp_path / "plain", (2000, 4), (100, 4), (500, 4), "float32")
    enc = ShardEncoder.of(plain)
    assert enc is not None
    with pytest.raises(ValueError, match="not one whole shard"):
        enc.write(100, x[100:600])
    for a in (zstd, cols, plain):
        encoders: dict = {}
        write_shard(a, 0, 500, x[:500], encoders)
        write_shard(a, 700, 1000, x[700:1000], encoders)  # part of a shard: zarr's read-modify-write
        got = a[:]
        np.testing.assert_array_equal(got[:500], x[:500])
        np.testing.assert_array_equal(got[700:1000], x[700:1000])
        assert np.isnan(got[500:700]).all()
