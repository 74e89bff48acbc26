"""The nightly flow: ingest -> features -> extract (one task per block) -> stats -> evaluate -> probe -> drift ->
model change -> determinism -> publish run -> report -> retention -> notify. Tasks pass store keys and paths,
never arrays. The block scheduler is flows.blocks, the task runners flows.runners, change detection
flows.changes, the UI's artifacts flows.artifacts."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from zoneinfo import ZoneInfo

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed, State
from prefect.utilities.timeout import timeout

from flows.artifacts import nightly_artifacts
from flows.blocks import BlockProgress, DeadlinePassed, run_blocks
from flows.changes import NO_NEW_DATA, check_sources
from flows.logs import route_library_logs
from flows.notify import notify_failure, send_report_email
from flows.preflight import Preflight, preflight_nightly
from flows.settings import Settings, load_settings
from flows.stages import determinism, drift, evaluate, extract, features, ingest, model_change, probe, report, stats
from flows.stages.extract import set_torch_threads
from flows.stages.notify import email_lines
from gruviz_core.errors import GruvizError
from gruviz_core.records import to_json
from reports.email import report_url
from storage.runs import hold_tmp_run, nightly_lock, remove_tmp_run, sweep_tmp_runs

__all__ = ["nightly", "NightlyTimeoutError"]


class NightlyTimeoutError(GruvizError, TimeoutError):
    """The night ran past GRUVIZ_NIGHTLY_TIMEOUT_S."""


# ---------------------------------------------------------------- tasks (thin calls)


@task(name="ingest", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ingest_task(root: str, sources: list[str], inflate: dict | None = None) -> str:
    """Ingest `sources` into a forms snapshot; returns its id."""
    summary = ingest.run(sources, root, inflate=inflate)
    get_run_logger().info(
        "ingested %s: rows_in=%d accepted=%d rejected=%d duplicates_merged=%d",
        summary.snapshot_id, summary.rows_in, summary.accepted, summary.rejected, summary.duplicates_merged,
    )
    return summary.snapshot_id


@task(name="ingest-sources", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ingest_sources_task(root: str, sources: list[str], inflate: dict | None = None) -> dict:
    """{"snapshot_id", "new_data"}: the latest snapshot reused when the source files are those it was made of."""
    seen = check_sources(root, sources)
    if not seen.changed:
        get_run_logger().info("sources unchanged since snapshot %s: no new form data", seen.latest)
        return {"snapshot_id": seen.latest, "new_data": False}
    snapshot_id = ingest_task.fn(root, sources, inflate)
    return {"snapshot_id": snapshot_id, "new_data": snapshot_id != seen.latest}


@task(name="features", retries=1, cache_policy=NO_CACHE)
def features_task(root: str, snapshot_id: str, set_id: str | None = None) -> str:
    """The snapshot's ragged sequences for the model set's feature spec; returns their path."""
    return str(features.run(root, snapshot_id, set_id))


@task(name="begin-run", cache_policy=NO_CACHE)
def begin_run_task(root: str, run_id: str, meta: dict, seq_path: str, set_id: str, block_dogs: int,
                   parallel: int = 1) -> dict:
    """The run's temporary directory and its plan of blocks."""
    return extract.begin(root, run_id, meta, seq_path, set_id, block_dogs, parallel)


