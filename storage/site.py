"""The reports directory: a night's page published atomically, the shared plotly.js once, the index of all nights.

Persistence only: the caller (flows.stages.report) passes the rendered page, the plotly.js file and the
index renderer from `reports`.

<reports_dir>/assets/plotly.min.js     copied once from the installed plotly package
<reports_dir>/<night>/index.html       the night's page (written atomically)
<reports_dir>/<night>/headline.json    its headline numbers (feeds the index and the trend)
<reports_dir>/index.html               every night, newest first, with the headline trend
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from gruviz_core.errors import ConfigError
from storage.store import Store, StorePath, open_store

__all__ = ["publish_report", "ensure_plotly_asset", "write_index", "list_nights", "night_facts", "prune_reports", "ASSET"]

IndexRenderer = Callable[[list[dict]], str]
"""Renders the index page from list_nights(...) (reports.render.render_index)."""

ASSET = "assets/plotly.min.js"
"""Where the shared plotly.js lives, relative to the reports directory."""
_NIGHT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,63}$")
_LOCK = ".publish.lock"
"""One publisher at a time per reports directory, so the index never misses a night."""


def _check_night(night: str) -> str:
    if not _NIGHT.match(night) or ".." in night:
        raise ConfigError(
            f"report night {night!r} is not a safe directory name; expected e.g. 2026-11-25 "
            "(letters, digits, '-', '_', '.', at most 64 characters)"
        )
    return night


def ensure_plotly_asset(reports_dir: str | Path, src: Path) -> StorePath:
    """Copy plotly.min.js (`src`) into <reports_dir>/assets once (again only if the installed plotly changed)."""
    store = open_store(reports_dir)
    data = src.read_bytes()
    try:
        same = len(store.read_bytes(ASSET)) == len(data)
    except FileNotFoundError:
        same = False
    if not same:
        store.write_bytes(ASSET, data)
    return store.location(ASSET)


def list_nights(reports_dir: str | Path) -> list[dict]:
    """Published nights, newest first: night, href, headline (dict), delta (model log-loss vs the night before),
    model_set_id (from <night>/night.json; None for nights published without it) and model_changed (a set other
    than the previous night's ran)."""
    store = open_store(reports_dir)
    nights = []
    for name in store.list():
        if not _NIGHT.match(name) or not store.exists(f"{name}/index.html"):
            continue
        facts = _json_object(store, f"{name}/night.json")
        nights.append(
            {"night": name, "href": f"{name}/index.html", "headline": _json_object(store, f"{name}/headline.json"),
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
    return _json_object(open_store(reports_dir), f"{_check_night(night)}/night.json")


def _json_object(store: Store, key: str) -> dict:
    """A JSON object ({} when absent, unreadable or not an object)."""
    try:
        obj = store.read_json(key)
    except Exception:  # noqa: BLE001 - a damaged night file must not hide the other nights
        return {}
    return obj if isinstance(obj, dict) else {}


def write_index(reports_dir: str | Path, render_index: IndexRenderer) -> StorePath:
    """Rewrite <reports_dir>/index.html from the nights in the directory (atomic)."""
    store = open_store(reports_dir)
    store.write_text("index.html", render_index(list_nights(reports_dir)))
    return store.location("index.html")


def publish_report(
    html: str, reports_dir: str | Path, night: str, *, headline: dict, plotly_js: Path, render_index: IndexRenderer,
    facts: dict | None = None,
) -> StorePath:
    """Publish a rendered page as <reports_dir>/<night>/index.html; returns its location.

    The shared plotly.js is in place before the page, the page is written whole, and the index is
    rewritten last, so a reader never sees half a page or a link to a missing one.
    """
    _check_night(night)
    store = open_store(reports_dir)
    with store.lock(_LOCK, wait_s=600.0, what="another report publisher"):
        ensure_plotly_asset(reports_dir, plotly_js)
        store.write_json(f"{night}/headline.json", headline)
        if facts is not None:  # the index's model-set timeline
            store.write_json(f"{night}/night.json", facts)
        store.write_text(f"{night}/index.html", html)
        write_index(reports_dir, render_index)
    return store.location(f"{night}/index.html")


def prune_reports(reports_dir: str | Path, keep_nights: int, render_index: IndexRenderer) -> list[str]:
    """Delete the pages of all but the newest `keep_nights` nights (0 keeps all) and rewrite the index.

    Each night leaves whole (a rename away first where the store has renames), so no half page is seen."""
    store = open_store(reports_dir)
    if keep_nights <= 0 or not store.is_dir():
        return []
    removed = []
    with store.lock(_LOCK, wait_s=600.0, what="another report publisher"):
        for n in list_nights(reports_dir)[keep_nights:]:  # newest first
            store.retract(n["night"], marker="index.html")
            removed.append(n["night"])
        if removed:
            write_index(reports_dir, render_index)
    return removed
