"""A snapshot's sequences store (storage.sequences): round trip, row slices, layout, written whole."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import zarr

from gruviz_core.errors import NotFoundError, StoreError
from gruviz_core.sequences import ROW_META, Sequences
from storage import sequences as sq
from storage.store import zarr_store


def make_sequences(sizes: list[int], n_features: int = 3, n_context: int = 2, seed: int = 0) -> Sequences:
    """Ragged sequences of dogs with `sizes` rows; some NaN inputs, NaT dates, unknown results and prices."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    values = rng.normal(size=(n, n_features)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan
    dates = np.datetime64("2024-01-01") + rng.integers(0, 900, n).astype("timedelta64[D]")
    dates[rng.random(n) < 0.1] = np.datetime64("NaT")
    won = (rng.random(n) < 0.15).astype(np.float32)
    won[rng.random(n) < 0.1] = np.nan
    return Sequences(
        values=values, context=rng.normal(size=(n, n_context)).astype(np.float32), offsets=offsets,
        dog_id=np.array([f"id{d}" for d in range(len(sizes))], dtype=object),
        dog_name=np.array([f"Dög {d}" if d % 3 else "" for d in range(len(sizes))], dtype=object),
        race_id=np.array([f"2024-R{i // 6}" for i in range(n)], dtype=object), race_date=dates, won=won,
        market_prob=np.where(rng.random(n) < 0.2, np.nan, rng.random(n)).astype(np.float32),
        feature_names=tuple(f"f{i}" for i in range(n_features)), context_names=tuple(f"c{i}" for i in range(n_context)),
    )


def assert_same(a: Sequences, b: Sequences) -> None:
    for f in dataclasses.fields(Sequences):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype or x.dtype.kind == "O", (f.name, x.dtype, y.dtype)
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


@pytest.mark.parametrize("sizes", [[3, 5, 0, 4, 1], [1], [], [0, 0], [40] * 30])
def test_round_trip(tmp_path, sizes):
    seqs = make_sequences(sizes)
    path = tmp_path / "sequences.zarr"
    sq.save_sequences(seqs, path)
    assert_same(sq.load_sequences(path), seqs)
    meta = sq.load_sequence_meta(path)
    np.testing.assert_array_equal(meta["offsets"], seqs.offsets)
    assert list(meta["dog_id"]) == list(seqs.dog_id) and list(meta["dog_name"]) == list(seqs.dog_name)
    assert sq.stored_sequence_spec(path) == (seqs.feature_names, seqs.context_names)


def test_rows_are_slices_of_the_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(sq, "CHUNK_BYTES", 64)  # chunks of a few rows, shards of several: slices cross both
    seqs = make_sequences([7, 1, 30, 12, 0, 9, 25])
    path = tmp_path / "sequences.zarr"
    sq.save_sequences(seqs, path)
    assert zarr.open_array(path / "values", mode="r").chunks[0] < 10
    n = seqs.n_obs
    for a, b in ((0, 1), (3, 41), (17, 60), (n - 5, n), (20, 20), (0, n)):
        rows = sq.load_sequence_rows(path, a, b)
        assert rows.start == a and rows.feature_names == seqs.feature_names
        np.testing.assert_array_equal(rows.values, seqs.values[a:b])
        np.testing.assert_array_equal(rows.context, seqs.context[a:b])
        assert set(rows.meta) == set(ROW_META)
        for name in ROW_META:
            np.testing.assert_array_equal(rows.meta[name], getattr(seqs, name)[a:b], err_msg=name)
    assert set(sq.load_sequence_rows(path, 2, 5, meta=("race_date",)).meta) == {"race_date"}
    with pytest.raises(StoreError, match=rf"rows {n - 2}\.\.{n + 3}"):
        sq.load_sequence_rows(path, n - 2, n + 3)


