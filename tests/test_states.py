"""The states store: round trip, layout, lifecycle (begin, blocks, finish, publish), readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.stages.extract import extract_run, write_block
from gruviz_core import stats as gst
from gruviz_core.errors import ConfigError, NotFoundError, StoreError
from gruviz_core.extract import extract_batch
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU
from storage import runs, states, writer

F, C = 4, 2


def make_models(n_seeds=2, hidden=6, layers=2):
    out = []
    for s in range(n_seeds):
        torch.manual_seed(100 + s)
        m = RaceGRU(ModelConfig(F, C, hidden_size=hidden, num_layers=layers, seed=100 + s))
        out.append(LoadedModel.wrap(m, [f"f{i}" for i in range(F)], [f"c{i}" for i in range(C)], model_id=f"s{s}"))
    return out


def make_inputs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n, d = int(offsets[-1]), len(lengths)
    return dict(
        seqs_values=rng.normal(size=(n, F)).astype(np.float32),
        context=rng.normal(size=(n, C)).astype(np.float32),
        offsets=offsets,
        dog_id=np.array([f"D{i:04d}" for i in range(d)], dtype=object),
        dog_name=np.array([f"Dög {i} ☆" for i in range(d)], dtype=object),
        race_id=np.array([f"R{i}" for i in range(n)], dtype=object),
        race_date=np.datetime64("2024-01-01") + rng.integers(0, 900, size=n).astype("timedelta64[D]"),
        won=rng.integers(0, 2, size=n).astype(np.float32),
        market_prob=rng.uniform(0.01, 0.9, size=n).astype(np.float32),
    )


ROWS = ("race_id", "race_date", "won", "market_prob")


def split_inputs(inp):
    """(values, context, the rows' metadata for write_block) popped from make_inputs' dict; it keeps the dogs'."""
    return inp.pop("seqs_values"), inp.pop("context"), {k: inp.pop(k) for k in ROWS}


def write_run(root, run_id, models, inputs, **kw):
    tmp = extract_run(root, run_id, {"snapshot_id": "snap", "model_set_id": "set"}, models, device="cpu",
                             **inputs, **kw)
    return runs.publish_run(root, tmp)


def test_blocks_from_block_dogs_are_even_and_come_in_multiples_of_those_run_at_once(tmp_path):
    inp = make_inputs([4] * 8)  # 32 rows in 8 shards of 4 rows
    meta = {k: inp[k] for k in ("offsets", "dog_id", "dog_name")}

    def shards(name: str, **kw) -> list[int]:
        plan = writer.begin_run(tmp_path / name, "r", {}, n_layers=2, n_units=6, seeds=[100], chunk_rows=4,
                                shard_chunks=1, **meta, **kw)
        rows = [plan.block_rows(b) for b in range(plan.n_blocks)]
        assert rows[0][0] == 0 and rows[-1][1] == 32 and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        return [(b - a) // 4 for a, b in rows]

    assert shards("one", block_dogs=5) == [4, 4]  # at most 5 shards a block: 2 blocks, 4 + 4 (not 5 + 3)
    assert shards("two", block_dogs=5, parallel=2) == [4, 4]
    assert shards("three", block_dogs=5, parallel=3) == [3, 3, 2]
    assert shards("wide", block_dogs=5, parallel=16) == [1] * 8  # never more blocks than shards
    assert shards("whole", parallel=2) == [8]  # no block_dogs: the whole run, as before
    assert shards("given", block_shards=5, parallel=2) == [5, 3]  # block_shards is taken as given


@pytest.mark.slow  # 12 whole runs written and read back, ~12 s
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=25),
    chunk_rows=st.integers(1, 16), shard_chunks=st.integers(1, 4), block_dogs=st.integers(1, 30),
    batch_size=st.integers(1, 9),
)
def test_round_trip_every_dog(tmp_path_factory, lengths, chunk_rows, shard_chunks, block_dogs, batch_size):
    root = tmp_path_factory.mktemp("store")
    models = make_models()
    inp = make_inputs(lengths)
    run_dir = write_run(root, "r", models, inp, chunk_rows=chunk_rows, shard_chunks=shard_chunks,
                        block_dogs=block_dogs, batch_size=batch_size)
    reader = states.open_states(run_dir)
    assert (reader.n_dogs, reader.n_obs, reader.n_layers, reader.n_units) == (len(lengths), sum(lengths), 2, 6)
    off = inp["offsets"]
    for k, model in enumerate(models):
        want = extract_batch(model, inp["seqs_values"], inp["context"], off, np.arange(len(lengths)),
                             device=torch.device("cpu"))
        pos = 0
        for d, n in zip(want.dogs, want.lengths):
            got = reader.dog(inp["dog_id"][d], seed=k)
            assert got.dog_name == inp["dog_name"][d] and got.h.shape == (n, 2, 6)
            for q in ("h", "z", "r"):
                np.testing.assert_allclose(getattr(got, q), getattr(want, q)[pos : pos + n], atol=1e-3)
            np.testing.assert_allclose(got.score, want.score[pos : pos + n], atol=1e-6)
            assert list(got.race_id) == list(inp["race_id"][off[d] : off[d + 1]])
            np.testing.assert_array_equal(got.race_date, inp["race_date"][off[d] : off[d + 1]])
            np.testing.assert_array_equal(got.step, np.arange(1, n + 1))
            pos += n
    # every row written: no NaN left anywhere (there are no padding rows)
    for chunk in reader.iter_chunks(seed=1):
        assert not np.isnan(chunk.h).any() and not np.isnan(chunk.z).any()
    assert not np.isnan(reader.scores()).any()
    _check_summaries(reader, models, inp)


