"""The nightly's extraction blocks on each task runner (GRUVIZ_TASK_RUNNER), a bounded window of
blocks in flight, timeouts, and a Dask worker process killed mid-block.

The Dask tests use a real local cluster of separate worker processes, reached through
GRUVIZ_DASK_ADDRESS like a team's scheduler. Faults come from the test model (tests/runner_model.py),
registered through the model registry like a team's own model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.smtp_server import SmtpServer

N_DOGS = 300
SHAPE = {"hidden": 16, "layers": 8}  # 128 states a row, chunks of 2048 rows: the run's ~5k rows make 3 shards
# (a deep, narrow GRU: the evaluate stage's many forward passes cost ~8x less than one 128-unit layer)
BLOCK_DOGS = 30  # a shard per block: 3 blocks


@pytest.fixture(scope="module")
def store(prefect_harness, tmp_path_factory):
    """A store with one small simulated snapshot and the test model set (2 seeds) as current."""
    from flows.commands.model import register
    from flows.stages.ingest import ingest
    from gruviz_core.synth import simulate
    from tests.runner_model import build

    home = tmp_path_factory.mktemp("runners-home")
    faults = home / "faults"
    faults.mkdir()
    src = home / "forms.parquet"
    simulate(N_DOGS, seed=11).to_parquet(src, index=False)
    ingest([str(src)], home)
    weights = []
    for k in (0, 1):
        torch.manual_seed(k)
        weights.append(str(home / f"seed{k}.pt"))
        torch.save(build(**SHAPE).state_dict(), weights[-1])
    register(factory="tests.runner_model:build", weights=weights,
             factory_kwargs={"fault_dir": str(faults), **SHAPE},
             trained_until="2023-03-01", name="runner-test", current=True, home=str(home))
    return home, faults


@pytest.fixture(scope="module")
def dask_address():
    """A local Dask cluster of 2 worker processes (one thread each), for the module."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed is absent: pip install 'gruviz[dask]'")
    pytest.importorskip("prefect_dask", reason="prefect-dask is absent: pip install 'gruviz[dask]'")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def env(store, monkeypatch):
    """Settings for a small night on the test store, no email; returns a setter for more."""
    home, _ = store
    monkeypatch.setenv("GRUVIZ_HOME", str(home))
    monkeypatch.setenv("GRUVIZ_BLOCK_DOGS", str(BLOCK_DOGS))
    monkeypatch.setenv("GRUVIZ_BOOTSTRAP", "100")
    monkeypatch.setenv("GRUVIZ_MIN_EVAL_RACES", "50")
    for name in ("GRUVIZ_SMTP_HOST", "GRUVIZ_RECIPIENTS", "GRUVIZ_SOURCES", "GRUVIZ_TASK_RUNNER",
                 "GRUVIZ_DASK_ADDRESS", "GRUVIZ_MAX_BLOCKS_IN_FLIGHT"):
        monkeypatch.delenv(name, raising=False)
    return lambda **kw: [monkeypatch.setenv(f"GRUVIZ_{k.upper()}", str(v)) for k, v in kw.items()]


def _night(night: str):
    from flows.nightly import nightly

    return nightly(night=night, return_state=True)


def _markers(run_dir: Path) -> list[dict]:
    from storage.layout import RunLayout

    return [json.loads(p.read_text()) for p in sorted(RunLayout.at(run_dir).blocks.glob("*.json"))]


def _check_every_row(run_dir: Path) -> int:
    """Every race row of every dog has states and a score (no block lost or half written); returns the rows."""
    import zarr

    from storage.layout import RunLayout

    root = zarr.open_group(zarr.storage.LocalStore(RunLayout.at(run_dir).states), mode="r")
    n_obs = int(root["score"].shape[0])
    for k in range(2):
        h = root[f"seed{k}/h"][:]  # (obs, L, H) float16
        assert h.shape[0] == n_obs
        assert not np.isnan(h).any(axis=(1, 2)).any(), f"{run_dir} seed {k}: rows with NaN states"
    assert not np.isnan(root["score"][:]).any(), f"{run_dir}: rows with NaN scores"
    spans = sorted(tuple(m["rows"]) for m in _markers(run_dir))
    assert spans[0][0] == 0 and spans[-1][1] == n_obs and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    return n_obs


def _block_task_runs(flow_run_id) -> dict[str, str]:
    """{task run name: state type} of the flow run's extract-block task runs."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {r.name: r.state_type.value for r in runs if r.name.startswith("extract-block")}

    return asyncio.run(read())


def _snapshot_rows(home: Path) -> tuple[int, int]:
    """(race rows, dogs) of the store's latest snapshot."""
    from storage.forms import latest_snapshot, load_snapshot

    runs = load_snapshot(home, latest_snapshot(home))
    return len(runs), runs["dog_id"].nunique()


@pytest.mark.parametrize("runner, night", [("threads", "2026-10-01"), ("processes", "2026-10-08")])
def test_one_block_in_flight_runs_blocks_one_at_a_time(env, runner, night):
    env(max_blocks_in_flight=1, task_runner=runner)
    state = _night(night)
    assert state.is_completed(), state.message
    markers = _markers(Path(state.result()["run_dir"]))
    assert len(markers) >= 3
    spans = sorted((m["started_at"], m["finished_at"]) for m in markers)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"blocks overlap with one in flight: {spans}"


