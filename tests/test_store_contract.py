"""The Store contract: one test class run against every adapter (a directory, the in-memory twin, and
moto's S3 server on loopback, marked slow), as zarr-python's StoreTests are.

Each test states a behaviour the rest of `storage` relies on whatever the store is.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gruviz_core.errors import ConfigError, NotFoundError, StoreError
from gruviz_core.records import from_json
from storage.local import LocalStore
from storage.objects import MemoryStore, ObjectStore
from storage.store import LockHeld, Missing, Store, open_store


@dataclass(frozen=True)
class _Inner:
    """A nested record."""

    name: str
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class _Record:
    """A record as stages hand them on."""

    run_id: str
    seeds: tuple[int, ...]
    inner: _Inner
    note: str | None = None
    extra: dict = field(default_factory=dict)


class StoreContract:
    """Behaviours every adapter shares; subclasses give `store`."""

    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError

    def test_bytes_round_trip_and_a_missing_key_names_itself(self, store):
        store.write_bytes("a/b/c.bin", b"\x00\x01payload")
        assert store.read_bytes("a/b/c.bin") == b"\x00\x01payload"
        with pytest.raises(Missing, match="nope.bin"):
            store.read_bytes("a/nope.bin")
        with pytest.raises(FileNotFoundError):
            store.read_bytes("a/nope.bin")
        with pytest.raises(NotFoundError):
            store.open("a/nope.bin")

    def test_a_write_replaces_the_whole_object(self, store):
        store.write_bytes("k", b"x" * 1000)
        store.write_bytes("k", b"short")
        assert store.read_bytes("k") == b"short"

    def test_exists_list_and_remove_a_tree(self, store):
        for key in ("runs/r1/run.json", "runs/r1/stats/dog.parquet", "runs/r2/run.json", "runs/LATEST"):
            store.write_bytes(key, b"{}")
        assert store.exists("runs/r1/run.json") and store.exists("runs/r1") and not store.exists("runs/r3")
        assert store.is_dir("runs/r1") and not store.is_dir("runs/LATEST") and not store.is_dir("runs/r3")
        assert store.list("runs") == ["LATEST", "r1", "r2"]
        assert store.list("runs/r1") == ["run.json", "stats"]
        assert store.list("nothing/here") == []
        store.remove("runs/r1")
        assert store.list("runs") == ["LATEST", "r2"] and not store.exists("runs/r1/stats/dog.parquet")
        store.remove("runs/LATEST")
        store.remove("runs/never")  # missing is fine
        assert store.list("runs") == ["r2"]

    def test_keys_cannot_leave_the_store(self, store):
        with pytest.raises(StoreError, match="leaves the store"):
            store.write_bytes("a/../../etc/passwd", b"")

    def test_create_is_exclusive_even_under_racing_threads(self, store):
        wins = []
        barrier = threading.Barrier(8)

        def race(i: int) -> None:
            barrier.wait()
            wins.append(store.create("claims/one", f"writer {i}".encode()))

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(wins) == [False] * 7 + [True]
        assert store.read_bytes("claims/one").startswith(b"writer ")

    def test_json_and_typed_records_round_trip(self, store):
        rec = _Record("r1", (3, 1, 4), _Inner("block", (1, 2)), extra={"device": "cpu"})
        store.write_record("runs/r1/plan.json", rec)
        assert store.read_record("runs/r1/plan.json", _Record) == rec
        assert json.loads(store.read_text("runs/r1/plan.json"))["seeds"] == [3, 1, 4]
        store.write_bytes("bad.json", b"{not json")
        with pytest.raises(StoreError, match="bad.json"):
            store.read_json("bad.json")
        store.write_json("old.json", {"run_id": "r0"})
        with pytest.raises(StoreError, match="seeds"):
            store.read_record("old.json", _Record)

    def test_parquet_has_one_codec_and_the_tables_schema(self, store):
        df = pd.DataFrame({"dog_id": ["a", "b"], "n": [1, 2], "x": [0.5, np.nan]})
        schema = pa.schema([("dog_id", pa.string()), ("n", pa.int64()), ("x", pa.float32())])
        store.write_parquet("t/dogs.parquet", df, schema)
        back = store.read_parquet("t/dogs.parquet")
        pd.testing.assert_frame_equal(back, df.astype({"x": "float32"}))
        assert store.parquet_schema("t/dogs.parquet").field("x").type == pa.float32()
        assert list(store.read_parquet("t/dogs.parquet", columns=["n"]).columns) == ["n"]
        with store.open("t/dogs.parquet") as f:
            meta = pq.ParquetFile(f).metadata
            assert meta.row_group(0).column(0).compression == "ZSTD"

    def test_parquet_in_parts_is_one_table_and_parts_of_a_row_group_write_the_whole_tables_file(self, store):
        from storage.store import PARQUET_ROWS

        n = PARQUET_ROWS * 2 + 12_345  # three row groups
        rng = np.random.default_rng(0)
        df = pd.DataFrame({"dog_index": np.arange(n, dtype=np.int32) // 7, "s": rng.random(n).astype(np.float32),
                           "cohort": np.where(np.arange(n) % 3 == 0, "settled", "settling")})
        store.write_parquet("t/whole.parquet", df)
        store.write_parquet("t/parts.parquet", (df.iloc[a:a + PARQUET_ROWS] for a in range(0, n, PARQUET_ROWS)))
        assert store.read_bytes("t/parts.parquet") == store.read_bytes("t/whole.parquet")
        pd.testing.assert_frame_equal(store.read_parquet("t/parts.parquet"), df)
        ragged = [df.iloc[:10], df.iloc[10:11].assign(s=np.float32("nan")), df.iloc[11:40]]
        store.write_parquet("t/ragged.parquet", iter(ragged))
        pd.testing.assert_frame_equal(store.read_parquet("t/ragged.parquet"), pd.concat(ragged, ignore_index=True))
        with pytest.raises(ConfigError, match="no parts"):
            store.write_parquet("t/none.parquet", iter([]))
        assert not store.exists("t/none.parquet")

        def failing():
            yield df.iloc[:10]
            raise RuntimeError("the second part failed")

        with pytest.raises(RuntimeError, match="second part"):
            store.write_parquet("t/half.parquet", failing())
        assert not store.exists("t/half.parquet")  # nothing half-written that reads as the table

    def test_pointers_start_empty_and_with_a_rank_only_move_forward(self, store):
        assert store.pointer("runs/LATEST") is None
        nights = {"r1": "2026-12-01", "r2": "2026-12-03", "r3": "2026-12-02"}
        assert store.set_pointer("runs/LATEST", "r1", rank=nights.get)
        assert store.set_pointer("runs/LATEST", "r2", rank=nights.get)
        assert not store.set_pointer("runs/LATEST", "r3", rank=nights.get)  # an older night finishing later
        assert store.pointer("runs/LATEST") == "r2"
        assert store.set_pointer("runs/LATEST", "r3")  # no rank: moves
        assert store.pointer("runs/LATEST") == "r3"

    def test_a_lock_is_exclusive_and_released_on_exit(self, store):
        with store.lock("runs/.nightly.lock"):
            with pytest.raises(LockHeld, match="another nightly"), store.lock("runs/.nightly.lock",
                                                                               what="another nightly"):
                pass
        with store.lock("runs/.nightly.lock"):
            pass

    def test_a_lock_a_dead_holder_left_is_taken(self, store):
        dead = {"owner": "pid 1 on gone", "heartbeat": 0.0, "expires": 1.0}  # a lease that expired long ago
        store.write_bytes("runs/.nightly.lock", json.dumps(dead).encode())  # locally: a file no process flocks
        with store.lock("runs/.nightly.lock", ttl_s=30):
            with pytest.raises(LockHeld):
                with store.lock("runs/.nightly.lock"):
                    pass

    def test_staged_writes_appear_only_when_published_with_the_marker_last(self, store):
        staged = store.stage("runs/r1")
        store.write_json(f"{staged}/run.json", {"run_id": "r1"})
        assert not store.exists("runs/r1/_COMPLETE")
        assert staged in store.staged("runs", marker="_COMPLETE")
        store.publish(staged, "runs/r1", marker="_COMPLETE", body=b"done\n")
        assert store.read_text("runs/r1/_COMPLETE") == "done\n"
        assert store.read_json("runs/r1/run.json") == {"run_id": "r1"}
        assert store.staged("runs", marker="_COMPLETE") == []
        store.publish(staged, "runs/r1", marker="_COMPLETE", body=b"done\n")  # a retry after success: no-op
        assert store.read_json("runs/r1/run.json") == {"run_id": "r1"}

    def test_an_unheld_staging_is_abandoned_and_discarded(self, store):
        staged = store.stage("runs/r9")
        store.write_json(f"{staged}/plan.json", {})
        assert not store.abandoned(staged)  # just written: inside the grace period
        assert store.abandoned(staged, grace_s=-1.0)
        assert store.discard(staged)
        assert not store.exists(f"{staged}/plan.json")
        assert store.staged("runs", marker="_COMPLETE") == []

    def test_retract_takes_a_published_key_away_whole(self, store):
        staged = store.stage("runs/r1")
        store.write_bytes(f"{staged}/stats/a.parquet", b"1")
        store.publish(staged, "runs/r1", marker="_COMPLETE")
        store.retract("runs/r1", marker="_COMPLETE")
        assert not store.exists("runs/r1/_COMPLETE") and not store.exists("runs/r1/stats/a.parquet")

    def test_zarr_under_a_key_reopens_from_its_location(self, store):
        import zarr

        g = zarr.create_group(store.zarr("runs/r1/states.zarr"))
        g.create_array("h", shape=(10, 3), chunks=(4, 3), dtype="float16")[:] = np.arange(30).reshape(10, 3)
        again = open_store(store.location("runs/r1"))
        got = zarr.open_group(again.zarr("states.zarr", read_only=True), mode="r")["h"][2:5]
        np.testing.assert_array_equal(got, np.arange(30).reshape(10, 3)[2:5])
        assert store.is_dir("runs/r1/states.zarr")

    def test_a_child_store_sees_the_same_objects(self, store):
        store.write_bytes("models/s1/manifest.json", b"{}")
        child = store.child("models")
        assert child.list() == ["s1"] and child.read_bytes("s1/manifest.json") == b"{}"
        assert open_store(child.location("s1")).read_bytes("manifest.json") == b"{}"
        assert child.name == "models"


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path) -> Store:
        return LocalStore(tmp_path / "home")

    def test_a_staged_directory_is_renamed_so_a_second_publish_of_the_key_is_refused(self, store):
        one, two = store.stage("runs/r1"), store.stage("runs/r1")
        assert one != two and one.startswith("runs/.tmp/r1.")
        store.publish(one, "runs/r1", marker="_COMPLETE")
        with pytest.raises(StoreError, match="already exists"):
            store.publish(two, "runs/r1", marker="_COMPLETE")

    def test_a_held_staging_is_not_abandoned(self, store):
        staged = store.stage("runs/r2")
        with store.hold(staged):
            assert not store.abandoned(staged, grace_s=-1.0)
        assert store.abandoned(staged)  # its holder let go: no live process holds it

    def test_paths_and_file_urls_open_local_stores(self, tmp_path):
        assert open_store(f"file://{tmp_path}") == LocalStore(tmp_path)
        assert isinstance(open_store(str(tmp_path)), LocalStore)


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Store:
        return MemoryStore()

    def test_a_second_writer_of_one_key_is_refused_at_stage(self, store):
        store.stage("runs/r1")
        with pytest.raises(StoreError, match="being written or exists"):
            store.stage("runs/r1")

    def test_two_memory_stores_are_apart_unless_they_share_a_url(self):
        a, b = MemoryStore(), MemoryStore()
        a.write_bytes("k", b"1")
        assert not b.exists("k") and open_store(a.url).read_bytes("k") == b"1"


@pytest.mark.slow
class TestObjectStoreOnMoto(StoreContract):
    @pytest.fixture
    def store(self, s3_home) -> Store:
        s = open_store(s3_home)
        assert type(s) is ObjectStore
        return s


def test_records_ignore_unknown_keys_and_keep_none():
    rec = from_json(_Record, {"run_id": "r", "seeds": [1], "inner": {"name": "n", "sizes": []}, "note": None,
                              "later": "a field a newer version wrote"})
    assert rec == _Record("r", (1,), _Inner("n", ()), None)




@pytest.mark.parametrize("make", [lambda tmp: LocalStore(tmp), lambda tmp: MemoryStore()], ids=["local", "memory"])
def test_a_lock_waited_for_is_taken_when_its_holder_lets_go(tmp_path, make):
    store = make(tmp_path)
    held, got = threading.Event(), []

    def holder() -> None:
        with store.lock("l"):
            held.set()
            threading.Event().wait(0.3)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    with store.lock("l", wait_s=10.0):
        got.append(True)
    t.join()
    assert got == [True]
