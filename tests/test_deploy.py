"""`prefect deploy --all` against a real local Prefect server registers both deployments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.smtp_server import free_port

PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_KEY", None)
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("local Prefect server did not start within 180 s")
                time.sleep(0.5)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _api(env, path, body=None):
    req = urllib.request.Request(env["PREFECT_API_URL"] + path, data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_deploy_all_registers_nightly_and_train_with_schedules(prefect_server):
    settings = {"GRUVIZ_TIMEZONE": "Europe/London", "GRUVIZ_HOME": "/srv/gruviz",
                "GRUVIZ_SOURCES": '["/srv/forms/incoming", "/srv/forms/*.csv.gz"]',
                "GRUVIZ_REPORTS_BASE_URL": "https://reports.example/gruviz", "GRUVIZ_RECIPIENTS": '["team@example.com"]',
                "GRUVIZ_SETTINGS_FILE": "/srv/gruviz/settings.env"}
    env = {**prefect_server, "GRUVIZ_REPO": str(REPO), **settings}
    subprocess.run([PREFECT, "work-pool", "create", "gruviz-process", "--type", "process"],
                   env=env, check=True, capture_output=True, cwd=REPO)
    out = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    deployments = {d["name"]: d for d in _api(env, "/deployments/filter")}
    assert set(deployments) >= {"nightly", "train"}
    nightly, train = deployments["nightly"], deployments["train"]
    assert nightly["entrypoint"] == "flows/nightly.py:nightly"
    assert nightly["work_pool_name"] == "gruviz-process"
    (sched,) = nightly["schedules"]
    assert sched["schedule"]["cron"] == "0 2 * * *"
    assert sched["schedule"]["timezone"] == "Europe/London"
    assert train["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"
    limit = nightly.get("global_concurrency_limit") or {}
    assert limit.get("limit") == 1 or nightly.get("concurrency_limit") == 1
    for d in (nightly, train):  # the deployments carry their settings: the worker's environment need not
        assert d["job_variables"]["env"] == settings
    assert nightly["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