def test_layout_chunks_codecs_and_cf_attributes(tmp_path):
    seqs = make_sequences([40] * 800, n_features=23, n_context=37)
    path = tmp_path / "sequences.zarr"
    sq.save_sequences(seqs, path)
    g = zarr.open_group(path, mode="r")
    assert g.attrs["feature_names"] == list(seqs.feature_names) and g.attrs["Conventions"] == "CF-1.11"
    for name, width in (("values", 23), ("context", 37)):
        a = g[name]
        assert a.dtype == np.float32 and a.metadata.dimension_names[0] == "obs"
        assert 256 << 10 <= a.chunks[0] * width * 4 <= 1 << 20, (name, a.chunks)  # row-slice reads, ~1 MiB at most
        blosc = a.metadata.codecs[0].codecs[1]
        assert (str(blosc.cname.value), str(blosc.shuffle.value)) == ("zstd", "shuffle")
    assert g["row_size"].attrs["sample_dimension"] == "obs" and g["dog_id"].attrs["cf_role"] == "trajectory_id"
    assert g["race_date"].attrs["units"] == "days since 1970-01-01"
    import xarray as xr

    ds = xr.open_zarr(zarr_store(path, read_only=True), zarr_format=3)
    assert ds["values"].dims == ("obs", "feature") and ds["row_start"].dims == ("dog",)
    np.testing.assert_array_equal(ds["race_date"].values, seqs.race_date)


def test_a_crashed_write_never_looks_complete(tmp_path, monkeypatch):
    """A write killed half way leaves the store it was replacing as it was (or none), never a partial one."""
    path = tmp_path / "f" / "sequences.zarr"
    first, second = make_sequences([3, 4]), make_sequences([5, 6, 7], seed=1)

    def dies(arrays, seqs):  # the staged store's arrays are laid out; the process dies before any row is written
        raise KeyboardInterrupt

    real = sq._Arrays.append
    monkeypatch.setattr(sq._Arrays, "append", dies)
    with pytest.raises(KeyboardInterrupt):
        sq.save_sequences(first, path)
    assert sq.stored_sequence_spec(path) is None and not path.exists()
    with pytest.raises(NotFoundError, match="no complete sequences store"):
        sq.load_sequences(path)
    monkeypatch.setattr(sq._Arrays, "append", real)
    sq.save_sequences(first, path)
    monkeypatch.setattr(sq._Arrays, "append", dies)
    with pytest.raises(KeyboardInterrupt):
        sq.save_sequences(second, path)
    assert_same(sq.load_sequences(path), first)
    monkeypatch.setattr(sq._Arrays, "append", real)
    sq.save_sequences(second, path)  # a rebuild replaces the store whole
    assert_same(sq.load_sequences(path), second)
    assert sorted(p.name for p in path.parent.iterdir()) in (["sequences.zarr"], [".tmp", "sequences.zarr"])
    assert not list((path.parent / ".tmp").glob("*")) if (path.parent / ".tmp").exists() else True  # nothing aside


def test_an_incomplete_or_other_version_store_is_rebuilt(tmp_path):
    path = tmp_path / "sequences.zarr"
    sq.save_sequences(make_sequences([2, 3]), path)
    (path / sq.COMPLETE).unlink()
    assert sq.stored_sequence_spec(path) is None
    sq.save_sequences(make_sequences([2, 3]), path)
    g = zarr.open_group(path, mode="r+")
    g.attrs["gruviz_sequences"] = sq.FORMAT + 1
    assert sq.stored_sequence_spec(path) is None


def _dogs(seqs: Sequences, a: int, b: int) -> Sequences:
    """Dogs [a, b) of `seqs` as a Sequences of their own (offsets from their first row)."""
    r = slice(int(seqs.offsets[a]), int(seqs.offsets[b]))
    return dataclasses.replace(
        seqs, values=seqs.values[r], context=seqs.context[r], offsets=seqs.offsets[a:b + 1] - seqs.offsets[a],
        dog_id=seqs.dog_id[a:b], dog_name=seqs.dog_name[a:b], race_id=seqs.race_id[r], race_date=seqs.race_date[r],
        won=seqs.won[r], market_prob=seqs.market_prob[r])


