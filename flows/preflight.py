"""The preflight: every check that can fail a night or a training run, made before any work.

Run at the start of every flow (so a deployment's parameters from the Prefect UI are checked too)
and of every CLI command (so a bad setting is a one-line error before a server starts). Settings
types and ranges are checked when they load (flows.settings); this module checks what needs the
store, the machine or several settings at once:

    night      a real date, YYYY-MM-DD (it names directories), from 2000 to two days after today
    ids        --model-set, models/CURRENT, --snapshot, forms/LATEST: plain names, resolved under the store
    writable   the store root (a directory, or an fsspec URL: reachable and writable) and the reports directory
    device     the torch device exists on this machine
    smtp       host, port, TLS mode, sender and recipients agree
    sources    exist and hold form files; none left since the last snapshot unless GRUVIZ_SOURCES_GONE_OK names it
    runner     GRUVIZ_DASK_ADDRESS is a scheduler's address and answers
    model code a registered set's factory and feature callable import here
    cohort     the cohort rule is known and its parameters valid (check_cohort_rule)

Each failure raises ConfigError (or NotFoundError for a missing snapshot or model set) naming the
setting, the value and the fix.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flows.settings import Settings
from gruviz_core.errors import ConfigError, InputError, NotFoundError, StoreError
from storage.store import StorePath, location, open_store

__all__ = [
    "Preflight",
    "preflight_nightly",
    "preflight_train",
    "check_night",
    "check_task_runner",
    "check_model_code",
    "check_sources_gone",
    "check_id",
    "check_writable",
    "check_store",
    "check_device",
    "check_smtp",
    "check_cohort_rule",
]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NIGHT = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
FIRST_NIGHT = dt.date(2000, 1, 1)
"""The earliest night accepted (form data before it is not what gruviz runs on)."""
NIGHT_AHEAD_DAYS = 2
"""Days after today (in GRUVIZ_TIMEZONE) a night may be: a schedule in another zone, never a mistyped year."""


@dataclass(frozen=True)
class Preflight:
    """What the preflight resolved; the flow uses these values, never the raw inputs."""

    root: StorePath
    """Store root, absolute and writable: a local Path, or a UPath for an fsspec URL (s3://bucket/prefix)."""
    reports_dir: Path | None
    """Reports directory, absolute and writable (None for commands that publish no report)."""
    night: str | None
    """The night, YYYY-MM-DD (None for commands without one)."""
    snapshot_id: str | None
    """Forms snapshot to use (None when sources are ingested first)."""
    model_set: str | None
    """Model set id to use, present in the registry (None for commands without one)."""
    sources_gone: tuple[str, ...] = ()
    """One line per file that left the sources since the last snapshot, acknowledged by GRUVIZ_SOURCES_GONE_OK."""


def preflight_nightly(
    s: Settings, *, night: str | None = None, model_set: str | None = None, sources: list[str] | None = None
) -> Preflight:
    """Every check of a night, in the order a reader would fix them."""
    root = check_store(s.home)
    reports = check_writable(s.reports_path, "reports directory (GRUVIZ_REPORTS_DIR)")
    night = check_night(night, timezone=s.timezone)
    check_device(s.device)
    check_smtp(s)
    check_cohort_rule(s)
    check_task_runner(s)
    snapshot = None if sources else _latest_snapshot(root)
    set_id = _model_set(root, model_set)
    check_model_code(root, set_id)
    if sources:
        from flows.sources import expand_sources

        expand_sources(sources)  # a source that does not exist, or holds no form file, is refused now
    gone = check_sources_gone(root, sources, s.sources_gone_ok) if sources else ()
    return Preflight(root=root, reports_dir=reports, night=night, snapshot_id=snapshot, model_set=set_id,
                     sources_gone=gone)


def preflight_train(s: Settings, *, snapshot: str | None = None, sources: list[str] | None = None) -> Preflight:
    """Every check of a training run: the store, the snapshot id, the failure notice's SMTP settings."""
    root = check_store(s.home)
    check_smtp(s)
    if sources:
        snap = None
    elif snapshot:
        snap = check_id(root / "forms", snapshot, "snapshot id (--snapshot)")
        if not (root / "forms" / snap).is_dir():
            raise NotFoundError(f"store {root}: no forms snapshot {snap!r}; pass an id from {root / 'forms'} "
                                "or run `gruviz ingest` first")
    else:
        snap = _latest_snapshot(root)
    return Preflight(root=root, reports_dir=None, night=None, snapshot_id=snap, model_set=None)


def check_sources_gone(root: StorePath, sources: list[str], acknowledged: list[str]) -> tuple[str, ...]:
    """Files the sources held at the last snapshot and hold no more: refused (InputError naming them and the
    runs they gave) unless each matches a name or glob of `acknowledged` (GRUVIZ_SOURCES_GONE_OK); returns one
    line per acknowledged file, for the log, the report and the email."""
    from flows.sources import gone_files
    from storage.forms import latest_snapshot

    gone = gone_files(root, sources)
    if not gone:
        return ()
    lines = {f["path"]: f"{Path(f['path']).name} is gone: {int(f.get('accepted', 0)):,} runs fewer than last night"
             for f in gone}
    refused = [f["path"] for f in gone if not _acknowledged(f["path"], acknowledged)]
    if refused:
        runs = sum(int(f.get("accepted", 0)) for f in gone if f["path"] in refused)
        raise InputError(
            f"{', '.join(refused)}: left the sources since snapshot {latest_snapshot(root)} ({runs:,} runs fewer than "
            "last night); the night's data would silently shrink. Put the file(s) back, or acknowledge them in "
            'GRUVIZ_SOURCES_GONE_OK (a JSON list of names or globs, e.g. ["' + Path(refused[0]).name + '"])')
    return tuple(lines.values())


def _acknowledged(path: str, patterns: list[str]) -> bool:
    name = Path(path).name
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)