def _check_summaries(reader, models, inp):
    """The per-row summaries and per-unit accumulators the blocks stored equal those of every dog's float32
    states computed in one go, whatever the blocks, shards and batches (a dog's rows straddling them included)."""
    off = inp["offsets"]
    n_dogs = len(off) - 1
    for k, model in enumerate(models):
        want = extract_batch(model, inp["seqs_values"], inp["context"], off, np.arange(n_dogs),
                             device=torch.device("cpu"), dtype=torch.float32)
        rows = np.concatenate([np.arange(off[d], off[d + 1]) for d in want.dogs] + [[]]).astype(np.int64)
        summary = gst.row_summary(want.h, want.z, want.lengths)
        got = reader.row_summaries(k)
        for name, a in summary.items():
            np.testing.assert_allclose(got[name][rows], a, rtol=1e-5, atol=1e-6, err_msg=name)
        units = gst.UnitAccumulators()
        for part in reader.read_units(k):
            units.merge(gst.UnitAccumulators.from_arrays(part))
        whole = gst.UnitAccumulators().add(want.h, want.z, want.r)
        assert units.moments.n == whole.moments.n == reader.n_obs
        if reader.n_obs:
            np.testing.assert_allclose(units.moments.mean, whole.moments.mean, atol=1e-6)
            np.testing.assert_allclose(units.moments.m2, whole.moments.m2, atol=1e-4)
            for g in ("z", "r"):
                for a, b in ((getattr(units, g).left, getattr(whole, g).left),
                             (getattr(units, g).right, getattr(whole, g).right)):
                    assert np.abs(a - b).max() <= 1  # a gate within float32 noise of 0.1 or 0.9


def test_tables_and_chunks(tmp_path):
    models = make_models(n_seeds=1, hidden=4, layers=1)
    inp = make_inputs([3, 0, 7, 1, 9])
    inp["race_date"][2] = np.datetime64("NaT")
    run_dir = write_run(tmp_path, "r1", models, inp, chunk_rows=2, shard_chunks=2, block_dogs=2)
    reader = states.open_states(run_dir)
    idx = reader.index()
    assert list(idx.columns) == ["dog_index", "dog_id", "dog_name", "row_start", "row_size"]
    assert idx.row_size.tolist() == [3, 0, 7, 1, 9] and idx.row_start.tolist() == [0, 3, 3, 10, 11]
    assert idx.dog_name[0] == "Dög 0 ☆"
    rows = reader.rows()
    assert list(rows.columns) == ["step", "race_date", "race_id", "won", "market_prob", "dog_index"]
    assert rows.step.tolist()[:4] == [1, 2, 3, 1] and rows.dog_index.tolist()[:4] == [0, 0, 0, 2]
    assert rows.race_date.isna().tolist()[2] and rows.race_date[0] == inp["race_date"][0]
    np.testing.assert_allclose(rows.won, inp["won"])
    assert reader.scores().shape == (20, 1)
    chunks = list(reader.iter_chunks(rows=(3, 17)))
    assert [(c.start, c.stop) for c in chunks] == [(3, 4), (4, 8), (8, 12), (12, 16), (16, 17)]
    assert chunks[1].h.shape == (4, 1, 4) and chunks[1].h.dtype == np.float32
    assert reader.dog("D0001").h.shape == (0, 1, 4)
    with pytest.raises(NotFoundError, match="no dog 'nope'"):
        reader.dog("nope")
    with pytest.raises(NotFoundError, match="seed position 1"):
        reader.dog("D0000", seed=1)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["device"] == "cpu" and meta["seeds"] == [100] and meta["model_set_id"] == "set"
    assert meta["check_max_err"] <= 1e-5 and meta["code_version"]


