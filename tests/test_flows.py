"""The nightly flow end to end on a small simulated set, under Prefect's test harness,
with a real SMTP server on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.smtp_server import SmtpServer, free_port

EVIL = "<script>alert(1)</script>"
BASE_URL = "http://reports.test:8765/gruviz"


@pytest.fixture(scope="module")
def store(prefect_harness, tmp_path_factory):
    """A store with a small simulated snapshot (one dog renamed to a script tag) and a trained model set."""
    from flows.train import train
    from gruviz_core.synth import simulate

    home = tmp_path_factory.mktemp("gruviz-home")
    runs = simulate(300, seed=3)
    first = runs["dog_id"].iloc[0]
    runs["dog_name"] = runs["dog_name"].astype(object)
    runs.loc[runs["dog_id"] == first, "dog_name"] = EVIL
    source = home / "forms.parquet"
    runs.to_parquet(source, index=False)
    state = train(source=[str(source)], home=str(home), seeds=2, hidden=16, epochs=3, return_state=True)
    assert state.is_completed(), state.message
    return home, source


def _env(monkeypatch, home: Path, port: int | None):
    monkeypatch.setenv("GRUVIZ_HOME", str(home))
    monkeypatch.setenv("GRUVIZ_REPORTS_BASE_URL", BASE_URL)
    monkeypatch.setenv("GRUVIZ_BLOCK_DOGS", "100")  # blocks round up to whole shards
    monkeypatch.setenv("GRUVIZ_WATCHLIST", json.dumps([EVIL]))
    if port is None:
        monkeypatch.delenv("GRUVIZ_SMTP_HOST", raising=False)
        monkeypatch.delenv("GRUVIZ_RECIPIENTS", raising=False)
        return
    monkeypatch.setenv("GRUVIZ_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("GRUVIZ_SMTP_PORT", str(port))
    monkeypatch.setenv("GRUVIZ_SMTP_TLS", "none")
    monkeypatch.setenv("GRUVIZ_RECIPIENTS", json.dumps(["team@example.com"]))


def _artifacts(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
            return {a.key: a for a in arts}

    return asyncio.run(read())


def _logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read():
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return [f"{log.name}: {log.message}" for log in logs]

    return asyncio.run(read())


def test_nightly_publishes_report_artifacts_and_email(store, monkeypatch):
    from flows.nightly import nightly

    home, source = store
    with SmtpServer() as smtp:
        _env(monkeypatch, home, smtp.port)
        state = nightly(source=[str(source)], night="2026-11-25", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    report = Path(result["report"])
    assert report.exists() and report.stat().st_size > 10_000
    page = report.read_text(encoding="utf-8")
    assert EVIL not in page.lower()  # the dog named <script> (title-cased by ingest) appears escaped only

    run_dir = Path(result["run_dir"])
    assert (run_dir / "_COMPLETE").exists() and (home / "runs" / "LATEST").read_text().strip() == run_dir.name

    arts = _artifacts(state.state_details.flow_run_id)
    assert {"nightly-report", "nightly-summary", "cohort-metrics", "extraction-progress"} <= set(arts)
    assert result["url"] in arts["nightly-report"].data
    assert float(arts["extraction-progress"].data) == pytest.approx(100.0)

    logs = _logs(state.state_details.flow_run_id)  # gruviz's own module logs reach the UI
    assert any(line.startswith("flows.stages.extract: block 0:") for line in logs), logs[:20]

    (rcpts, msg), = smtp.messages
    assert rcpts == ["team@example.com"]
    assert result["url"] == f"{BASE_URL}/2026-11-25/index.html"
    assert result["url"] in msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert f'href="{result["url"]}"' in html and EVIL not in html.lower()
    assert "watchlist: &lt;script&gt;alert(1)&lt;/script&gt;" in html.lower()  # the watched dog, escaped
    summary = arts["nightly-summary"].data.lower()
    assert EVIL not in summary and "&lt;script&gt;" in summary


def test_nightly_with_smtp_down_fails_the_run_but_keeps_the_report(store, monkeypatch):
    from flows.nightly import nightly

    home, _ = store
    _env(monkeypatch, home, free_port())  # nothing listens there
    state = nightly(night="2026-11-24", return_state=True)
    assert state.is_failed()
    assert "email failed" in state.message
    report = home / "reports" / "2026-11-24" / "index.html"
    assert report.exists()


def test_second_run_for_the_same_night_leaves_the_first_intact(store, monkeypatch):
    from flows.nightly import nightly
    from storage.states import open_states

    home, _ = store
    _env(monkeypatch, home, None)
    first = nightly(night="2026-11-23", return_state=True).result()
    before = open_states(first["run_dir"]).dog_at(0).h.copy()
    second = nightly(night="2026-11-23", return_state=True).result()
    assert second["run_dir"] != first["run_dir"]
    after = open_states(first["run_dir"]).dog_at(0).h
    assert (before == after).all()
    assert Path(second["report"]).exists()
    # the determinism watch: the same set on the same data, so every watched dog's stored states are identical
    watch = json.loads((Path(second["run_dir"]) / "eval" / "determinism.json").read_text())
    assert watch["checked"] and watch["compared"] > 0 and watch["flagged"] == [], watch


def test_nightly_with_no_parameters_ingests_the_configured_sources(store, monkeypatch, tmp_path):
    """As the scheduled deployment runs it: no parameters, GRUVIZ_SOURCES set; a file dropped into the
    directory is in that night's snapshot; a night with nothing new still publishes and says so."""
    import datetime as dt
    import shutil
    from zoneinfo import ZoneInfo

    from flows.changes import NO_NEW_DATA
    from flows.nightly import nightly
    from gruviz_core.synth import simulate
    from storage.forms import read_manifest

    home, source = store
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copyfile(source, incoming / "week1.parquet")  # the same form data the store already holds
    _env(monkeypatch, home, None)
    monkeypatch.setenv("GRUVIZ_SOURCES", json.dumps([str(incoming)]))

    state = nightly(return_state=True)
    assert state.is_completed(), state.message
    first = state.result()
    tz = ZoneInfo("Australia/Sydney")
    today = dt.datetime.now(tz).date()
    assert first["night"] in {today.isoformat(), (today - dt.timedelta(days=1)).isoformat()}
    assert first["new_data"] is False  # same content, same content-addressed snapshot
    assert "no new form data" in Path(first["report"]).read_text(encoding="utf-8")
    summary = _artifacts(state.state_details.flow_run_id)["nightly-summary"].data
    assert NO_NEW_DATA in summary

    new = simulate(40, seed=21)
    new["dog_id"] = "NEW-" + new["dog_id"].astype(str)
    new["race_id"] = "NEW-" + new["race_id"].astype(str)
    new.to_parquet(incoming / "week2.parquet", index=False)
    second = nightly(night="2026-11-26", return_state=True).result()
    assert second["new_data"] is True and second["snapshot_id"] != first["snapshot_id"]
    files = [Path(f["path"]).name for f in read_manifest(home, second["snapshot_id"])["files"]]
    assert files == ["week1.parquet", "week2.parquet"]
    page = Path(second["report"]).read_text(encoding="utf-8")
    assert second["snapshot_id"] in page and "no new form data" not in page

    third = nightly(night="2026-11-27", return_state=True).result()  # nothing dropped since: not re-read
    assert third["snapshot_id"] == second["snapshot_id"] and third["new_data"] is False

    (incoming / "week2.parquet").unlink()  # archived: the night's data would shrink without a word
    refused = nightly(night="2026-11-28", return_state=True)
    assert refused.is_failed() and "week2.parquet" in refused.message and "GRUVIZ_SOURCES_GONE_OK" in refused.message
    monkeypatch.setenv("GRUVIZ_SOURCES_GONE_OK", '["week2.parquet"]')
    state = nightly(night="2026-11-28", return_state=True)
    assert state.is_completed(), state.message
    gone = f"week2.parquet is gone: {len(new):,} runs fewer than last night"
    assert gone in Path(state.result()["report"]).read_text(encoding="utf-8")
    assert gone in _artifacts(state.state_details.flow_run_id)["nightly-summary"].data  # the email's lines
    assert any(gone in line for line in _logs(state.state_details.flow_run_id))


def test_a_night_stopped_after_publishing_its_run_gets_its_report_from_the_next(store, monkeypatch):
    """LATEST sat on a run with no report page, and the index skipped it."""
    import datetime as dt
    import shutil
    from zoneinfo import ZoneInfo

    from flows.nightly import nightly
    from flows.stages import report
    from storage.site import list_nights

    home, _ = store
    _env(monkeypatch, home, None)
    today = dt.datetime.now(ZoneInfo("Australia/Sydney")).date()
    night, tonight = (today + dt.timedelta(days=1)).isoformat(), (today + dt.timedelta(days=2)).isoformat()
    first = nightly(night=night, return_state=True).result()  # the newest night: LATEST names its run
    reports = home / "reports"
    shutil.rmtree(reports / night)  # as if the night had been killed between publish-run and report
    assert report.catch_up(str(home), str(reports), [], tonight=tonight) == f"{night}/index.html"
    assert (reports / night / "index.html").is_file()
    assert night in [n["night"] for n in list_nights(reports)]
    assert report.catch_up(str(home), str(reports), [], tonight=tonight) is None  # nothing more to build
    assert first["run_id"] in (reports / night / "night.json").read_text()
