"""The report stage: a published run -> the night's HTML report in the reports directory."""

from __future__ import annotations

from pathlib import Path

from gruviz_core.errors import NotFoundError
from reports.model import build_report
from reports.publish import publish_report
from reports.render import render
from storage.forms import read_manifest
from storage.layout import RunLayout
from storage.states import published_runs
from storage.tables import read_json

__all__ = ["run", "headline_of"]


def run(run_dir: str, root: str, reports_dir: str, night: str, snapshot_id: str, watchlist: list[str]) -> str:
    """Build, render and publish the night's report; returns its path relative to the reports dir."""
    run = Path(run_dir)
    history = [d for d in published_runs(root) if d.resolve() != run.resolve()]
    model = build_report(run, history=history, watchlist=tuple(watchlist), data_quality=_data_quality(root, snapshot_id))
    page = publish_report(render(model), Path(reports_dir), night, headline=headline_of(run))
    return str(Path(page).resolve().relative_to(Path(reports_dir).resolve()))


def headline_of(run_dir: str | Path) -> dict:
    """The run's headline record ({} before the evaluate stage has run)."""
    path = RunLayout.at(run_dir).headline
    return read_json(path) if path.exists() else {}


def _data_quality(root: str, snapshot_id: str) -> dict:
    try:
        return read_manifest(root, snapshot_id)
    except (FileNotFoundError, NotFoundError):
        return {}