def test_store_layout_on_disk(tmp_path):
    models = make_models(n_seeds=1, hidden=8, layers=2)
    run_dir = write_run(tmp_path, "r1", models, make_inputs([5] * 40))  # default ~512 KiB chunks
    import zarr
    h = zarr.open_array(run_dir / states.STATES / "seed0" / "h", mode="r")
    assert h.dtype == np.float16 and h.metadata.dimension_names == ("obs", "layer", "unit")
    assert h.chunks == (512 * 1024 // (2 * 2 * 8), 2, 8) and h.shards[0] == h.chunks[0]  # small run: 1-chunk shards
    assert np.isnan(h.fill_value)
    blosc = h.metadata.codecs[0].codecs[1]
    assert (str(blosc.cname.value), blosc.clevel, str(blosc.shuffle.value)) == ("lz4", 5, "bitshuffle")
    g = zarr.open_group(run_dir / states.STATES, mode="r")
    for name in ("row_start", "row_size", "dog_id", "dog_name", "step", "race_date", "race_id", "won",
                 "market_prob", "score"):
        assert g[name].metadata.dimension_names, name
    for name in states.ROW_SUMMARY:  # the blocks' per-row summaries, beside the states
        a = g[f"seed0/summary/{name}"]
        assert a.dtype == np.float32 and a.shape == (200, 2) and a.metadata.dimension_names == ("obs", "layer")
        assert not np.isnan(a[:][:, 0]).any() or name == "move"
    assert (run_dir / "blocks" / "0.seed0.zarr").exists()


def test_xarray_named_dims(tmp_path):
    models = make_models(n_seeds=2)
    inp = make_inputs([4, 6, 2])
    run_dir = write_run(tmp_path, "r1", models, inp, chunk_rows=4)
    ds = states.open_dataset(run_dir, seed=1)
    assert ds.h.dims == ("obs", "layer", "unit") and ds.dog_id.dims == ("dog",) and ds.score.dims == ("obs", "seed")
    assert ds.sizes["obs"] == 12 and ds.sizes["dog"] == 3 and ds.attrs["seed"] == 101
    assert np.issubdtype(ds.race_date.dtype, np.datetime64)
    dog = states.open_states(run_dir).dog("D0001", seed=1)
    np.testing.assert_allclose(ds.h.isel(obs=slice(4, 10)).values.astype(np.float32), dog.h)


def test_open_datatree_is_self_describing(tmp_path):
    """xarray.open_datatree on the store: every seed's h/z/r with a per-row dog index, dog_id a coordinate on
    dog, CF ragged-array attributes, a fill value and units on race_date; and the README's way to pull one dog."""
    import xarray as xr

    models = make_models(n_seeds=2)
    inp = make_inputs([4, 6, 2])
    inp["race_date"][3] = np.datetime64("NaT")
    run_dir = write_run(tmp_path, "r1", models, inp, chunk_rows=4)
    tree = xr.open_datatree(run_dir / states.STATES, engine="zarr")
    assert set(tree.children) == {"seed0", "seed1"}
    assert "dog_id" in tree.coords and tree["dog_id"].dims == ("dog",)
    assert list(tree["dog_id"].values) == ["D0000", "D0001", "D0002"]
    assert tree["row_size"].attrs["sample_dimension"] == "obs" and tree.attrs["featureType"] == "trajectory"
    assert tree["dog_index"].attrs["instance_dimension"] == "dog"
    np.testing.assert_array_equal(tree["dog_index"].values, [0] * 4 + [1] * 6 + [2] * 2)
    assert np.isnat(tree["race_date"].values[3]) and tree["race_date"].encoding["units"] == "days since 1970-01-01"
    for k in ("seed0", "seed1"):
        ds = tree[k].to_dataset()
        assert "dog_index" in ds.coords and ds["dog_index"].dims == ("obs",)
        for name in ("h", "z", "r"):
            assert ds[name].dims == ("obs", "layer", "unit") and ds[name].attrs["units"] == "1"
            assert ds[name].attrs["long_name"].startswith("GRU")
    # the README's two lines
    d = int(np.flatnonzero(tree["dog_id"].values == "D0001")[0])
    h = tree["seed1"].to_dataset().set_xindex("dog_index").sel(dog_index=d)["h"]
    np.testing.assert_allclose(h.values.astype(np.float32), states.open_states(run_dir).dog("D0001", seed=1).h)


def test_lifecycle_guards(tmp_path):
    models = make_models(n_seeds=1)
    inp = make_inputs([3] * 10)
    assert runs.latest_run(tmp_path) is None
    values, context, rows = split_inputs(inp)
    plan = writer.begin_run(tmp_path, "r1", {"night": "2026-01-01"}, n_layers=2, n_units=6, seeds=[100],
                            chunk_rows=2, shard_chunks=2, block_shards=2, **inp)
    assert plan.n_blocks == 4 and plan.block_rows(3) == (24, 30)
    with pytest.raises(StoreError, match="no _COMPLETE"):
        states.open_states(plan.path)
    states.open_states(plan.path, allow_incomplete=True)
    for b in (0, 1, 3):
        write_block(plan.tmp_dir, b, models, values, context, rows=rows, device="cpu")
    with pytest.raises(StoreError, match=r"blocks \[2\] of 4"):
        runs.finish_run(plan.path)
    with pytest.raises(StoreError, match="call finish_run"):
        runs.publish_run(tmp_path, plan.path)
    seen = []
    write_block(plan, 2, models, values, context, rows=rows, device="cpu", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (2, 2) or seen[-1][0] == seen[-1][1]
    runs.finish_run(plan.path)
    run_dir = runs.publish_run(tmp_path, plan.path)
    assert runs.latest_run(tmp_path) == run_dir and (run_dir / runs.COMPLETE).exists()
    assert not plan.path.exists()


def test_a_block_computes_from_its_own_rows_only(tmp_path):
    """A block given only its span of input rows (block_span, from row_base) writes the same states as
    one given every row; a window missing a row of one of its dogs is refused, naming the rows needed."""
    models = make_models(n_seeds=1)
    inp = make_inputs([5, 1, 7, 2, 9, 3, 4, 6, 8, 2])
    values, context, rows = split_inputs(inp)
    got = []
    for name in ("all", "window"):
        plan = writer.begin_run(tmp_path / name, "r", {}, n_layers=2, n_units=6, seeds=[100], chunk_rows=4,
                                shard_chunks=1, block_shards=2, **inp)
        for b in range(plan.n_blocks):
            if name == "all":
                write_block(plan, b, models, values, context, rows=rows, device="cpu")
                continue
            a, z = writer.block_span(plan, b)
            assert a <= plan.block_rows(b)[0] and z >= plan.block_rows(b)[1]
            window = {k: v[a:z] for k, v in rows.items()}
            write_block(plan, b, models, values[a:z], context[a:z], rows=window, row_base=a, device="cpu")
        got.append(states.open_states(runs.finish_run(plan.path), allow_incomplete=True))
    spans = [writer.block_span(plan, b) for b in range(plan.n_blocks)]
    assert any(s[0] < plan.block_rows(b)[0] for b, s in enumerate(spans))  # a dog straddles two blocks
    for d in inp["dog_id"]:
        a, w = got[0].dog(d), got[1].dog(d)
        np.testing.assert_allclose(w.h, a.h, atol=1e-3)
        np.testing.assert_allclose(w.score, a.score, rtol=1e-5, atol=1e-6)
        assert list(w.race_id) == list(a.race_id) and np.array_equal(w.race_date, a.race_date)
    plan = writer.begin_run(tmp_path / "short", "r", {}, n_layers=2, n_units=6, seeds=[100], chunk_rows=4,
                            shard_chunks=1, block_shards=2, **inp)
    a, z = writer.block_span(plan, 1)
    with pytest.raises(ConfigError, match=rf"needs rows {a}\.\.{z}"):
        write_block(plan, 1, models, values[a + 1 : z], context[a + 1 : z], rows=rows, row_base=a + 1, device="cpu")


def test_progress_reaches_total(tmp_path):
    seen = []
    inp = make_inputs([5, 1, 9, 2, 2, 7])
    extract_run(tmp_path, "r", {}, make_models(n_seeds=1), chunk_rows=2, shard_chunks=1, block_dogs=2,
                       progress=lambda d, t: seen.append((d, t)), device="cpu", **inp)
    assert seen[-1] == (6, 6) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_a_failed_batch_fails_its_block_and_leaves_no_marker(tmp_path, monkeypatch):
    import flows.stages.extract as fx

    def boom(*_a, **_k):
        raise RuntimeError("summary exploded")

    monkeypatch.setattr(fx.st, "row_summary", boom)
    inp = make_inputs([5, 1, 9, 2, 2, 7])
    plan = writer.begin_run(tmp_path, "r", {}, offsets=inp["offsets"], dog_id=inp["dog_id"], dog_name=inp["dog_name"],
                            n_layers=2, n_units=6, seeds=[100, 101], chunk_rows=2, shard_chunks=2)
    values, context, rows = split_inputs(inp)
    with pytest.raises((StoreError, RuntimeError), match="summary exploded"):
        write_block(plan, 0, make_models(), values, context, rows=rows, device="cpu", batch_size=2, in_flight=1)
    assert not (plan.path / "blocks" / "0.json").exists()
    with pytest.raises(StoreError, match="no done marker"):
        runs.finish_run(plan.path)


@pytest.mark.parametrize("n_obs", [16, 13, 5, 1])
@pytest.mark.parametrize("kind", ["states", "per_row_int", "per_row_float", "per_row_str", "score_column",
                                  "summary_unsharded"])
def test_shard_encoder_writes_zarrs_own_shards(tmp_path, n_obs, kind):
    """The writers' direct shard encoder (storage.writer._ShardEncoder) must write what zarr itself writes, byte
    for byte, for the states (float16, 3-D) and the per-row arrays (1-D int32 and float32, written a block of
    whole shards at once; race_id's strings, vlen-utf8 then zstd): this fails loudly if an upgrade changes zarr's
    shard layout, its string encoding or the compressors' settings."""
    import zarr

    rng = np.random.default_rng(0)
    if kind == "states":
        x = np.tanh(rng.normal(size=(n_obs, 2, 3))).astype(np.float16)
        shape_kw = dict(chunks=(2, 2, 3), shards=(8, 2, 3), fill_value=np.nan)
    elif kind == "per_row_int":
        x = rng.integers(-5, 1000, size=n_obs).astype(np.int32)
        shape_kw = dict(chunks=(2,), shards=(8,), fill_value=-7)
    elif kind == "per_row_float":
        x = rng.normal(size=n_obs).astype(np.float32)
        shape_kw = dict(chunks=(2,), shards=(8,), fill_value=np.nan)
    elif kind == "per_row_str":  # as the run's race_id: zarr's default codecs for str (vlen-utf8, zstd)
        x = np.array([f"R{v}-é" * (v % 3) for v in rng.integers(0, 10**6, size=n_obs)], dtype=object)
        shape_kw = dict(chunks=(2,), shards=(8,))
    elif kind == "score_column":  # (obs, seed): a shard holds one seed's column
        x = rng.normal(size=(n_obs, 3)).astype(np.float32)
        shape_kw = dict(chunks=(2, 1), shards=(8, 1), fill_value=np.nan)
    else:  # the per-row summaries: unsharded, a chunk of 8 rows
        x = rng.normal(size=(n_obs, 2)).astype(np.float32)
        shape_kw = dict(chunks=(8, 2), fill_value=np.nan)
    root = tmp_path / "z"
    g = zarr.create_group(zarr.storage.LocalStore(root))
    kw = dict(shape=x.shape, dtype=str if kind == "per_row_str" else x.dtype, **shape_kw)
    if kind != "per_row_str":
        kw["compressors"] = writer._compressor()
    mine, theirs = g.create_array("mine", **kw), g.create_array("theirs", **kw).with_config(writer._WRITE_CONFIG)
    enc = writer._ShardEncoder.of(mine)
    assert enc is not None
    if kind in ("per_row_int", "per_row_str"):  # a block of whole shards in one write
        assert enc.covers((slice(0, n_obs),)) and not enc.covers((slice(1, n_obs),))
        assert n_obs <= 8 or not enc.covers((slice(0, n_obs - 1),))
        writer._write_all([(mine, (slice(0, n_obs),), x, enc)])
        theirs[:] = x
    for s0 in range(0, n_obs, 8) if kind not in ("per_row_int", "per_row_str") else ():
        s1 = min(s0 + 8, n_obs)
        cols = [slice(k, k + 1) for k in range(3)] if kind == "score_column" else [None]
        for c in cols:
            sel = (slice(s0, s1),) if c is None else (slice(s0, s1), c)
            assert enc.covers(sel) and not enc.covers((slice(s0 + 1, s1), *sel[1:]))
            writer._write_all([(mine, sel, x[sel], enc)])
            theirs[sel] = x[sel]
    if kind == "score_column":
        assert not enc.covers((slice(0, min(8, n_obs)), slice(0, 2)))  # two columns: two shards, zarr's path
    files = sorted(p.relative_to(root / "theirs") for p in (root / "theirs" / "c").rglob("*") if p.is_file())
    assert len(files) == -(-n_obs // 8) * (3 if kind == "score_column" else 1)
    for f in files:
        assert (root / "mine" / f).read_bytes() == (root / "theirs" / f).read_bytes(), f
    np.testing.assert_array_equal(np.asarray(zarr.open_array(root / "mine", mode="r")[:], dtype=x.dtype), x)
    assert writer._ShardEncoder.of(g.create_array("cols", shape=(4, 2), dtype="float32", chunks=(2, 1))) is None
    assert writer._ShardEncoder.of(g.create_array("gzip", shape=(4, 2), dtype="float32", chunks=(2, 2),
                                                  compressors=zarr.codecs.GzipCodec())) is None


def test_str_objects_keeps_an_array_of_str_and_converts_anything_else():
    from storage.store import str_objects

    ids = np.array(["R1", "R2"], dtype=object)
    assert str_objects(ids) is ids  # no copy of a million race ids that are str already
    assert list(str_objects(np.array([7, "R2", None], dtype=object))) == ["7", "R2", "None"]
    assert list(str_objects(np.array(["a", "b"]))) == ["a", "b"] and str_objects(np.array(["a"])).dtype == object


def test_a_reused_shard_buffer_with_a_row_left_unfilled_is_not_written(tmp_path):
    """Shard buffers are reused across shards without clearing; the writer writes a shard only when every row
    of it was filled, so an earlier shard's rows can never be written as another's."""
    import zarr

    inp = make_inputs([3, 3, 3, 3])
    plan = writer.begin_run(tmp_path, "r", {}, n_layers=2, n_units=6, seeds=[100], chunk_rows=3, shard_chunks=1,
                            **{k: inp[k] for k in ("offsets", "dog_id", "dog_name")})
    with pytest.raises(StoreError, match=r"seed 0's shard of rows 3\.\.6: 2 rows were filled, the shard has 3"):
        with writer.BlockWriter(plan, 0) as bw:
            shards = [(s0, s1) for s0, s1, _ in bw.shards()]
            bw.reserve()
            first = bw.buffers(0, *shards[0])
            first.h[:] = 0.5
            first.filled[0] = len(first.h)  # every row filled: written
            bw.write(first)
            bw.reserve()
            bw.reserve()  # waits until the first set is written and free again
            again = bw.buffers(0, *shards[1])
            assert np.shares_memory(again.h, first.h) and again.filled == [0]  # reused, its count from zero
            again.h[:2] = -0.5
            again.filled[0] = 2  # one row of three left with the first shard's values
            bw.write(again)
    h = zarr.open_group(zarr.storage.LocalStore(plan.path / states.STATES), mode="r")["seed0/h"][:]
    assert (h[:3] == 0.5).all() and np.isnan(h[3:]).all()  # the first shard written, the short one not
