"""About the run itself: the trend across nights, data quality of tonight's ingest, provenance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from reports.headline import rule_text
from reports.model import SOURCE_COLOURS, Line, Lines2Spec, LinesPanel, Panel, Section, Table, sig
from reports.prose import EXPLAIN, INTRO
from reports.sections.common import colour

__all__ = ["trend_section", "quality_section", "provenance", "race_nll"]


def trend_section(night: str, head: Mapping[str, Any], history: Sequence[tuple[str, Mapping[str, Any]]]) -> Section:
    """Tonight's headline numbers against earlier nights (oldest first in `history`)."""
    intro = INTRO["trend"]
    if not history:
        note = "No previous nights were given: the trend starts tomorrow."
        return Section("trend", "Trend across nights", intro, (Panel("Trend", "", note=note),))
    nights = [*history, (night, head)]
    xs = [n for n, _ in nights]
    series = []
    for key, name, colour_ in (
        ("model", "model, seed 0", SOURCE_COLOURS["model"]),
        ("model_mean", "model, seed ensemble", SOURCE_COLOURS["model_mean"]),
        ("market", "market", SOURCE_COLOURS["market"]),
    ):
        ys = [race_nll(h, key) for _, h in nights]
        if any(y is not None for y in ys):
            series.append(Line(name, xs, ys, colour_, mode="lines+markers"))
    main = [_main_diff(h) for _, h in nights]
    panels = [LinesPanel("race NLL", series, "race NLL")]
    if any(v is not None for v in main):
        panels.append(LinesPanel("settled - settling, same step",
                                 [Line("main comparison", xs, main, colour("settled"), mode="lines+markers")],
                                 "nats per runner"))
    spec = Lines2Spec("fig-trend", panels, xlabel="night", category_x=True, height=320)
    cols = ("night", "dogs", "race NLL, model", "race NLL, market", "settled - settling")
    rows = tuple(
        (n, _dogs(h), race_nll(h, "model"), race_nll(h, "market"), _main_diff(h)) for n, h in reversed(nights)
    )
    return Section(
        "trend",
        "Trend across nights",
        intro,
        (
            Panel("Headline numbers by night", EXPLAIN["trend"], spec),
            Panel("Nights", EXPLAIN["nights"], table=Table(cols, rows), collapsed=len(rows) > 10),
        ),
    )


def _dogs(head: Mapping[str, Any]) -> int | None:
    p = head.get("period")
    v = p.get("dogs") if isinstance(p, Mapping) else head.get("dogs")
    return int(v) if isinstance(v, (int, float)) else None


def _main_diff(head: Mapping[str, Any]) -> float | None:
    """A night's main comparison when it produced an interval; None otherwise (a night without one is a gap)."""
    e = head.get("main_effect")
    if not isinstance(e, Mapping) or not e.get("comparable"):
        return None
    return sig(e.get("diff"))


def race_nll(head: Mapping[str, Any], source: str) -> float | None:
    """A night's race NLL of `source` (model, market, uniform); None where that night did not record it."""
    r = head.get("race_nll")
    return sig(r.get(source)) if isinstance(r, Mapping) else None


def quality_section(dq: Mapping[str, Any] | None) -> Section:
    """Rows in and out of tonight's ingest, rejects by reason and the source files (the snapshot manifest)."""
    intro = INTRO["data-quality"]
    if not dq:
        note = "Not provided for this run: no ingest summary was passed to the report."
        return Section("data-quality", "Data quality", intro, (Panel("Rows in and out", "", note=note),))
    rows_in, acc, rej, dup = (dq.get(k) for k in ("rows_in", "accepted", "rejected", "duplicates_merged"))
    rows = [("rows in", rows_in), ("accepted", acc), ("rejected", rej), ("duplicates merged", dup)]
    for k in ("dogs", "races"):
        if k in dq:
            rows.append((k, dq[k]))
    explain = EXPLAIN["rows"]
    if all(isinstance(v, (int, float)) for v in (rows_in, acc, rej, dup)):
        ok = int(rows_in) == int(acc) + int(rej) + int(dup)
        explain += EXPLAIN["rows-check"] + (
            "holds." if ok else "DOES NOT HOLD - rows were lost; investigate the ingest."
        )
    table = Table(("", "rows"), tuple((k, None if v is None else int(v)) for k, v in rows))
    panels = [Panel("Rows in and out", explain, table=table)]
    reasons = dq.get("rejects_by_reason") or {}
    if reasons:
        r = tuple(sorted(((str(k), int(v)) for k, v in reasons.items()), key=lambda kv: (-kv[1], kv[0])))
        panels.append(Panel("Rejected rows by reason", EXPLAIN["rejects"], table=Table(("reason", "rows"), r)))
    files = dq.get("files") or []
    if files:
        panels.append(_files_panel(files, dq))
    return Section("data-quality", "Data quality", intro, tuple(panels))


def _files_panel(files: Sequence[Any], dq: Mapping[str, Any]) -> Panel:
    rows_f = []
    for f in files:
        if isinstance(f, dict):  # the snapshot manifest: path, format, rows, sha256, bytes
            name = PurePath(str(f.get("path", "?"))).name
            rows_f.append((name, str(f.get("format", "")), f.get("rows"), str(f.get("sha256", ""))[:12]))
        else:
            rows_f.append((PurePath(str(f)).name, "", None, ""))
    rows_f.sort(key=lambda r: r[0])
    span = (
        f" Races from {dq['first_date']} to {dq['last_date']}." if dq.get("first_date") and dq.get("last_date") else ""
    )
    return Panel(
        "Source files",
        f"{len(files)} file(s) read.{span}",
        table=Table(("file", "format", "rows", "sha256"), tuple(rows_f)),
        collapsed=len(files) > 5,
    )


def _text(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)


def _period(head: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    p = head.get("period")
    if not isinstance(p, Mapping):
        return ()
    sample = {False: "out of sample", None: "may be in sample (no training date)"}.get(p.get("in_sample"), "in sample")
    return (
        ("evaluation period", f"{p.get('start') or '?'} to {p.get('end') or '?'}, {sample}"),
        ("evaluated", f"{int(p.get('races') or 0):,} races, {int(p.get('dogs') or 0):,} dogs"),
        ("model set cutoff", _text(p.get("model_cutoff"))),
        ("early stopping to", _text(p.get("early_stop_end"))),
        ("evaluation basis", _text(p.get("basis"))),
    )


def provenance(
    run_meta: Mapping[str, Any], rule: Any, night: str, head: Mapping[str, Any] | None = None
) -> tuple[tuple[str, str], ...]:
    """(label, value) of where tonight's numbers come from, and what was evaluated."""
    return (
        ("night", night),
        ("run", _text(run_meta.get("run_id"))),
        ("data snapshot", _text(run_meta.get("snapshot_id")) + (f" ({run_meta['form_data']})" if run_meta.get("form_data") else "")),
        ("model set", _text(run_meta.get("model_set_id"))),
        ("seeds", _text(run_meta.get("seeds"))),
        ("code version", _text(run_meta.get("code_version"))),
        ("device", _text(run_meta.get("device"))),
        ("cohort rule", rule_text(rule)),
        *_period(head or {}),
        ("run created", _text(run_meta.get("created_at"))),
    )
