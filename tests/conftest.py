"""Shared fixtures. Keep the whole suite well under 15 minutes on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# One OpenMP thread per process (subprocesses inherit it): two threads on a shared 2-core machine
# spin-wait on each other and run torch up to 150x slower; gruviz's own default is the same.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Quiet, local, deterministic Prefect for every test that touches it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_API_SERVICES_SCHEDULER_ENABLED", "false")


@pytest.fixture(scope="session")
def iggy_dir() -> Path:
    """The real Betfair Iggy files, or skip with a message."""
    d = SHARED_DATA / "betfair-iggy"
    if not any(d.glob("*.csv.gz")):
        pytest.skip(f"real data not present at {d}")
    return d


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test harness (temporary database + ephemeral server) for the whole session."""
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp_path_factory.mktemp("prefect-results"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield


# ---------------------------------------------------------------- shared stores (built once a session)
# Read them as they are, or copy them first (tests.stores.copy_store) to change them.


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory):
    """(root, snapshot_id, TrainReport): one snapshot of 80 simulated dogs and one trained, current 1-seed set."""
    from tests.stores import train_store

    return train_store(tmp_path_factory.mktemp("trained") / "store")


@pytest.fixture(scope="session")
def explore_store(tmp_path_factory) -> Path:
    """A store with one published run (tests.stores.EXPLORE_RUN): random GRUs through the real extract and stats,
    30 dogs in 150 races, some named (tests.stores.EXPLORE_NAMES)."""
    from tests.stores import EXPLORE_NAMES, make_store

    root = tmp_path_factory.mktemp("explore") / "store"
    make_store(root, n_dogs=30, n_races=150, names=EXPLORE_NAMES)
    return root


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, through Playwright, for one module (each test opens its own pages). Not for the
    session: Playwright's sync API leaves its event loop marked running in this thread while it is open, and the
    Prefect flows of later modules then fail."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_BUCKET = "gruviz-test"


@pytest.fixture(scope="session")
def s3_bucket():
    """moto's S3 server on a free loopback port, the AWS variables pointing at it, one bucket; its s3:// URL."""
    pytest.importorskip("s3fs", reason="the object store needs the optional dependency s3fs (pip install gruviz[dask])")
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (make test installs it)")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(S3_BUCKET)
    try:
        yield f"s3://{S3_BUCKET}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_home(s3_bucket):
    """A fresh prefix of the bucket for one test."""
    import uuid

    return f"{s3_bucket}/{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- markers (issue 25 part 8)
# Every test gets its tier markers from the fixtures it uses (item.fixturenames is the whole closure, so a fixture
# that uses one of these counts too) and its stage markers from its file: nobody has to remember to mark.
# `make test-fast` deselects the tiers: -m "not prefect and not browser and not s3 and not dask and not slow".

TIER_OF_FIXTURE = {
    "prefect_harness": "prefect",  # Prefect's test harness: a temporary database and an ephemeral server
    "prefect_server": "prefect",  # tests/test_deploy.py: `prefect server start` in a subprocess
    "s3_bucket": "s3",  # moto's S3 server on loopback
    "s3_home": "s3",
    "dask_address": "dask",  # tests/test_runners.py: a local Dask cluster of worker processes
    "browser": "browser",  # Debian's chromium through Playwright
}

STARTS_PREFECT = {
    ("test_faults.py", "test_killed_command_leaves_no_prefect_server"),
    ("test_reliability_cli.py", "test_nightly_command_ends_without_api_logging_errors_or_repeated_thread_timeout_warnings"),
}
"""(file, test) that start Prefect without a fixture saying so: `gruviz nightly` or `train` in a subprocess."""

STAGES_OF_FILE = {
    "test_ingest.py": ("ingest",),
    "test_ingest_fuzz.py": ("ingest",),
    "test_formats.py": ("ingest",),
    "test_grades.py": ("ingest",),
    "test_synth.py": ("ingest",),
    "test_features.py": ("features",),
    "test_sequences.py": ("features", "store"),
    "test_drift.py": ("features",),
    "test_model.py": ("train",),
    "test_registry.py": ("train", "store"),
    "test_byo.py": ("train",),
    "test_extract.py": ("extract",),
    "test_threads.py": ("extract",),
    "test_gpu.py": ("extract",),
    "test_runners.py": ("extract", "flows"),
    "test_stats.py": ("stats",),
    "test_cohorts.py": ("stats",),
    "test_stats_evaluate.py": ("stats", "evaluate"),
    "test_evaluate.py": ("evaluate",),
    "test_comparisons.py": ("evaluate",),
    "test_saturation.py": ("evaluate",),
    "test_repro.py": ("evaluate",),
    "test_resilience.py": ("evaluate",),
    "test_probes.py": ("evaluate",),
    "test_model_change.py": ("evaluate",),
    "test_model_change_sets.py": ("evaluate",),
    "test_report.py": ("report",),
    "test_browser.py": ("report",),
    "test_explorer.py": ("report",),
    "test_explorer_units.py": ("report",),
    "test_serve.py": ("report",),
    "test_timeline.py": ("report",),
    "test_email.py": ("notify",),
    "test_states.py": ("store",),
    "test_runs.py": ("store",),
    "test_store_contract.py": ("store",),
    "test_store_s3.py": ("store",),
    "test_faults.py": ("store",),
    "test_hygiene.py": ("store",),
    "test_flows.py": ("flows",),
    "test_cli.py": ("flows",),
    "test_deploy.py": ("flows",),
    "test_preflight.py": ("flows",),
    "test_prefect_adapter.py": ("flows",),
    "test_reliability_cli.py": ("flows",),
    "test_markers.py": (),  # the suite's own bookkeeping
}
"""Test file -> the stage markers of its tests (`pytest -m extract`); a new test file must be added here."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        tiers = {tier for fixture, tier in TIER_OF_FIXTURE.items() if fixture in names}
        if (item.path.name, getattr(item, "originalname", item.name)) in STARTS_PREFECT:
            tiers.add("prefect")
        for tier in sorted(tiers):
            item.add_marker(tier)
        for stage in STAGES_OF_FILE.get(item.path.name, ()):  # tests/test_markers.py fails on a file missing here
            item.add_marker(stage)
    _slow_files_first(items)


def _slow_files_first(items) -> None:
    """Files with a moto or cluster tier first, then those with a Prefect or browser one, then the rest (a stable sort,
    each file's tests together): `make test` hands files to its xdist workers in this order
    (--no-loadscope-reorder), so a long file is never the last one left while the other worker idles."""
    rank: dict = {}
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        r = 0 if marks & {"s3", "dask"} else 1 if marks & {"prefect", "browser"} else 2
        rank[item.path] = min(rank.get(item.path, 2), r)
    items.sort(key=lambda item: rank[item.path])
