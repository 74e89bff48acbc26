"""The nightly flow: ingest -> features -> extract (one task per block) -> stats -> evaluate -> probe -> drift ->
model change -> publish run -> report -> publish report -> notify. Tasks pass store keys and paths, never arrays."""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import queue
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.timeout import timeout

from flows.logs import route_library_logs
from flows.notify import notify_failure, send_report_email
from flows.preflight import Preflight, preflight_nightly
from flows.progress import report as progress_report
from flows.settings import Settings, load_settings
from flows.stages import determinism, drift, evaluate, extract, features, ingest, model_change, probe, report, stats
from flows.stages.extract import set_torch_threads
from flows.stages.notify import email_lines
from gruviz_core.errors import ConfigError, GruvizError
from storage.states import hold_tmp_run, nightly_lock, remove_tmp_run, sweep_tmp_runs

__all__ = ["nightly", "block_runner", "NightlyTimeoutError", "BlockTimeoutError", "block_backstop_s", "NO_NEW_DATA"]

log = logging.getLogger(__name__)

NO_NEW_DATA = "no new form data (the sources are unchanged since the last snapshot)"


class NightlyTimeoutError(GruvizError, TimeoutError):
    """The night ran past GRUVIZ_NIGHTLY_TIMEOUT_S."""


class BlockTimeoutError(GruvizError, TimeoutError):
    """A block ran well past GRUVIZ_BLOCK_TIMEOUT_S without its task ending (stuck where Prefect's own task
    timeout cannot reach it: a blocking call in a worker thread)."""


def block_backstop_s(block_timeout_s: float) -> float:
    """How long the flow waits on one block (every attempt of extract_block_task) before failing the night
    itself: each attempt's timeout and the retry delays between them, plus a grace (10% of the timeout, at
    least 5 s) in which Prefect's own task timeout ends it the usual way when it can."""
    retries, delay = extract_block_task.retries, float(extract_block_task.retry_delay_seconds or 0)
    return (retries + 1) * block_timeout_s + retries * delay + max(5.0, 0.1 * block_timeout_s)


# ---------------------------------------------------------------- tasks (thin calls)