@task(name="extract-block", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def extract_block_task(plan: dict, block: int, device: str, batch_size: int, torch_threads: int = 1) -> int:
    """One block's shards, set up for whichever process runs it (a thread, a pool process, a Dask worker)."""
    route_library_logs()
    set_torch_threads(torch_threads)
    return extract.block(plan, block, device=device, batch_size=batch_size, progress=BlockProgress(block))


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(plan: dict) -> str:
    """The states store made whole from its blocks; returns the temporary run directory."""
    return extract.finish(plan)


@task(name="stats", cache_policy=NO_CACHE)
def stats_task(tmp_dir: str, rule: dict) -> dict:
    """Saturation statistics and cohorts under `rule`; returns the stats summary."""
    return json.loads(json.dumps(to_json(stats.compute_stats(tmp_dir, rule=rule)), default=str))


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(tmp_dir: str, root: str, set_id: str, seq_path: str, n_boot: int, min_races: int) -> dict:
    """The cohort comparisons on the held-out races; returns the headline."""
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
    """A new model set against the previous one on tonight's races (eval/model_change.json); never fails the night."""
    return model_change.run(tmp_dir, root, set_id, seq_path, dogs=dogs, n_boot=n_boot, device=device)


@task(name="determinism", cache_policy=NO_CACHE)
def determinism_task(tmp_dir: str, root: str, set_id: str, watchlist: list[str], dogs: int) -> dict:
    """The watched dogs' states against last night's (eval/determinism.json); a failure is recorded, never fails the night."""
    return determinism.run(tmp_dir, root, set_id, watchlist, dogs=dogs)


@task(name="publish-run", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_run_task(root: str, tmp_dir: str) -> str:
    """Publish the temporary run atomically; returns the published run directory."""
    from storage.runs import publish_run

    return str(publish_run(root, tmp_dir))


@task(name="report", retries=1, cache_policy=NO_CACHE)
def report_task(run_dir: str, root: str, reports_dir: str, night: str, snapshot_id: str, watchlist: list[str]) -> str:
    """Build and publish the night's report; returns its path under the reports directory."""
    return report.run(run_dir, root, reports_dir, night, snapshot_id, watchlist)


@task(name="catch-up-report", retries=1, cache_policy=NO_CACHE)
def catch_up_report_task(root: str, reports_dir: str, watchlist: list[str], tonight: str) -> str | None:
    """The report page of the latest published run when its night stopped before building it."""
    built = report.catch_up(root, reports_dir, watchlist, tonight=tonight)
    if built:
        get_run_logger().warning("the latest published run had no report page (its night stopped after publishing "
                                 "it); built it now: %s", built)
    return built


@task(name="retention", cache_policy=NO_CACHE)
def retention_task(root: str, reports_dir: str, keep_nights: int) -> dict:
    """Remove the runs and report pages older than the last `keep_nights` nights."""
    from reports.render import render_index
    from storage.runs import prune_runs
    from storage.site import prune_reports

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
    checked = preflight_nightly(s, night=night or _scheduled_night(s.timezone), model_set=model_set,
                                sources=sources)  # before any work
    with _night_guard(s, checked) as (held, deadline):
        return _night(s, checked, sources, held, deadline)


def _night(s: Settings, checked: Preflight, sources: list[str], held: ExitStack, deadline: float) -> dict | State:
    """The night's tasks in order; `held` takes the temporary run, `deadline` (time.monotonic()) bounds the blocks."""
    set_torch_threads(s.torch_threads)
    root, night, set_id, reports_dir = str(checked.root), checked.night, checked.model_set, str(checked.reports_dir)
    catch_up_report_task(root, reports_dir, list(s.watchlist), night)
    ingested = (ingest_sources_task(root, sources, s.inflate_limit) if sources
                else {"snapshot_id": checked.snapshot_id, "new_data": None})  # None: nothing to ingest configured
    snapshot_id = ingested["snapshot_id"]
    seq_path = features_task(root, snapshot_id, set_id)
    meta = _run_meta(s, checked, snapshot_id, ingested["new_data"])
    plan = begin_run_task(root, meta["run_id"], meta, seq_path, set_id, s.block_dogs, s.blocks_in_flight)
    held.enter_context(hold_tmp_run(plan["tmp_dir"]))  # no sweep takes it while this night runs
    held.callback(remove_tmp_run, root, plan["tmp_dir"])  # a failed night leaves nothing; after publish, a no-op
    run_blocks(extract_block_task, plan, s, deadline)
    tmp_dir = finish_run_task(plan)
    stats_task(tmp_dir, _rule(s))
    # the watches read the run and write records of their own: one after another on a second thread (the
    # machine's other core) while evaluate runs here; model change reads evaluate's headline, so it follows it
    probed = probe_task.submit(tmp_dir, root, snapshot_id, s.probe_dogs)
    drifted = drift_task.submit(tmp_dir, root, set_id, seq_path, snapshot_id, s.drift_psi, s.drift_share,
                                wait_for=[probed])
    watched = determinism_task.submit(tmp_dir, root, set_id, list(s.watchlist), s.determinism_dogs,
                                      wait_for=[drifted])
    evaluate_timed = evaluate_task.with_options(timeout_seconds=s.evaluate_timeout_s)
    try:
        headline = evaluate_timed(tmp_dir, root, set_id, seq_path, s.bootstrap, s.min_eval_races)
        model_change_task(tmp_dir, root, set_id, seq_path, s.model_change_dogs, s.bootstrap, s.device)
    finally:
        for watch in (probed, drifted, watched):
            watch.wait()  # nothing writes into the run after the night has left it (a failed night removes it)
    for watch in (probed, drifted, watched):
        watch.result()  # each records its own failure: an error here is a bug, and fails the night
    run_dir = publish_run_task(root, tmp_dir)
    rel = report_task(run_dir, root, reports_dir, night, snapshot_id, list(s.watchlist))
    retention_task(root, reports_dir, s.keep_nights)
    return _deliver(s, meta, run_dir, rel, headline, new_data=ingested["new_data"])


@contextmanager
def _night_guard(s: Settings, checked: Preflight) -> Iterator[tuple[ExitStack, float]]:
    """The night's store lock, stale temporary runs swept, and its timeout; yields (held, deadline)."""
    deadline = time.monotonic() + s.nightly_timeout_s
    try:
        # the flow's own timeout, from settings (a decorator's timeout_seconds is fixed at import): an
        # alarm in the main thread, and the deadline checked while waiting on blocks (where nights hang)
        with timeout(s.nightly_timeout_s, timeout_exc_type=DeadlinePassed), ExitStack() as held:
            held.enter_context(nightly_lock(checked.root))  # one night per store at a time; released on timeout
            swept = sweep_tmp_runs(checked.root)
            if swept:
                get_run_logger().warning("removed %d stale temporary run(s): %s", len(swept), ", ".join(swept))
            yield held, deadline
    except DeadlinePassed:
        raise NightlyTimeoutError(
            f"nightly {checked.night} on {checked.root} ran past GRUVIZ_NIGHTLY_TIMEOUT_S={s.nightly_timeout_s:g} s "
            "and was stopped: nothing was published and the lock is released; look for a hung block in the task "
            "runs, or raise the timeout") from None


def _run_meta(s: Settings, checked: Preflight, snapshot_id: str, new_data: bool | None) -> dict:
    """What the run records of itself: ids, settings, its model set's facts, library versions, the form data's state."""
    set_id = checked.model_set
    meta = {
        "run_id": f"{checked.night}-{set_id.rsplit('-', 1)[-1][:8]}-{uuid.uuid4().hex[:6]}", "night": checked.night,
        "snapshot_id": snapshot_id, "model_set_id": set_id, "device": s.device, "flow_run_id": str(flow_run.id or ""),
        "settings": s.model_dump(mode="json", exclude={"smtp_password"}),
        **_model_facts(str(checked.root), set_id), "libraries": determinism.library_versions(),
    }
    if new_data is False:
        meta["form_data"] = NO_NEW_DATA
    if checked.sources_gone:
        for line in checked.sources_gone:
            get_run_logger().warning("sources: %s (acknowledged by GRUVIZ_SOURCES_GONE_OK)", line)
        meta["form_data"] = "; ".join(checked.sources_gone)
    return meta


def _deliver(s: Settings, meta: dict, run_dir: str, rel: str, headline: dict, new_data: bool | None) -> dict | State:
    """The run's artifacts and email; Failed (the report stays published) when the email fails."""
    url = report_url(s.reports_base_url, rel)
    lines = _headline_lines(run_dir, meta, list(s.watchlist))
    nightly_artifacts(url, meta["night"], lines, run_dir)
    result = {"run_id": meta["run_id"], "run_dir": run_dir, "report": str(s.reports_path.resolve() / rel),
              "url": url, "night": meta["night"], "snapshot_id": meta["snapshot_id"],
              "model_set_id": meta["model_set_id"], "headline": headline, "new_data": new_data}
    if s.recipients:
        sent = send_report_email.with_options(timeout_seconds=s.email_timeout_s)(meta["night"], url, lines,
                                                                                 return_state=True)
        if sent.is_failed():
            get_run_logger().error("report published at %s but the email failed: %s", result["report"], sent.message)
            return Failed(message=f"report published at {result['report']}, but the email failed: {sent.message}",
                          data=result)
    get_run_logger().info("report published at %s", result["report"])
    return result


def _headline_lines(run_dir: str, meta: dict, watchlist: list[str]) -> dict[str, str]:
    """The labelled lines of the summary artifact and the email: a model change first, then the form data's
    state, drift and determinism, then the headline (stages.notify)."""
    lines = {**drift.email_lines(run_dir), **determinism.email_lines(run_dir), **email_lines(run_dir, watchlist)}
    if meta.get("form_data"):
        lines = {"form data": meta["form_data"], **lines}
    return {**model_change.email_lines(run_dir), **lines}


def _rule(s: Settings) -> dict:
    rule = {"name": s.cohort_rule, "tau": s.cohort_tau, "theta": s.cohort_theta}
    return {k: v for k, v in rule.items() if v is not None}


def _scheduled_night(timezone: str) -> str:
    """The night a run is for: its scheduled start (a late or re-run flow keeps its night), else now, in `timezone`."""
    try:
        when = flow_run.scheduled_start_time
    except Exception:  # noqa: BLE001 - no flow run context (called outside Prefect): fall back to now
        when = None
    if when is None:
        when = dt.datetime.now(dt.UTC)
    return dt.datetime.fromtimestamp(when.timestamp(), ZoneInfo(timezone)).date().isoformat()


def _model_facts(root: str, set_id: str) -> dict:
    """What the run records of its model set: the date it was trained until, and whether comparisons may be in sample."""
    from storage.registry import model_set_manifest

    m = model_set_manifest(root, set_id)
    until = m.get("trained_until", m.get("cutoff"))
    return {"model_trained_until": until, "comparisons_may_be_in_sample": until is None}