def check_task_runner(s: Settings) -> None:
    """With GRUVIZ_TASK_RUNNER=dask and an address, the address is a scheduler's (scheme://host:port) and it
    accepts a connection (else the night would fail at extraction, after ingest and features)."""
    if s.task_runner != "dask" or not s.dask_address:
        return
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(s.dask_address if "://" in s.dask_address else "tcp://" + s.dask_address)
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port or parts.scheme not in ("tcp", "tls"):
        raise ConfigError(f"GRUVIZ_DASK_ADDRESS={s.dask_address!r} is not a scheduler address; expected "
                          "tcp://host:port (or tls://host:port), e.g. tcp://scheduler:8786")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"GRUVIZ_DASK_ADDRESS={s.dask_address}: the scheduler cannot be reached "
                          f"({exc.strerror or exc}); start it, fix the address, or unset it for a local cluster") from None


def check_model_code(root: StorePath, set_id: str) -> None:
    """A registered model set's own code (its factory, its feature callable) imports here, where the night runs."""
    from storage.registry import model_set_manifest

    try:
        m = model_set_manifest(root, set_id)
    except (OSError, ValueError):
        return  # the load names a damaged manifest
    spec = m.get("feature_spec") or {}
    wanted = [("model factory", m.get("factory")), ("feature callable", spec.get("callable"))]
    for what, name in wanted:
        if not name:
            continue
        from gruviz_core.byo import resolve_callable

        try:
            resolve_callable(name, what=what)
        except ConfigError as exc:
            raise ConfigError(f"model set {set_id}: its {what} cannot be used where this night runs: {exc}; install "
                              "the team's package here (or on PYTHONPATH), or pass another --model-set") from None


def check_night(night: str | None, *, timezone: str = "UTC") -> str:
    """The night as YYYY-MM-DD (default: today in `timezone`); anything else is refused (it names directories),
    and so is a night before FIRST_NIGHT or more than NIGHT_AHEAD_DAYS after today in `timezone`: runs/LATEST
    only moves forward, so a mistyped year would stay the latest night and retention would prune real ones."""
    today = dt.datetime.now(_zone(timezone)).date()
    if night is None:
        return today.isoformat()
    text = str(night)
    try:
        if not _NIGHT.match(text):
            raise ValueError("not YYYY-MM-DD")
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"night {text!r} is not a date; expected YYYY-MM-DD, e.g. 2026-11-25 "
                          "(--date, or the deployment's `night` parameter)") from None
    last = today + dt.timedelta(days=NIGHT_AHEAD_DAYS)
    if not FIRST_NIGHT <= day <= last:
        raise ConfigError(f"night {day.isoformat()} is out of range: today is {today.isoformat()} in "
                          f"GRUVIZ_TIMEZONE={timezone}, and a night must lie between {FIRST_NIGHT.isoformat()} and "
                          f"{last.isoformat()}; check the year (--date, or the deployment's `night` parameter)")
    return day.isoformat()


def check_id(parent: StorePath, value: str, what: str) -> str:
    """A plain id that names an entry directly under `parent` (no '/', no '..', nothing outside the store)."""
    text = str(value).strip()
    if not _ID.match(text) or ".." in text or "/" in text or not _entry_of(parent, text):
        raise ConfigError(f"{what} {value!r} is not a plain id under {parent}; expected letters, digits, "
                          "'-', '_', '.' (no '/' or '..'); fix the value (or the pointer file that holds it)")
    return text


def _entry_of(parent: StorePath, name: str) -> bool:
    """Whether parent/name, links followed, is still an entry of `parent`."""
    return str(location(parent / name).parent).rstrip("/") == str(location(parent)).rstrip("/")


