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
