"""Store hygiene: temporary runs cleaned on failure and swept when stale, retention, LATEST only forward,
one nightly per store; the training promotion gate; strict JSON. Real processes and signals for locks."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gruviz_core.errors import StoreError
from storage import runs

REPO = Path(__file__).resolve().parents[1]


def _publish(root: Path, run_id: str, night: str) -> Path:
    """A published run with just its run.json (enough for pointers and retention)."""
    tmp = root / "runs" / ".tmp" / f"{run_id}.abcd1234"
    tmp.mkdir(parents=True)
    (tmp / "run.json").write_text(json.dumps({"run_id": run_id, "night": night, "finished_at": "2026-01-01T00:00:00"}))
    return runs.publish_run(root, tmp)


def _hold(kind: str, path: Path) -> subprocess.Popen:
    """A real process holding the nightly lock of store `path` or the owner lock of tmp run `path`."""
    code = (
        "import sys, time\n"
        "from storage import runs\n"
        f"cm = runs.nightly_lock(sys.argv[1]) if {kind!r} == 'nightly' else runs.hold_tmp_run(sys.argv[1])\n"
        "with cm:\n    print('held', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def test_latest_only_moves_forward(tmp_path):
    _publish(tmp_path, "r25", "2026-11-25")
    _publish(tmp_path, "r23", "2026-11-23")  # a backfill publishes...
    assert (tmp_path / "runs" / "r23" / "_COMPLETE").exists()
    assert runs.latest_run(tmp_path).name == "r25"  # ...without taking LATEST
    _publish(tmp_path, "r25b", "2026-11-25")  # a rerun of the newest night does
    assert runs.latest_run(tmp_path).name == "r25b"
    _publish(tmp_path, "r26", "2026-11-26")
    assert runs.latest_run(tmp_path).name == "r26"


def test_retention_keeps_the_newest_nights_and_never_latest(tmp_path):
    for i, night in enumerate(["2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"]):
        _publish(tmp_path, f"r{i}", night)
    _publish(tmp_path, "r0b", "2026-11-20")
    assert sorted(runs.prune_runs(tmp_path, 2)) == ["r0", "r0b", "r1"]
    assert [d.name for d in runs.published_runs(tmp_path)] == ["r2", "r3"]
    assert runs.prune_runs(tmp_path, 0) == [] and runs.prune_runs(tmp_path, 1) == ["r2"]
    assert runs.latest_run(tmp_path).name == "r3" and not list((tmp_path / "runs" / ".tmp").iterdir())


def test_report_retention_rewrites_the_index(tmp_path):
    from reports.render import render_index
    from storage.site import list_nights, prune_reports, write_index

    for night in ("2026-11-20", "2026-11-21", "2026-11-22"):
        (tmp_path / night).mkdir()
        (tmp_path / night / "index.html").write_text(night)
    write_index(tmp_path, render_index)
    assert "2026-11-20" in (tmp_path / "index.html").read_text()
    assert prune_reports(tmp_path, 2, render_index) == ["2026-11-20"]
    assert [n["night"] for n in list_nights(tmp_path)] == ["2026-11-22", "2026-11-21"]
    index = (tmp_path / "index.html").read_text()
    assert "2026-11-20" not in index and "2026-11-22" in index
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["2026-11-21", "2026-11-22",
                                                                                       "index.html"]


def test_one_nightly_per_store_and_a_dead_holder_frees_it(tmp_path):
    proc = _hold("nightly", tmp_path)
    try:
        with pytest.raises(StoreError, match=f"another nightly is running .*pid {proc.pid}"):
            with runs.nightly_lock(tmp_path):
                pass
    finally:
        _kill(proc)  # kill -9: no cleanup ran, the lock file stays...
    assert (tmp_path / "runs" / ".nightly.lock").exists()
    with runs.nightly_lock(tmp_path):  # ...and is not a stale lock
        pass


def test_sweep_removes_only_stale_temporary_runs(tmp_path):
    tmp = tmp_path / "runs" / ".tmp"
    live, dead, fresh, old = (tmp / f"{n}.00000000" for n in ("live", "dead", "fresh", "old"))
    for d in (live, dead, fresh, old):
        d.mkdir(parents=True)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    holder, victim = _hold("tmp", live), _hold("tmp", dead)
    try:
        _kill(victim)  # a night killed with -9 mid-run
        assert sorted(runs.sweep_tmp_runs(tmp_path)) == ["dead.00000000", "old.00000000"]
        assert live.is_dir() and fresh.is_dir() and not dead.exists() and not old.exists()
        assert not (tmp / "dead.00000000.lock").exists()
    finally:
        _kill(holder)
    assert runs.sweep_tmp_runs(tmp_path) == ["live.00000000"]


def test_remove_tmp_run_refuses_paths_outside_runs_tmp(tmp_path):
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    with pytest.raises(StoreError, match="not a temporary run"):
        runs.remove_tmp_run(tmp_path, tmp_path / "runs" / "r1")
    assert (tmp_path / "runs" / "r1").is_dir()


# ------------------------------------------------------------------ flows on a tiny trained store


@pytest.fixture(scope="module")
def tiny_store(trained_store, tmp_path_factory):
    """A copy of conftest's trained_store: a snapshot of 80 simulated dogs and a 1-seed model set (forced current).
    The module's nights and registrations change it."""
    from tests.stores import copy_store

    root, snap, report = trained_store
    return copy_store(root, tmp_path_factory.mktemp("hygiene") / "store"), snap, report