def check_writable(path: Path, what: str) -> Path:
    """`path` made absolute, created if missing, and proven writable by creating a file in it."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gruviz-preflight-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{what} {path} is not writable ({exc.strerror or exc}); "
                          "create it with write permission or point the setting elsewhere") from None
    return path.resolve()


def check_store(home: str) -> StorePath:
    """The store root made absolute, proven reachable and writable by writing and removing a probe in it."""
    what = "store root (GRUVIZ_HOME / --home)"
    try:
        store = open_store(home)
        store.probe(what)
    except ImportError as exc:
        raise ConfigError(f"{what} {home}: no filesystem for this URL is installed ({exc}); install gruviz[dask] "
                          "(s3fs) or point GRUVIZ_HOME at a directory") from None
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    return store.location()


def check_device(device: str) -> str:
    """The torch device named exists here ('auto' always does: cuda, else mps, else cpu)."""
    if device in ("auto", "cpu"):
        return device
    import torch

    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ConfigError(f"GRUVIZ_DEVICE={device!r}: this machine has {count} CUDA device(s); "
                              "use --device cpu or auto")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"GRUVIZ_DEVICE={device!r}: MPS is not available here; use --device cpu or auto")
    return device


def check_smtp(s: Settings) -> None:
    """The email settings agree, so the report email and the failure notice can both be sent."""
    if s.recipients and not s.smtp_host:
        raise ConfigError(f"GRUVIZ_RECIPIENTS is set ({len(s.recipients)} address(es)) but GRUVIZ_SMTP_HOST is "
                          "not: nobody would be told; set GRUVIZ_SMTP_HOST or unset GRUVIZ_RECIPIENTS")
    if not s.smtp_host:
        return
    bad = [a for a in [s.email_from, *s.recipients] if "@" not in a or a.strip() != a]
    if bad:
        raise ConfigError(f"email addresses {bad} (GRUVIZ_EMAIL_FROM / GRUVIZ_RECIPIENTS) are not addresses; "
                          "expected name@host")
    mismatch = {("ssl", 587): "starttls", ("starttls", 465): "ssl"}.get((s.smtp_tls, s.smtp_port))
    if mismatch:
        raise ConfigError(f"GRUVIZ_SMTP_TLS={s.smtp_tls} with GRUVIZ_SMTP_PORT={s.smtp_port}: port {s.smtp_port} "
                          f"speaks {mismatch}; set GRUVIZ_SMTP_TLS={mismatch} or the port that matches")
    if s.smtp_user and s.smtp_password is None and not s.smtp_password_secret:
        raise ConfigError("GRUVIZ_SMTP_USER is set without GRUVIZ_SMTP_PASSWORD or GRUVIZ_SMTP_PASSWORD_SECRET; "
                          "set one of them or unset the user")


def check_cohort_rule(s: Settings):
    """The cohort rule the settings name, built and validated (the one place that knows how)."""
    from gruviz_core import cohorts

    known = tuple(getattr(cohorts, "RULES", None) or (cohorts.CohortRule().name,))
    if s.cohort_rule not in known:
        raise ConfigError(f"GRUVIZ_COHORT_RULE={s.cohort_rule!r} is not a known cohort rule; known: "
                          f"{', '.join(known)}")
    rule = {"name": s.cohort_rule, "tau": s.cohort_tau, "theta": s.cohort_theta}
    return cohorts.CohortRule.coerce({k: v for k, v in rule.items() if v is not None})


def _latest_snapshot(root: StorePath) -> str:
    from storage.forms import latest_snapshot

    snap = latest_snapshot(root)
    if snap is None:
        raise NotFoundError(f"store {root}: no forms snapshot yet; pass --source PATH or run `gruviz ingest` first")
    return check_id(root / "forms", snap, f"forms/LATEST ({root / 'forms' / 'LATEST'}) names snapshot")


def _model_set(root: StorePath, model_set: str | None) -> str:
    from storage.registry import current_model_set

    models = root / "models"
    if model_set:
        set_id = check_id(models, model_set, "model set id (--model-set)")
    else:
        current = current_model_set(root)
        if current is None:
            raise NotFoundError(f"store {root}: no current model set; run `gruviz train` first")
        set_id = check_id(models, current, f"models/CURRENT ({models / 'CURRENT'}) names model set")
    if not (models / set_id / "manifest.json").is_file():
        raise NotFoundError(f"store {root}: no model set {set_id!r} in {models}; run `gruviz train` or pass "
                            "--model-set with an id listed there")
    return set_id


def _zone(name: str):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"GRUVIZ_TIMEZONE={name!r} is not a known timezone; expected e.g. Australia/Sydney") from None
