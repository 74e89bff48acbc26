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
