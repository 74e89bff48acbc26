"""A run's life in the store (storage.runs), the same on a directory and on the in-memory object store:
staged, published under a marker written last, LATEST only forward, a publish retried after it succeeded,
abandoned stagings swept, retention by night."""

from __future__ import annotations

import pytest

from gruviz_core.errors import StoreError
from storage import runs
from storage.objects import MemoryStore
from storage.store import open_store


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path) -> str:
    return str(tmp_path / "home") if request.param == "local" else MemoryStore().url


def _finished(root: str, run_id: str, night: str):
    """A staged run holding just its run.json (what publishing reads), as finish_run leaves it."""
    tmp = runs.stage_run(root, run_id)
    open_store(tmp).write_json("run.json", {"run_id": run_id, "night": night, "finished_at": f"{night}T03:00:00"})
    return tmp


def test_a_run_is_listed_only_once_published_and_latest_follows(root):
    tmp = _finished(root, "r1", "2026-12-01")
    assert runs.published_runs(root) == [] and runs.latest_run(root) is None
    run = runs.publish_run(root, tmp)
    assert run.name == "r1" and runs.latest_run(root) == run
    assert open_store(run).read_text(runs.COMPLETE) == "2026-12-01T03:00:00\n"
    assert [d.name for d in runs.published_runs(root)] == ["r1"]


def test_a_publish_retried_after_it_succeeded_returns_the_published_run(root):
    tmp = _finished(root, "r1", "2026-12-01")
    first = runs.publish_run(root, tmp)
    assert runs.publish_run(root, tmp) == first  # Prefect's retry of a publish whose reply was lost
    assert [d.name for d in runs.published_runs(root)] == ["r1"] and runs.latest_run(root) == first


def test_a_publish_without_a_finished_run_is_refused(root):
    tmp = runs.stage_run(root, "r1")
    with pytest.raises(StoreError, match="finish_run"):
        runs.publish_run(root, tmp)


def test_latest_only_moves_forward_in_night_order(root):
    runs.publish_run(root, _finished(root, "r25", "2026-11-25"))
    runs.publish_run(root, _finished(root, "r23", "2026-11-23"))  # a backfill finishing later
    assert runs.latest_run(root).name == "r25"
    runs.publish_run(root, _finished(root, "r25b", "2026-11-25"))  # a rerun of the newest night
    assert runs.latest_run(root).name == "r25b"
    assert [d.name for d in runs.published_runs(root)] == ["r23", "r25", "r25b"]


def test_an_abandoned_staging_is_swept_and_latest_kept(root):
    runs.publish_run(root, _finished(root, "r1", "2026-12-01"))
    dead = _finished(root, "r2", "2026-12-02")
    assert runs.sweep_tmp_runs(root) == []  # recent: its writer may still be at work
    assert len(runs.sweep_tmp_runs(root, grace_s=-1.0)) == 1
    assert not open_store(dead).exists("run.json") and runs.latest_run(root).name == "r1"


def test_retention_keeps_the_newest_nights_and_never_latest(root):
    for i, night in enumerate(["2026-11-20", "2026-11-21", "2026-11-22"]):
        runs.publish_run(root, _finished(root, f"r{i}", night))
    assert runs.prune_runs(root, 0) == []
    assert runs.prune_runs(root, 1) == ["r0", "r1"]
    assert [d.name for d in runs.published_runs(root)] == ["r2"] and runs.latest_run(root).name == "r2"


def test_one_nightly_at_a_time(root):
    with runs.nightly_lock(root), pytest.raises(StoreError, match="another nightly"), runs.nightly_lock(root):
        pass
    with runs.nightly_lock(root):
        pass


def test_the_code_version_names_the_computing_code():
    import gruviz_core

    v = runs.code_version()
    assert v.startswith(gruviz_core.__version__ + "+") and len(v.split("+")[1]) == 10
