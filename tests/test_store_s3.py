"""The store on object storage: a real S3 API (moto's server on 127.0.0.1), no mocks of boto calls.

The endpoint reaches every client through the standard AWS variables (AWS_ENDPOINT_URL_S3 and
credentials), so a worker process started by the flows finds it too; see docs/cluster.md.
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest
import zarr

pytest.importorskip("s3fs", reason="object-storage store needs the optional dependency s3fs (pip install gruviz[dask])")
pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (make test installs it)")

from flows.stages.extract import extract_run  # noqa: E402
from gruviz_core.errors import StoreError  # noqa: E402
from storage import runs, states  # noqa: E402
from storage.layout import StoreLayout  # noqa: E402
from storage.store import location, open_store, split, zarr_store  # noqa: E402
from tests.test_states import make_inputs, make_models  # noqa: E402


def _put(where, data: bytes) -> None:
    store, key = split(where)
    store.write_bytes(key, data)


def _write_run(home: str, run_id: str, night: str, *, publish: bool = True):
    tmp = extract_run(home, run_id, {"night": night, "snapshot_id": "snap", "model_set_id": "set"},
                      make_models(n_seeds=1), device="cpu", chunk_rows=4, shard_chunks=1, block_dogs=3,
                      **make_inputs([3, 5, 2, 4, 6]))
    return runs.publish_run(home, tmp) if publish else tmp


def test_store_paths_on_a_url_are_remote_and_local_paths_stay_pathlib(tmp_path):
    from pathlib import Path

    assert open_store("s3://b/p").local_root is None and open_store(f"file://{tmp_path}").local_root == tmp_path
    assert location(f"file://{tmp_path}") == tmp_path and type(location(str(tmp_path))) is type(Path())
    assert str(StoreLayout.at("s3://b/p").run("r1")) == "s3://b/p/runs/r1"


@pytest.fixture
def s3_requests(monkeypatch):
    """Every S3 request any s3fs client makes from now on: (operation, key, Range or None, bytes returned)."""
    import s3fs

    log: list[tuple[str, str, str | None, int]] = []
    real = s3fs.S3FileSystem._call_s3

    async def logged(self, method, *args, **kwargs):
        out = await real(self, method, *args, **kwargs)
        size = out.get("ContentLength", 0) if isinstance(out, dict) and method == "get_object" else 0
        log.append((method, kwargs.get("Key", ""), kwargs.get("Range"), int(size)))
        return out

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", logged)
    return log


def test_a_blocks_rows_of_the_sequences_on_the_bucket_are_only_their_chunks(s3_home, s3_requests):
    """A block reading rows [a, b) of a snapshot's sequences on the bucket GETs, per array, the shard index and
    the chunks covering those rows (byte ranges of the shard objects), and nothing of any other row: equal to
    slicing the whole, a small part of the stored bytes."""
    from storage import sequences as sq
    from tests.test_sequences import make_sequences

    seqs = make_sequences([40] * 5_000, n_features=23, n_context=37)  # 200,000 rows, 46 MB of float32 inputs
    path = location(f"{s3_home}/features/snap/{sq.SEQUENCES}")
    sq.save_sequences(seqs, path)
    stored = path.fs.du(path.path)
    s3_requests.clear()
    a, b = 150_000, 160_000
    rows = sq.load_sequence_rows(path, a, b)
    requests = list(s3_requests)
    np.testing.assert_array_equal(rows.values, seqs.values[a:b])
    np.testing.assert_array_equal(rows.context, seqs.context[a:b])
    np.testing.assert_array_equal(rows.meta["race_date"], seqs.race_date[a:b])
    assert list(rows.meta["race_id"]) == list(seqs.race_id[a:b])
    of_arrays = 0
    for name in ("values", "context", *sq.ROW_META):
        arr = zarr.open_array(zarr_store(path / name, read_only=True), mode="r")
        chunk, one_chunk_shards = arr.chunks[0], arr.shards[0] == arr.chunks[0]
        covering = (b - 1) // chunk - a // chunk + 1
        mine = [(op, rng) for op, key, rng, _ in requests if f"/{sq.SEQUENCES}/{name}/c/" in key]
        gets = [rng for op, rng in mine if op == "get_object"]
        if one_chunk_shards:  # (the per-row columns of 200,000 rows: one chunk) that chunk's shard, whole
            assert len(gets) == covering and len(mine) <= 2 * covering, (name, covering, mine)  # s3fs HEADs first
        else:  # byte ranges of the shard: its index, then each chunk covering the rows
            assert all(gets) and len(gets) == len(mine) == 1 + covering, (name, covering, mine)
        of_arrays += len(mine)
    assert len(requests) - of_arrays <= 3, requests  # besides: the marker, the group's metadata
    read = sum(n for op, _, _, n in requests if op == "get_object")
    assert read < stored / 5, (read, stored)


def test_sequences_on_the_bucket_are_complete_only_with_their_marker(s3_home, monkeypatch):
    """Object storage has no rename: the store is written under its own prefix, _COMPLETE last; a rebuild
    deletes the marker before anything else, so a write killed half way is never read as complete."""
    from storage import sequences as sq
    from tests.test_sequences import assert_same, make_sequences

    path = location(f"{s3_home}/features/snap/{sq.SEQUENCES}")
    legacy = path.parent / "sequences.npz"
    _put(legacy, b"an npz of an older gruviz")
    first = make_sequences([3, 4, 5])
    sq.save_sequences(first, path)
    assert (path / sq.COMPLETE).exists() and not legacy.exists()
    assert_same(sq.load_sequences(path), first)

    def dies(arrays, seqs):  # the staged store's arrays are laid out; the process dies before any row is written
        raise KeyboardInterrupt

    monkeypatch.setattr(sq._Arrays, "append", dies)
    with pytest.raises(KeyboardInterrupt):
        sq.save_sequences(make_sequences([6, 7], seed=1), path)
    assert sq.stored_sequence_spec(path) is None and not path.fs.exists(path.path)
    monkeypatch.undo()
    sq.save_sequences(first, path)
    assert sq.stored_sequence_spec(path) == (first.feature_names, first.context_names)


def test_pointer_last_publish_and_a_killed_run(s3_home):
    first = _write_run(s3_home, "2026-01-01-a", "2026-01-01")
    assert str(first) == f"{s3_home}/runs/2026-01-01-a"
    assert str(runs.latest_run(s3_home)) == str(first)
    # a night killed after its blocks and run.json, before publishing: its prefix stays, unpublished
    killed = _write_run(s3_home, "2026-01-02-b", "2026-01-02", publish=False)
    assert (killed / "run.json").exists() and (killed / "blocks" / "0.json").exists()
    assert str(runs.latest_run(s3_home)) == str(first)
    assert [d.name for d in runs.published_runs(s3_home)] == ["2026-01-01-a"]
    with pytest.raises(StoreError, match="no _COMPLETE"):
        states.open_states(killed)
    # the block markers name their run
    assert json.loads((killed / "blocks" / "0.json").read_text())["run_id"] == "2026-01-02-b"
    # a second writer of the same run id is refused (ids are unique; one writer per prefix)
    with pytest.raises(StoreError, match="ids are unique"):
        _write_run(s3_home, "2026-01-02-b", "2026-01-02", publish=False)
    # the sweep (under the nightly lock) removes the dead prefix after its grace; never a published run
    assert runs.sweep_tmp_runs(s3_home, grace_s=3600) == []
    assert runs.sweep_tmp_runs(s3_home, grace_s=0) == ["2026-01-02-b"]
    assert not (killed / "run.json").exists() and (first / runs.COMPLETE).exists()
    # a published run is never removed as a failed night's (the flow's cleanup after publish is a no-op)
    assert runs.remove_tmp_run(s3_home, first) is False and (first / runs.COMPLETE).exists()


def test_an_older_night_finishing_later_does_not_move_latest_back(s3_home):
    newer = _write_run(s3_home, "2026-02-02-n", "2026-02-02")
    older = _write_run(s3_home, "2026-02-01-o", "2026-02-01")
    assert str(runs.latest_run(s3_home)) == str(newer)
    assert [d.name for d in runs.published_runs(s3_home)] == [older.name, newer.name]
    assert runs.prune_runs(s3_home, keep_nights=1) == [older.name]
    assert [d.name for d in runs.published_runs(s3_home)] == [newer.name]
    assert not (older / "run.json").exists()


def test_runs_open_from_s3_in_xarray_and_the_reader(s3_home):
    import xarray as xr

    run_dir = _write_run(s3_home, "2026-03-01-x", "2026-03-01")
    tree = xr.open_datatree(str(run_dir / states.STATES), engine="zarr")
    assert list(tree["dog_id"].values) == ["D0000", "D0001", "D0002", "D0003", "D0004"]
    ds = states.open_dataset(run_dir)
    dog = states.open_states(run_dir).dog("D0001")
    np.testing.assert_allclose(ds.h.isel(obs=slice(3, 8)).values.astype(np.float32), dog.h, atol=1e-6)


def test_the_nightly_lock_refuses_a_second_night_and_expires(s3_home):
    lock = StoreLayout.at(s3_home).runs / ".nightly.lock"
    with runs.nightly_lock(s3_home):
        assert json.loads(lock.read_text())["expires"] > 0
        with pytest.raises(StoreError, match="another nightly is running"):
            with runs.nightly_lock(s3_home):
                pass
    assert not lock.exists()  # released on exit
    # a holder that died without releasing: refused until its expiry, then taken over
    _put(lock, json.dumps({"owner": "dead", "heartbeat": 0.0, "expires": 1.0}).encode())
    with runs.nightly_lock(s3_home):
        assert json.loads(lock.read_text())["owner"] != "dead"


# ------------------------------------------------------------------ the flows end to end on the bucket


@pytest.fixture(scope="module")
def s3_store(prefect_harness, s3_bucket, tmp_path_factory):
    """`gruviz demo` with GRUVIZ_HOME on the bucket: a simulated season, a model set trained and a night published,
    all there; (home, the demo's form file, the command's JSON result, the reports directory, its working dir)."""
    import contextlib
    import io

    from flows.cli import main
    from flows.commands.demo import demo_paths

    home = f"{s3_bucket}/flows-{uuid.uuid4().hex[:6]}"
    reports, cwd = tmp_path_factory.mktemp("s3-reports"), tmp_path_factory.mktemp("s3-cwd")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        _night_env(mp, home, reports)
        for name, value in {"SEEDS": "1", "HIDDEN_SIZE": "8"}.items():
            mp.setenv(f"GRUVIZ_{name}", value)
        mp.delenv("GRUVIZ_SOURCES", raising=False)
        mp.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            rc = main(["demo", "--dogs", "300", "--seed", "5", "--epochs", "2", "--night", "2026-11-25", "--json"])
    result = json.loads(out.getvalue())
    assert rc == 0, result.get("message")
    _, source = demo_paths(home, "synth-300-dogs-seed5-to-2026-11-25.parquet")
    return home, source, result, reports, cwd


def _night_env(monkeypatch, home: str, reports) -> None:
    monkeypatch.setenv("GRUVIZ_HOME", home)
    monkeypatch.setenv("GRUVIZ_REPORTS_DIR", str(reports))
    monkeypatch.setenv("GRUVIZ_BLOCK_DOGS", "100")
    monkeypatch.setenv("GRUVIZ_BOOTSTRAP", "100")
    monkeypatch.delenv("GRUVIZ_SMTP_HOST", raising=False)
    monkeypatch.delenv("GRUVIZ_RECIPIENTS", raising=False)


def test_the_demo_on_a_bucket_publishes_there_a_run_xarray_opens_and_a_report(s3_store):
    """`GRUVIZ_HOME=s3://... gruviz demo`: the model set, the run and LATEST on the bucket, the report in the reports
    directory, and nothing written where the command ran (no folder named 's3:')."""
    import xarray as xr

    from storage.registry import current_model_set

    home, source, result, reports, cwd = s3_store
    assert current_model_set(home) is not None and source.is_file()
    assert result["run_dir"].startswith(f"{home}/runs/")
    assert str(runs.latest_run(home)) == result["run_dir"]
    tree = xr.open_datatree(result["run_dir"] + "/states.zarr", engine="zarr")
    assert "dog_id" in tree.coords and tree.sizes["dog"] > 100
    ds = xr.open_zarr(result["run_dir"] + "/states.zarr", group="seed0")
    assert ds["h"].dims == ("obs", "layer", "unit")
    report = reports / "2026-11-25" / "index.html"
    assert report.is_file() and report.stat().st_size > 10_000 and result["report"] == str(report)
    assert not (StoreLayout.at(home).runs / ".nightly.lock").exists()
    assert list(cwd.iterdir()) == []


def test_a_night_failing_before_publish_leaves_latest_and_lists_nothing_new(s3_store, monkeypatch, tmp_path):
    from flows.nightly import nightly
    from flows.stages import evaluate

    home, source, *_ = s3_store
    _night_env(monkeypatch, home, tmp_path / "reports")
    latest, before = str(runs.latest_run(home)), [d.name for d in runs.published_runs(home)]

    def boom(*a, **k):
        raise RuntimeError("killed after the blocks, before publish")

    monkeypatch.setattr(evaluate, "run", boom)
    failed = nightly(source=[str(source)], night="2026-11-27", return_state=True)
    assert failed.is_failed()
    assert before and str(runs.latest_run(home)) == latest
    assert [d.name for d in runs.published_runs(home)] == before
    leftovers = [d.name for d in StoreLayout.at(home).runs.iterdir() if d.name.startswith("2026-11-27")]
    assert leftovers == []  # the failed night removed its own prefix


def test_the_nightly_refuses_to_run_while_another_holds_the_bucket(s3_store, monkeypatch, tmp_path):
    from flows.nightly import nightly

    home, source, *_ = s3_store
    _night_env(monkeypatch, home, tmp_path / "reports")
    latest = str(runs.latest_run(home))
    with runs.nightly_lock(home):
        state = nightly(source=[str(source)], night="2026-11-28", return_state=True)
    assert state.is_failed() and "another nightly is running" in str(state.message)
    assert str(runs.latest_run(home)) == latest


def test_settings_and_preflight_take_a_url_home(s3_home, tmp_path):
    from pathlib import Path

    from flows.preflight import check_store
    from flows.settings import load_settings
    from gruviz_core.errors import ConfigError

    s = load_settings(home=s3_home + "/")
    assert s.home == s3_home and s.home_is_url and s.reports_path == Path("./gruviz-reports").absolute()
    assert load_settings(home=str(tmp_path / "x" / "..")).home == str(Path(tmp_path / "x" / "..").absolute())
    assert str(check_store(s.home)) == s3_home
    assert not location(s3_home).exists()  # the probe object is gone: nothing under the prefix
    assert runs.published_runs(s3_home) == [] and runs.latest_run(s3_home) is None
    assert runs.sweep_tmp_runs(s3_home) == [] and runs.prune_runs(s3_home, 1) == []
    with pytest.raises(ConfigError, match="s3://no-such-bucket-gruviz/p.*does not exist"):
        check_store("s3://no-such-bucket-gruviz/p")


def test_nightly_on_s3_with_dask_worker_processes(s3_store, monkeypatch, tmp_path):
    """The cluster path end to end: blocks on a local Dask cluster of separate worker processes, every
    part of the run on the bucket; every row published, the run opens from s3:// and the report is built."""
    pytest.importorskip("prefect_dask", reason="the Dask runner needs the optional dependency prefect-dask")
    import xarray as xr

    from flows.nightly import nightly
    from storage.layout import RunLayout

    home, source, *_ = s3_store
    _night_env(monkeypatch, home, tmp_path / "reports")
    monkeypatch.setenv("GRUVIZ_TASK_RUNNER", "dask")
    monkeypatch.setenv("GRUVIZ_DASK_WORKERS", "2")
    monkeypatch.delenv("GRUVIZ_DASK_ADDRESS", raising=False)
    state = nightly(source=[str(source)], night="2026-11-30", return_state=True)
    assert state.is_completed(), state.message
    run_dir = state.result()["run_dir"]
    assert str(runs.latest_run(home)) == run_dir
    layout = RunLayout.at(location(run_dir))
    plan = runs.RunPlan.load(run_dir)
    markers = [json.loads(layout.block(b).read_text()) for b in range(plan.n_blocks)]
    assert markers and sum(m["dogs"] for m in markers) >= plan.n_dogs
    assert os.getpid() not in {m["pid"] for m in markers}  # blocks ran in the cluster's worker processes
    tree = xr.open_datatree(run_dir + "/states.zarr", engine="zarr")
    assert tree.sizes["dog"] == plan.n_dogs and tree["seed0"].sizes["obs"] == plan.n_obs
    h = tree["seed0"]["h"].values
    assert not np.isnan(h).all(axis=(1, 2)).any()  # no row of a real step left unwritten
    assert (tmp_path / "reports" / "2026-11-30" / "index.html").is_file()


