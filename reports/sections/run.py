"""About the run itself: the trend across nights, data quality of tonight's ingest, provenance."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any, Mapping, Sequence

from reports.model import SOURCE_COLOURS, Line, Lines2Spec, LinesPanel, Panel, Section, Table, sig
from reports.prose import EXPLAIN, INTRO
from reports.sections.common import colour

__all__ = ["trend_section", "quality_section", "provenance"]


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
        ("model_log_loss", "model", SOURCE_COLOURS["model"]),
        ("market_log_loss", "market", SOURCE_COLOURS["market"]),
    ):
        ys = [sig(h.get(key)) for _, h in nights]
        if any(y is not None for y in ys):
            series.append(Line(name, xs, ys, colour_, mode="lines+markers"))
    share = [sig(h.get("saturated_share")) for _, h in nights]
    spec = Lines2Spec(
        "fig-trend",
        [
            LinesPanel("log-loss", series, "log-loss"),
            LinesPanel(
                "share of dogs saturated",
                [Line("saturated share", xs, share, colour("saturated"), mode="lines+markers")],
                "share",
            ),
        ],
        xlabel="night",
        category_x=True,
        height=340,
    )
    cols = ("night", "dogs", "saturated share", "model log-loss", "market log-loss")
    rows = tuple(
        (n, h.get("dogs"), sig(h.get("saturated_share")), sig(h.get("model_log_loss")), sig(h.get("market_log_loss")))
        for n, h in reversed(nights)
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


def provenance(run_meta: Mapping[str, Any], rule: Any, night: str) -> tuple[tuple[str, str], ...]:
    """(label, value) of where tonight's numbers come from."""
    rule_text = "n/a"
    if isinstance(rule, dict):
        params = rule.get("params") or {}
        p = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
        rule_text = f"{rule.get('name', '?')} v{rule.get('version', '?')}" + (f" ({p})" if p else "")
    elif rule:
        rule_text = str(rule)
    return (
        ("night", night),
        ("run", _text(run_meta.get("run_id"))),
        ("data snapshot", _text(run_meta.get("snapshot_id")) + (f" ({run_meta['form_data']})" if run_meta.get("form_data") else "")),
        ("model set", _text(run_meta.get("model_set_id"))),
        ("seeds", _text(run_meta.get("seeds"))),
        ("code version", _text(run_meta.get("code_version"))),
        ("device", _text(run_meta.get("device"))),
        ("cohort rule", rule_text),
        ("run created", _text(run_meta.get("created_at"))),
    )