def test_dask_cluster_publishes_the_tables_the_threads_runner_does(env, dask_address):
    from storage.layout import EVAL_TABLES, STATS_TABLES
    from storage.tables import has_table, read_table

    threads = _night("2026-10-02")
    assert threads.is_completed(), threads.message
    env(task_runner="dask", dask_address=dask_address, max_blocks_in_flight=2)
    dask = _night("2026-10-03")
    assert dask.is_completed(), dask.message
    a, b = Path(threads.result()["run_dir"]), Path(dask.result()["run_dir"])
    assert _check_every_row(a) == _check_every_row(b)
    tables = [name for name in STATS_TABLES + EVAL_TABLES if has_table(a, name)]
    assert len(tables) >= 10, f"tables in {a}: {tables}"
    for name in tables:
        ta, tb = read_table(a, name), read_table(b, name)
        assert list(ta.columns) == list(tb.columns) and len(ta) == len(tb), name
        num = ta.select_dtypes("number").columns
        np.testing.assert_allclose(ta[num].to_numpy(float), tb[num].to_numpy(float), rtol=1e-5, atol=1e-6,
                                   equal_nan=True, err_msg=name)


def test_a_worker_killed_mid_block_runs_the_block_again(env, store, dask_address):
    home, faults = store
    env(task_runner="dask", dask_address=dask_address, max_blocks_in_flight=2)
    (faults / "kill").touch()
    state = _night("2026-10-04")
    assert list(faults.glob("killed.*")), "no block process took the kill file"
    assert not (faults / "kill").exists()
    assert state.is_completed(), state.message
    run_dir = Path(state.result()["run_dir"])
    rows, dogs = _snapshot_rows(home)
    assert _check_every_row(run_dir) == rows
    assert sum(m["dogs"] for m in _markers(run_dir)) >= dogs  # a dog straddling two blocks counts in both
    # Dask reran the block (its scheduler reschedules a dead worker's tasks; Prefect's retry cannot fire
    # in a process that is gone), under the same Prefect task run: one completed task run per block
    blocks = _block_task_runs(state.state_details.flow_run_id)
    assert sorted(blocks.values()) == ["COMPLETED"] * len(_markers(run_dir)), blocks


def test_a_hung_block_times_out_the_night_and_the_next_night_runs(env, store):
    home, faults = store
    with SmtpServer() as smtp:
        env(block_timeout_s=2, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_tls="none",
            recipients=json.dumps(["team@example.com"]))
        (faults / "hang").touch()
        try:
            state = _night("2026-10-05")
        finally:
            (faults / "hang").unlink()
        assert state.is_failed(), state.message
        assert (faults / "hung").exists()
        (rcpts, msg), = smtp.messages  # the failure notice
        assert rcpts == ["team@example.com"] and state.name in msg["Subject"]  # TimedOut, a Failed state
    assert not [p for p in (home / "runs" / ".tmp").glob("2026-10-05*") if p.is_dir()]  # the night left nothing
    env(smtp_host="", recipients="[]")
    nxt = _night("2026-10-06")  # the lock was released
    assert nxt.is_completed(), nxt.message


def test_a_block_stuck_in_a_blocking_call_fails_the_night_at_its_backstop(env, store):
    """Prefect's task timeout cannot interrupt a blocking call in a worker thread: the flow's own backstop
    (the block timeout plus its grace) fails the night instead of waiting for the call to return."""
    from flows.blocks import block_backstop_s
    from flows.nightly import extract_block_task

    home, faults = store
    # 3 s an attempt: the healthy blocks beside the stuck one end well within it even on a loaded 2-core box (at
    # 1 s one was timed out at its done marker's fsync, twice, and Prefect's timeout failed the night first)
    env(block_timeout_s=3)
    (faults / "block").write_text("18")  # one block sleeps 18 s in a single call
    t0 = time.monotonic()
    state = _night("2026-10-09")
    took = time.monotonic() - t0
    assert list(faults.glob("blocked.*")), "no block took the fault"
    assert state.is_failed(), state.message
    assert "GRUVIZ_BLOCK_TIMEOUT_S=3 s" in state.message and "blocking call" in state.message, state.message
    assert block_backstop_s(extract_block_task, 3) == 13.0 and took < 18, took  # failed at the backstop, before the call returned
    assert not [p for p in (home / "runs" / ".tmp").glob("2026-10-09*") if p.is_dir()]
    time.sleep(max(0.0, 18.5 - took))  # the stuck thread wakes and ends (Prefect's timeout fires then)
    assert not [p for p in (home / "runs" / ".tmp").glob("2026-10-09*") if p.is_dir()]  # it wrote nothing


def test_a_night_past_its_timeout_ends_failed_and_releases_the_lock(env, store):
    home, faults = store
    env(nightly_timeout_s=4)
    (faults / "hang").touch()
    try:
        state = _night("2026-10-07")
    finally:
        (faults / "hang").unlink()
    assert state.is_failed()
    assert "GRUVIZ_NIGHTLY_TIMEOUT_S" in state.message
    from storage.runs import nightly_lock

    with nightly_lock(home):  # free again
        pass