_CONTENDER = """
import json, os, sys, time
from storage import runs
from gruviz_core.errors import StoreError
home, go, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
while time.time() < go:
    time.sleep(0.001)
try:
    with runs.nightly_lock(home, ttl_s=60):
        start = time.time()
        time.sleep(2.0)
        end = time.time()
    result = {"held": [start, end]}
except StoreError as exc:
    result = {"refused": str(exc)}
with open(os.path.join(out, str(os.getpid())), "w") as f:
    json.dump(result, f)
"""


@pytest.mark.parametrize("trial", range(2))
def test_an_expired_lock_is_taken_over_by_exactly_one_of_several_nights(s3_home, tmp_path, trial):
    """Nights starting together on an expired lock: in 2 of 5 trials 2 or 3 of them held it at once."""
    import subprocess
    import sys
    import time

    lock = StoreLayout.at(s3_home).runs / ".nightly.lock"
    _put(lock, json.dumps({"owner": "dead", "heartbeat": 0.0, "expires": 1.0}).encode())
    go = time.time() + 3.0  # every process imported and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, s3_home, str(go), str(tmp_path)], env=os.environ)
             for _ in range(5)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    results = [json.loads(f.read_text()) for f in tmp_path.iterdir()]
    held = [r["held"] for r in results if "held" in r]
    assert len(results) == 5 and len(held) == 1, results
    assert all("another nightly" in r["refused"] for r in results if "refused" in r)
    assert not lock.exists()  # released by its holder