@pytest.mark.parametrize("cut", [list(range(10)), [0, 3, 3, 9], [0, 9]])
def test_a_store_written_block_by_block_is_the_store_written_whole(tmp_path, monkeypatch, cut):
    """Blocks of dogs (some empty, some dogs without rows) appended in order, in chunks of a few rows and shards of
    several, so blocks end inside shards: the store reads back as the whole Sequences, row slices too."""
    monkeypatch.setattr(sq, "CHUNK_BYTES", 64)
    seqs = make_sequences([3, 5, 0, 4, 1, 17, 2, 0, 9])
    path = tmp_path / "sequences.zarr"
    with sq.SequenceWriter(path, seqs.n_obs, seqs.feature_names, seqs.context_names) as w:
        for a, b in zip(cut[:-1], cut[1:]):
            w.append(_dogs(seqs, a, b))
    assert_same(sq.load_sequences(path), seqs)
    part = sq.load_sequence_rows(path, 5, 23)
    np.testing.assert_array_equal(part.values, seqs.values[5:23])
    assert list(part.meta["race_id"]) == list(seqs.race_id[5:23])


def test_a_block_by_block_write_that_dies_never_looks_complete(tmp_path):
    """An error between blocks (or too few rows) leaves the store it was replacing as it was, or none."""
    path = tmp_path / "f" / "sequences.zarr"
    first, second = make_sequences([3, 4]), make_sequences([5, 6, 7], seed=1)
    with pytest.raises(KeyboardInterrupt):
        with sq.SequenceWriter(path, first.n_obs, first.feature_names, first.context_names) as w:
            w.append(_dogs(first, 0, 1))
            raise KeyboardInterrupt
    assert sq.stored_sequence_spec(path) is None and not path.exists()
    sq.save_sequences(first, path)
    with pytest.raises(StoreError, match="3 rows appended to a store laid out for 7"):
        with sq.SequenceWriter(path, first.n_obs, first.feature_names, first.context_names) as w:
            w.append(_dogs(first, 0, 1))  # the second dog never comes
    with pytest.raises(StoreError, match="11 rows appended to a store laid out for 7"):
        with sq.SequenceWriter(path, first.n_obs, first.feature_names, first.context_names) as w:
            w.append(_dogs(second, 0, 2))
    assert_same(sq.load_sequences(path), first)
    with sq.SequenceWriter(path, second.n_obs, second.feature_names, second.context_names) as w:
        w.append(_dogs(second, 0, 2))
        w.append(_dogs(second, 2, 3))
    assert_same(sq.load_sequences(path), second)
    leftovers = list((path.parent / ".tmp").glob("*")) if (path.parent / ".tmp").exists() else []
    assert not leftovers


def test_rows_read_on_demand_are_the_rows_of_the_whole(tmp_path, monkeypatch):
    """open_sequence_rows reads values and context by rows (any order, repeats, masks, slices, column picks) in
    windows of chunks: the same numbers as the whole arrays."""
    monkeypatch.setattr(sq, "CHUNK_BYTES", 64)
    monkeypatch.setattr(sq.RowsOnDemand, "WINDOW_CHUNKS", 2)
    seqs = make_sequences([40] * 30, n_features=5)
    path = tmp_path / "sequences.zarr"
    sq.save_sequences(seqs, path)
    lazy = sq.open_sequence_rows(path, meta=("race_date",))
    np.testing.assert_array_equal(lazy.meta["race_date"], seqs.race_date)
    assert len(lazy.values) == seqs.n_obs and lazy.values.shape == seqs.values.shape
    rng = np.random.default_rng(0)
    for rows in (rng.integers(0, seqs.n_obs, 300), np.array([5, 5, 1199, 0, 3]), np.arange(0), slice(17, 801),
                 rng.random(seqs.n_obs) < 0.1):
        np.testing.assert_array_equal(lazy.values[rows], seqs.values[rows])
        np.testing.assert_array_equal(lazy.context[rows], seqs.context[rows])
    rows = np.sort(rng.integers(0, seqs.n_obs, 50))
    np.testing.assert_array_equal(lazy.values[rows, [1, 3]], seqs.values[rows][:, [1, 3]])
