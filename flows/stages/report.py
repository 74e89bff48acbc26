"""The report stage: a published run -> the night's HTML report in the reports directory."""

from __future__ import annotations

from pathlib import Path

from gruviz_core.errors import NotFoundError
from reports.build import build_report, heatmap_dog_ids
from reports.render import plotly_js_path, render, render_index
from storage import site
from storage.forms import read_manifest
from storage.results import read_dog_states, read_history, read_run_results
from storage.runs import latest_run, published_runs
from storage.store import location as store_path

__all__ = ["run", "publish", "catch_up"]


def run(run_dir: str, root: str, reports_dir: str, night: str, snapshot_id: str, watchlist: list[str]) -> str:
    """Build, render and publish the night's report; returns its path relative to the reports dir."""
    run = store_path(run_dir)
    results = read_run_results(run)
    history = read_history(d for d in published_runs(root) if d.resolve() != run.resolve())
    dogs = read_dog_states(run, heatmap_dog_ids(results, watchlist))
    model = build_report(
        results, history=history, dogs=dogs, watchlist=tuple(watchlist), data_quality=_data_quality(root, snapshot_id)
    )
    page = publish(render(model), reports_dir, night, headline=dict(results.headline),
                   facts={"model_set_id": results.meta.get("model_set_id"), "run_id": results.meta.get("run_id")})
    return str(Path(page).resolve().relative_to(Path(reports_dir).resolve()))


def catch_up(root: str, reports_dir: str, watchlist: list[str], *, tonight: str | None = None) -> str | None:
    """The report of the latest published run when it has none (its night was stopped after publishing the run:
    runs/LATEST would sit on a run with no page, and the index skip it); its path relative to the reports dir,
    or None when there was nothing to build (or the run is tonight's, which tonight rebuilds)."""
    run_dir = latest_run(root)
    if run_dir is None:
        return None
    meta = read_run_results(run_dir).meta
    night, run_id = str(meta.get("night") or ""), meta.get("run_id")
    if not night or night == tonight:
        return None
    page = Path(reports_dir) / night / "index.html"
    facts = site.night_facts(reports_dir, night)
    if page.is_file() and facts.get("run_id") in (None, run_id):
        return None
    return run(str(run_dir), root, reports_dir, night, str(meta.get("snapshot_id") or ""), watchlist)


def publish(html: str, reports_dir: str | Path, night: str, *, headline: dict, facts: dict | None = None) -> Path:
    """Publish a rendered page as <reports_dir>/<night>/index.html, with the shared plotly.js and the index; `facts`
    (the model set that ran it) go to <night>/night.json for the index's model-set timeline."""
    return site.publish_report(html, Path(reports_dir), night, headline=headline, plotly_js=plotly_js_path(),
                               render_index=render_index, facts=facts)


def _data_quality(root: str, snapshot_id: str) -> dict:
    try:
        return read_manifest(root, snapshot_id)
    except (FileNotFoundError, NotFoundError):
        return {}