_REGISTRAR = """
import json, os, sys, time
import torch
from gruviz_core.errors import ConfigError
from flows.byo import load_byo
from storage.registry import save_byo_set
home, go, out, seed = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.manual_seed(seed)
from tests.runner_model import build
weights = [os.path.join(out, f"w{seed}_{k}.pt") for k in range(2)]
for w in weights:
    torch.save(build().state_dict(), w)
ms = load_byo(factory="tests.runner_model:build", state_dict=weights)
while time.time() < go:
    time.sleep(0.001)
try:
    save_byo_set(home, ms, name="team-v1")
    result = {"registered": weights}
except ConfigError as exc:
    result = {"refused": str(exc)}
with open(os.path.join(out, f"result{seed}"), "w") as f:
    json.dump(result, f)
"""


def test_two_registrations_of_one_name_at_once_leave_one_whole_set(s3_home, tmp_path):
    """Both reported success and the set held a mix of their seeds."""
    import subprocess
    import sys
    import time

    import torch

    from storage.registry import load_model_set

    go = time.time() + 8.0  # both processes have imported torch and built their set by then
    procs = [subprocess.Popen([sys.executable, "-c", _REGISTRAR, s3_home, str(go), str(tmp_path), str(seed)],
                              env=os.environ) for seed in (1, 2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    results = [json.loads((tmp_path / f"result{seed}").read_text()) for seed in (1, 2)]
    winners = [r["registered"] for r in results if "registered" in r]
    assert len(winners) == 1, results
    assert any("is being registered" in r["refused"] for r in results if "refused" in r)
    stored = load_model_set(s3_home, "team-v1")
    for k, w in enumerate(winners[0]):
        expected = torch.load(w, weights_only=True)
        assert all(torch.equal(v, stored.models[k].module.state_dict()[n]) for n, v in expected.items())


def test_model_list_names_a_missing_bucket(s3_bucket):
    """Run as a user runs it, in its own process: in-process, Prefect's console handler can still hold an earlier
    test's captured stream and print a logging error of its own."""
    import subprocess
    import sys

    code = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, "model", "list", "--home", "s3://no-such-gruviz-bucket/prod"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr  # it said "no model sets"
    assert "no-such-gruviz-bucket" in p.stderr and "does not exist" in p.stderr and "Traceback" not in p.stderr