def _night_env(monkeypatch, home: Path) -> None:
    for k in ("GRUVIZ_SMTP_HOST", "GRUVIZ_RECIPIENTS", "GRUVIZ_SETTINGS_FILE", "GRUVIZ_REPORTS_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GRUVIZ_HOME", str(home))


def test_a_failed_night_removes_its_temporary_run_and_sweeps_stale_ones(tiny_store, monkeypatch, prefect_harness):
    from flows import nightly as nightly_mod

    root, _, _ = tiny_store
    _night_env(monkeypatch, root)
    stale = root / "runs" / ".tmp" / "2026-01-01-old.deadbeef"
    stale.mkdir(parents=True)
    (root / "runs" / ".tmp" / "2026-01-01-old.deadbeef.lock").write_text("")  # its owner died

    def disk_full(*_a, **_k):  # a fault-injecting stats writer: the disk fills after extraction
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nightly_mod.stats, "compute_stats", disk_full)
    state = nightly_mod.nightly(night="2026-11-25", return_state=True)
    assert state.is_failed() and "No space left" in state.message
    assert list((root / "runs" / ".tmp").iterdir()) == []  # its own tmp run and the stale one are gone
    assert runs.latest_run(root) is None


def test_a_night_while_another_holds_the_store_fails_first(tiny_store, monkeypatch, prefect_harness):
    from flows.nightly import nightly

    root, _, _ = tiny_store
    _night_env(monkeypatch, root)
    proc = _hold("nightly", root)
    try:
        state = nightly(night="2026-11-25", return_state=True)
    finally:
        _kill(proc)
    assert state.is_failed() and "another nightly is running" in state.message
    assert not (root / "runs" / ".tmp").exists() or list((root / "runs" / ".tmp").iterdir()) == []


def test_a_set_worse_than_uniform_is_registered_but_not_current(tiny_store):
    import numpy as np

    from flows.stages.ingest import run as ingest
    from flows.stages.train import train_and_register
    from gruviz_core.synth import simulate
    from gruviz_core.train import TrainConfig
    from storage.registry import current_model_set, list_model_sets

    root, _, good = tiny_store
    runs = simulate(80, 6)  # results dealt at random within each race: no form to learn, uniform is best
    rng = np.random.default_rng(0)
    result = ["finish_pos", "won", "run_time_s", "margin_lengths", "sectional_s"]
    for _, idx in runs.groupby("race_id").indices.items():
        runs.loc[runs.index[idx], result] = runs.iloc[idx][result].iloc[rng.permutation(len(idx))].to_numpy()
    runs.to_parquet(root / "noise.parquet")
    snap = ingest([str(root / "noise.parquet")], root).snapshot_id
    frozen = TrainConfig(epochs=1, lr=0.0, batch_rows=4000, chunk_dogs=256)  # the random init: no skill
    bad = train_and_register(root, snap, seeds=1, hidden=4, train_config=frozen)
    assert not bad.beats_uniform and not bad.current
    assert bad.set_id in list_model_sets(root) and current_model_set(root) == good.set_id
    forced = train_and_register(root, snap, seeds=1, hidden=4, train_config=frozen, promote=True)
    assert forced.current and current_model_set(root) == forced.set_id


def test_strict_json_has_no_bare_nan():
    import numpy as np

    from flows.output import dumps_strict

    text = dumps_strict({"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.int64(3), "d": {"e": -math.inf}})

    def refuse(name):
        raise ValueError(name)

    assert json.loads(text, parse_constant=refuse) == {"a": None, "b": [None, 1.5], "c": 3, "d": {"e": None}}