@task(name="ingest", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ingest_task(root: str, sources: list[str], inflate: dict | None = None) -> str:
    summary = ingest.run(sources, root, inflate=inflate)
    get_run_logger().info(
        "ingested %s: rows_in=%d accepted=%d rejected=%d duplicates_merged=%d",
        summary.snapshot_id, summary.rows_in, summary.accepted, summary.rejected, summary.duplicates_merged,
    )
    return summary.snapshot_id


@task(name="ingest-sources", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ingest_sources_task(root: str, sources: list[str], inflate: dict | None = None) -> dict:
    """{"snapshot_id", "new_data"}: the latest snapshot reused when the source files are those it was made of."""
    before = _latest_or_none(root)
    if before is not None and _same_files(root, before, sources):
        get_run_logger().info("sources unchanged since snapshot %s: no new form data", before)
        return {"snapshot_id": before, "new_data": False}
    snapshot_id = ingest_task.fn(root, sources, inflate)
    return {"snapshot_id": snapshot_id, "new_data": snapshot_id != before}


@task(name="features", retries=1, cache_policy=NO_CACHE)
def features_task(root: str, snapshot_id: str, set_id: str | None = None) -> str:
    return str(features.run(root, snapshot_id, set_id))


@task(name="begin-run", cache_policy=NO_CACHE)
def begin_run_task(root: str, run_id: str, meta: dict, seq_path: str, set_id: str, block_dogs: int,
                   parallel: int = 1) -> dict:
    return extract.begin(root, run_id, meta, seq_path, set_id, block_dogs, parallel)


@task(name="extract-block", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def extract_block_task(plan: dict, block: int, device: str, batch_size: int, torch_threads: int = 1) -> int:
    """One block's shards; set up for whichever process runs it (a thread, a pool process, a Dask worker)."""
    route_library_logs()
    set_torch_threads(torch_threads)
    return extract.block(plan, block, device=device, batch_size=batch_size, progress=_BlockProgress(block))


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(plan: dict) -> str:
    return extract.finish(plan)


@task(name="stats", cache_policy=NO_CACHE)
def stats_task(tmp_dir: str, rule: dict) -> dict:
    return _jsonable(stats.compute_stats(tmp_dir, rule=rule))


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(tmp_dir: str, root: str, set_id: str, seq_path: str, n_boot: int, min_races: int) -> dict:
    return evaluate.run(tmp_dir, root, set_id, seq_path, n_boot=n_boot, min_races=min_races)


@task(name="probe", cache_policy=NO_CACHE)
def probe_task(tmp_dir: str, root: str, snapshot_id: str, dogs: int) -> dict:
    """The probe atlas; a failure is recorded for the report (eval/probe.json), never fails the night."""
    return probe.run(tmp_dir, root, snapshot_id, dogs=dogs)


@task(name="drift", cache_policy=NO_CACHE)
def drift_task(tmp_dir: str, root: str, set_id: str, seq_path: str, snapshot_id: str, psi: float, share: float) -> dict:
    """Tonight's inputs against the set's training window; a failure is recorded (eval/drift.json), never fails the night."""
    return drift.run(tmp_dir, root, set_id, seq_path, snapshot_id, psi_threshold=psi, share_threshold=share)


@task(name="model-change", cache_policy=NO_CACHE)
def model_change_task(tmp_dir: str, root: str, set_id: str, seq_path: str, dogs: int, n_boot: int, device: str) -> dict:
    """Whether a new model set took over tonight and, if so, the previous set on tonight's held-out races
    (eval/model_change.json); a failure is recorded, never fails the night."""
    return model_change.run(tmp_dir, root, set_id, seq_path, dogs=dogs, n_boot=n_boot, device=device)


@task(name="determinism", cache_policy=NO_CACHE)
def determinism_task(tmp_dir: str, root: str, set_id: str, watchlist: list[str], dogs: int) -> dict:
    """The watched dogs' states against last night's (eval/determinism.json); a failure is recorded, never fails the night."""
    return determinism.run(tmp_dir, root, set_id, watchlist, dogs=dogs)


@task(name="publish-run", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_run_task(root: str, tmp_dir: str) -> str:
    from storage.states import publish_run

    return str(publish_run(root, tmp_dir))


@task(name="report", retries=1, cache_policy=NO_CACHE)
def report_task(run_dir: str, root: str, reports_dir: str, night: str, snapshot_id: str, watchlist: list[str]) -> str:
    return report.run(run_dir, root, reports_dir, night, snapshot_id, watchlist)


@task(name="catch-up-report", retries=1, cache_policy=NO_CACHE)
def catch_up_report_task(root: str, reports_dir: str, watchlist: list[str], tonight: str) -> str | None:
    built = report.catch_up(root, reports_dir, watchlist, tonight=tonight)
    if built:
        get_run_logger().warning("the latest published run had no report page (its night stopped after publishing "
                                 "it); built it now: %s", built)
    return built


@task(name="retention", cache_policy=NO_CACHE)
def retention_task(root: str, reports_dir: str, keep_nights: int) -> dict:
    from reports.render import render_index
    from storage.site import prune_reports
    from storage.states import prune_runs

    removed = {"runs": prune_runs(root, keep_nights), "reports": prune_reports(reports_dir, keep_nights, render_index)}
    if removed["runs"] or removed["reports"]:
        get_run_logger().info("retention (%d nights): removed runs %s, report nights %s", keep_nights,
                              removed["runs"], removed["reports"])
    return removed


# ---------------------------------------------------------------- the flow


@flow(name="nightly", on_failure=[notify_failure], on_crashed=[notify_failure])
def nightly(
    source: list[str] | None = None,
    night: str | None = None,
    home: str | None = None,
    model_set: str | None = None,
    device: str | None = None,
    cohort_rule: str | None = None,
) -> dict:
    """One night: the latest form data through the current model set into a published run and report."""
    route_library_logs()
    s = load_settings(home=home, device=device, cohort_rule=cohort_rule)
    sources = list(source or s.sources)
    night = night or _scheduled_night(s.timezone)
    checked = preflight_nightly(s, night=night, model_set=model_set, sources=sources)  # before any work
    deadline = time.monotonic() + s.nightly_timeout_s
    try:
        # the flow's own timeout, from settings (a decorator's timeout_seconds is fixed at import): an
        # alarm in the main thread, and the deadline checked while waiting on blocks (where nights hang)
        with timeout(s.nightly_timeout_s, timeout_exc_type=_TimedOut), ExitStack() as held:
            held.enter_context(nightly_lock(checked.root))  # one night per store at a time; released on timeout
            swept = sweep_tmp_runs(checked.root)
            if swept:
                get_run_logger().warning("removed %d stale temporary run(s): %s", len(swept), ", ".join(swept))
            return _night(s, checked, sources, held, deadline)
    except _TimedOut:
        raise NightlyTimeoutError(
            f"nightly {night} on {checked.root} ran past GRUVIZ_NIGHTLY_TIMEOUT_S={s.nightly_timeout_s:g} s and was "
            "stopped: nothing was published and the lock is released; look for a hung block in the task runs, "
            "or raise the timeout") from None


class _TimedOut(TimeoutError):
    """Raised inside the night by its timeout scope; turned into NightlyTimeoutError outside it."""


def _night(s: Settings, checked: Preflight, sources: list[str], held: ExitStack, deadline: float) -> dict:
    logger = get_run_logger()
    set_torch_threads(s.torch_threads)
    root, night = str(checked.root), checked.night

    catch_up_report_task(root, str(checked.reports_dir), list(s.watchlist), night)
    if sources:
        ingested = ingest_sources_task(root, sources, s.inflate_limit)
        snapshot_id, new_data = ingested["snapshot_id"], ingested["new_data"]
    else:
        snapshot_id, new_data = checked.snapshot_id, None  # None: nothing to ingest was configured
    set_id = checked.model_set
    seq_path = features_task(root, snapshot_id, set_id)
    run_id = f"{night}-{set_id.rsplit('-', 1)[-1][:8]}-{uuid.uuid4().hex[:6]}"
    meta = {
        "run_id": run_id, "night": night, "snapshot_id": snapshot_id, "model_set_id": set_id,
        "device": s.device, "flow_run_id": str(flow_run.id or ""),
        "settings": s.model_dump(mode="json", exclude={"smtp_password"}),
        **_model_facts(root, set_id), "libraries": determinism.library_versions(),
    }
    if new_data is False:
        meta["form_data"] = NO_NEW_DATA
    if checked.sources_gone:
        for line in checked.sources_gone:
            logger.warning("sources: %s (acknowledged by GRUVIZ_SOURCES_GONE_OK)", line)
        meta["form_data"] = "; ".join(checked.sources_gone)
    plan = begin_run_task(root, run_id, meta, seq_path, set_id, s.block_dogs, s.blocks_in_flight)
    held.enter_context(hold_tmp_run(plan["tmp_dir"]))  # no sweep takes it while this night runs
    held.callback(remove_tmp_run, root, plan["tmp_dir"])  # a failed night leaves nothing; after publish, a no-op
    _extract_blocks(plan, s, deadline)
    tmp_dir = finish_run_task(plan)
    stats_task(tmp_dir, _rule(s))
    evaluate_timed = evaluate_task.with_options(timeout_seconds=s.evaluate_timeout_s)
    headline = evaluate_timed(tmp_dir, root, set_id, seq_path, s.bootstrap, s.min_eval_races)
    probe_task(tmp_dir, root, snapshot_id, s.probe_dogs)
    drift_task(tmp_dir, root, set_id, seq_path, snapshot_id, s.drift_psi, s.drift_share)
    model_change_task(tmp_dir, root, set_id, seq_path, s.model_change_dogs, s.bootstrap, s.device)
    determinism_task(tmp_dir, root, set_id, list(s.watchlist), s.determinism_dogs)
    run_dir = publish_run_task(root, tmp_dir)
    rel = report_task(run_dir, root, str(checked.reports_dir), night, snapshot_id, list(s.watchlist))
    retention_task(root, str(checked.reports_dir), s.keep_nights)

    url = _report_link(s, rel)
    lines = email_lines(run_dir, list(s.watchlist))  # labelled headline: the summary artifact and the email
    lines = {**drift.email_lines(run_dir), **determinism.email_lines(run_dir), **lines}  # before the findings on them
    if meta.get("form_data"):
        lines = {"form data": meta["form_data"], **lines}
    lines = {**model_change.email_lines(run_dir), **lines}  # the first line when a new set took over
    _artifacts(url, night, lines, run_dir)
    result = {"run_id": run_id, "run_dir": run_dir, "report": str(s.reports_path.resolve() / rel), "url": url,
              "night": night, "snapshot_id": snapshot_id, "model_set_id": set_id, "headline": headline,
              "new_data": new_data}
    if s.recipients:
        sent = send_report_email.with_options(timeout_seconds=s.email_timeout_s)(night, url, lines, return_state=True)
        if sent.is_failed():
            logger.error("report published at %s but the email failed: %s", result["report"], sent.message)
            return Failed(message=f"report published at {result['report']}, but the email failed: {sent.message}",
                          data=result)
    logger.info("report published at %s", result["report"])
    return result


def _extract_blocks(plan: dict, s: Settings, deadline: float) -> None:
    """Every block on the runner chosen by settings, at most `s.blocks_in_flight` submitted at once:
    a window of futures topped up as they complete. The progress artifact counts finished blocks' dogs.
    Past `deadline` (time.monotonic()) the night stops waiting; so it does on a block still running
    `block_backstop_s` after it was submitted: Prefect's task timeout cannot interrupt a blocking call in a
    worker thread (threads and Dask), and such a block would otherwise hold the night to its own timeout."""
    n, total = int(plan["n_blocks"]), max(int(plan.get("n_dogs", 0)), 1)
    limit = s.blocks_in_flight
    progress = create_progress_artifact(0.0, key="extraction-progress", description="Dogs extracted (%)")
    block_task = extract_block_task.with_options(timeout_seconds=s.block_timeout_s)
    get_run_logger().info("extracting %d block(s) on %s, at most %d in flight", n, s.task_runner, limit)
    finished: queue.Queue = queue.Queue()
    done_dogs, next_block = 0, 0
    due: dict[Any, tuple[float, int]] = {}  # in-flight future -> (backstop time, block)
    with block_runner(s, limit) as runner:
        while next_block < n or due:
            while next_block < n and len(due) < limit:
                fut = runner.submit(block_task, {"plan": plan, "block": next_block, "device": s.device,
                                                 "batch_size": s.batch_size, "torch_threads": s.torch_threads})
                due[fut] = (time.monotonic() + block_backstop_s(s.block_timeout_s), next_block)
                fut.add_done_callback(finished.put)
                next_block += 1
            fut = _next_finished(finished, deadline, due, s.block_timeout_s)
            del due[fut]
            done_dogs += fut.result()  # raises if a block failed: the run stays unpublished
            update_progress_artifact(progress, min(100.0, 100.0 * done_dogs / total))  # a straddling dog counts twice
            progress_report("extract", min(done_dogs, total), total, unit="dogs")  # the CLI's bar (flows.progress)
    update_progress_artifact(progress, 100.0)


def _next_finished(finished: queue.Queue, deadline: float, due: dict, block_timeout_s: float, poll_s: float = 5.0):
    """The next block future to finish; _TimedOut past the night's deadline, BlockTimeoutError past a block's
    backstop in `due` ({future: (time, block)}). Short waits, so nothing blocks for long."""
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise _TimedOut("the night's deadline passed while blocks were running")
        late = min(due.values()) if due else (deadline, -1)
        if now >= late[0]:
            raise BlockTimeoutError(
                f"block {late[1]} was still running {block_backstop_s(block_timeout_s):g} s after it started (every attempt "
                f"at GRUVIZ_BLOCK_TIMEOUT_S={block_timeout_s:g} s, and a grace), and its task did not end (stuck in a blocking call "
                "where the task timeout cannot reach it); the night stops here, nothing is published")
        try:
            return finished.get(timeout=max(0.01, min(poll_s, deadline - now, late[0] - now)))
        except queue.Empty:
            continue


def block_runner(s: Settings, limit: int) -> TaskRunner:
    """The task runner extraction blocks run on (`s.task_runner`); enter it for the blocks' lifetime."""
    if s.task_runner == "threads":
        return _Threads(max_workers=limit)
    if s.task_runner == "processes":
        return _Processes(max_workers=limit)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("GRUVIZ_TASK_RUNNER=dask needs prefect-dask and dask.distributed: "
                          "pip install 'gruviz[dask]', or use threads or processes") from None
    if s.dask_address:
        return DaskTaskRunner(address=s.dask_address)
    workers = s.dask_workers or max(1, min(os.cpu_count() or 1, limit))
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": workers, "processes": True, "threads_per_worker": 1})


class _Threads(ThreadPoolTaskRunner):
    """Prefect's thread pool, except that leaving it on an error (a failed block, the night's timeout)
    does not wait for the blocks still running: a hung thread cannot be stopped from outside, so it
    ends at its own block timeout or with the process, and the night ends now."""

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is not None and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        super().__exit__(exc_type, exc_value, traceback)


class _Processes(ProcessPoolTaskRunner):
    """Prefect's process pool (spawned processes), except that leaving it on an error terminates the
    pool's processes instead of waiting for blocks still running (a hung block ends with its process)."""

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is not None and self._executor is not None:
            for proc in list(getattr(self._executor, "_processes", {}).values()):  # no public way to stop them
                proc.terminate()
        super().__exit__(exc_type, exc_value, traceback)


class _BlockProgress:
    """Logs a block's own progress (dogs done of its dogs) at most every `every_s` seconds, from
    whichever process runs it; the run's progress artifact is the flow's (finished blocks)."""

    def __init__(self, block: int, every_s: float = 30.0):
        self.block, self.every_s, self._last = block, every_s, time.monotonic()

    def __call__(self, done: int, in_block: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            get_run_logger().info("block %d: %d of %d dogs", self.block, done, in_block)


def _artifacts(url: str, night: str, lines: dict[str, str], run_dir: str) -> None:
    create_link_artifact(url, link_text=f"gruviz report {night}", key="nightly-report",
                         description="The published nightly report")
    md = [f"# gruviz nightly {night}", "", f"[Open the report]({url})", "", "| | |", "|---|---|"]
    md += [f"| {_md(k)} | {_md(v)} |" for k, v in lines.items()]
    create_markdown_artifact("\n".join(md), key="nightly-summary", description="Headline numbers")
    metrics = _cohort_metrics_rows(run_dir)
    if metrics:
        create_table_artifact(metrics, key="cohort-metrics", description="Cohort metrics with 95% intervals")


def _md(text: str) -> str:
    """Data text safe inside a markdown table cell (the UI renders markdown)."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _cohort_metrics_rows(run_dir: str) -> list[dict]:
    from storage.tables import has_table, read_table

    if not has_table(run_dir, "cohort_metrics"):
        return []
    df = read_table(run_dir, "cohort_metrics").round(5)
    return json.loads(df.to_json(orient="records"))


def _report_link(s: Settings, rel: str) -> str:
    from reports.email import report_url

    return report_url(s.reports_base_url, rel)


def _rule(s: Settings) -> dict:
    rule = {"name": s.cohort_rule, "tau": s.cohort_tau, "theta": s.cohort_theta}
    return {k: v for k, v in rule.items() if v is not None}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _scheduled_night(timezone: str) -> str:
    """The night a run is for: its scheduled start (a late or re-run flow keeps its night), else now, in `timezone`."""
    when = None
    try:
        when = flow_run.scheduled_start_time
    except Exception:  # noqa: BLE001 - no flow run context (called outside Prefect): fall back to now
        when = None
    if when is None:
        when = dt.datetime.now(dt.UTC)
    return dt.datetime.fromtimestamp(when.timestamp(), _zone(timezone)).date().isoformat()


def _latest_or_none(root: str) -> str | None:
    from storage.forms import latest_snapshot

    return latest_snapshot(root)


def _same_files(root: str, snapshot_id: str, sources: list[str]) -> bool:
    """Whether `sources` expand to exactly the files (path, size, sha256) the snapshot was made of."""
    from storage.forms import expand_sources, read_manifest

    try:
        recorded = {f["path"]: f for f in read_manifest(root, snapshot_id).get("files", [])}
        files = expand_sources(sources)
    except (OSError, KeyError, TypeError, ValueError):
        return False
    if {str(p) for p in files} != set(recorded):
        return False
    for p in files:
        rec = recorded[str(p)]
        if rec.get("bytes") != p.stat().st_size or rec.get("sha256") != _sha256(p):
            return False
    return True


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_facts(root: str, set_id: str) -> dict:
    """What the run records of its model set: the date it was trained until, and whether comparisons may be in sample."""
    from storage.registry import model_set_manifest

    m = model_set_manifest(root, set_id)
    until = m.get("trained_until", m.get("cutoff"))
    return {"model_trained_until": until, "comparisons_may_be_in_sample": until is None}


def _zone(name: str):
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)
