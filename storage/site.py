"""The reports directory: a night's page published atomically, the shared plotly.js once, the index of all nights.

Persistence only: the caller (flows.stages.report) passes the rendered page, the plotly.js file and the
index renderer from `reports`.

<reports_dir>/assets/plotly.min.js     copied once from the installed plotly package
<reports_dir>/<night>/index.html       the night's page (written atomically)
<reports_dir>/<night>/headline.json    its headline numbers (feeds the index and the trend)
<reports_dir>/index.html               every night, newest first, with the headline trend
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gruviz_core.errors import ConfigError
from storage.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["publish_report", "ensure_plotly_asset", "write_index", "list_nights", "night_facts", "prune_reports", "ASSET"]

IndexRenderer = Callable[[list[dict]], str]
"""Renders the index page from list_nights(...) (reports.render.render_index)."""

ASSET = "assets/plotly.min.js"
"""Where the shared plotly.js lives, relative to the reports directory."""
_NIGHT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,63}$")


def _check_night(night: str) -> str:
    if not _NIGHT.match(night) or ".." in night:
        raise ConfigError(
            f"report night {night!r} is not a safe directory name; expected e.g. 2026-11-25 "
            "(letters, digits, '-', '_', '.', at most 64 characters)"
        )
    return night


@contextmanager
def _lock(reports_dir: Path) -> Iterator[None]:
    """One publisher at a time per reports directory, so the index never misses a night."""
    with open(reports_dir / ".publish.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_plotly_asset(reports_dir: str | Path, src: Path) -> Path:
    """Copy plotly.min.js (`src`) into <reports_dir>/assets once (again only if the installed plotly changed)."""
    dst = Path(reports_dir) / ASSET
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
        write_bytes_atomic(dst, src.read_bytes())
    return dst


def list_nights(reports_dir: str | Path) -> list[dict]:
    """Published nights, newest first: night, href, headline (dict), delta (model log-loss vs the night before),
    model_set_id (from <night>/night.json; None for nights published without it) and model_changed (a set other
    than the previous night's ran)."""
    reports_dir = Path(reports_dir)
    nights = []
    for d in sorted(
        p for p in reports_dir.iterdir() if p.is_dir() and _NIGHT.match(p.name) and (p / "index.html").is_file()
    ):
        try:
            head = json.loads((d / "headline.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            head = {}
        facts = _night_facts(d)
        nights.append(
            {"night": d.name, "href": f"{d.name}/index.html", "headline": head if isinstance(head, dict) else {},
             "model_set_id": facts.get("model_set_id")}
        )
    prev_set = None
    for n in nights:  # oldest first here
        n["model_changed"] = bool(n["model_set_id"] and prev_set and n["model_set_id"] != prev_set)
        prev_set = n["model_set_id"] or prev_set
    prev = None
    for n in nights:  # oldest first here
        cur = n["headline"].get("model_log_loss")
        ok = isinstance(cur, (int, float)) and isinstance(prev, (int, float))
        n["delta"] = float(f"{cur - prev:+.4g}") if ok else None
        prev = cur if isinstance(cur, (int, float)) else prev
    return nights[::-1]


def night_facts(reports_dir: str | Path, night: str) -> dict:
    """What <reports_dir>/<night>/night.json says of the page ({} when absent): the model set and run it shows."""
    return _night_facts(Path(reports_dir) / _check_night(night))


def _night_facts(d: Path) -> dict:
    """<night>/night.json ({} when absent or unreadable): the model set that ran the night."""
    try:
        facts = json.loads((d / "night.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return facts if isinstance(facts, dict) else {}


def write_index(reports_dir: str | Path, render_index: IndexRenderer) -> Path:
    """Rewrite <reports_dir>/index.html from the nights on disk (atomic)."""
    path = Path(reports_dir) / "index.html"
    write_text_atomic(path, render_index(list_nights(reports_dir)))
    return path


def publish_report(
    html: str, reports_dir: str | Path, night: str, *, headline: dict, plotly_js: Path, render_index: IndexRenderer,
    facts: dict | None = None,
) -> Path:
    """Publish a rendered page as <reports_dir>/<night>/index.html; returns its path.

    The shared plotly.js is in place before the page, the page is renamed into place whole, and the
    index is rewritten last, so a reader never sees half a page or a link to a missing one.
    """
    _check_night(night)
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    with _lock(reports_dir):
        ensure_plotly_asset(reports_dir, plotly_js)
        write_json_atomic(reports_dir / night / "headline.json", headline)
        if facts is not None:  # the index's model-set timeline
            write_json_atomic(reports_dir / night / "night.json", facts)
        page = reports_dir / night / "index.html"
        write_text_atomic(page, html)
        write_index(reports_dir, render_index)
    return page


def prune_reports(reports_dir: str | Path, keep_nights: int, render_index: IndexRenderer) -> list[str]:
    """Delete the pages of all but the newest `keep_nights` nights (0 keeps all) and rewrite the index.

    Each night leaves by a rename to a dot-name first (never served, never listed), so no half page is seen."""
    reports_dir = Path(reports_dir)
    if keep_nights <= 0 or not reports_dir.is_dir():
        return []
    removed = []
    with _lock(reports_dir):
        for n in list_nights(reports_dir)[keep_nights:]:  # newest first
            doomed = reports_dir / f".deleted.{n['night']}.{uuid.uuid4().hex[:8]}"
            os.rename(reports_dir / n["night"], doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(n["night"])
        if removed:
            write_index(reports_dir, render_index)
    return removed
