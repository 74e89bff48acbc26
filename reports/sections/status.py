"""The comparison by saturation status at prediction time (docs/ARCHITECTURE.md): gap to the market by step
stratum and status group, the comparisons side by side (main, negative control, within dog, by dog cohort,
dose trend), the dose-response by decile of s_{t-1}, and threshold sensitivity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from reports.headline import effect_sizes_text
from reports.model import GroupedPanel, GroupedSeries, GroupedSpec, Panel, Table, sig
from reports.prose import COHORT_EXPLAIN, COMPARISONS, HIGHER_IS_BETTER, METRIC_NAMES
from reports.sections.common import colour, missing, nonempty, sigs

__all__ = ["status_panel", "effects_panel", "dose_panel", "sensitivity_panel", "sensitivity_reading", "STRATA"]

STRATA: tuple[str, ...] = ("1", "2-5", "6-10", "11-20", "21-40", "41+", "all")
"""Step strata of status_compare, in display order."""
GROUPS: tuple[str, ...] = ("saturated", "partial", "unsaturated", "undecided")
"""Status groups at prediction time, in display order."""
_TOO_SMALL = "too small to compare"


def _what(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def _better(metric: str) -> str:
    return "Higher is better." if metric in HIGHER_IS_BETTER else "Lower is better."


def _main_metric(metrics: Any) -> str:
    """The gap to the market when there is one, else per-runner log-loss, else the first metric present."""
    present = list(dict.fromkeys(str(m) for m in metrics))
    for m in ("gap_vs_market", "runner_log_loss"):
        if m in present:
            return m
    return present[0]


def status_panel(sc: pd.DataFrame | None) -> list[Panel]:
    """The main comparison: one series per status group, by step stratum, with intervals; and the groups' sizes."""
    title = "By saturation status at prediction time"
    if not nonempty(sc):
        return [Panel(title, "", note=missing("eval/status_compare.parquet"))]
    metric = _main_metric(sc["metric"])
    sub = sc[sc["metric"] == metric].assign(stratum=lambda d: d["stratum"].astype(str))
    strata = [s for s in STRATA if s in set(sub["stratum"])] + sorted(set(sub["stratum"]) - set(STRATA))
    groups = [g for g in GROUPS if g in set(sub["group"])] + sorted(set(sub["group"]) - set(GROUPS))
    series = []
    for g in groups:
        s = sub[sub["group"] == g].set_index("stratum").reindex(strata)
        series.append(GroupedSeries(g, colour(g), sigs(s["value"]), sigs(s["lo"]), sigs(s["hi"])))
    spec = GroupedSpec(
        "fig-status-compare", [GroupedPanel(f"{_what(metric)} by races already run", strata, series)], "points",
        height=420,
    )
    explain = COHORT_EXPLAIN["status"].format(what=_what(metric), better=_better(metric))
    panels = [Panel(title, explain, spec)]
    overall = sub[sub["stratum"] == "all"].set_index("group").reindex(groups)
    if len(overall):
        rows = tuple(
            (g, _int(r["n_dogs"]), _int(r["n_rows"]), _int(r["n_winners"]), sig(r["n_eff_dogs"]))
            for g, r in overall.iterrows()
        )
        table = Table(("status group", "dogs", "races", "winners", "effective dogs"), rows)
        panels.append(Panel("Status groups: sizes", COHORT_EXPLAIN["status-sizes"], table=table))
    return panels


def _int(v: Any) -> int | None:
    return None if v is None or pd.isna(v) else int(v)


def _interval(r: Mapping[str, Any]) -> tuple[Any, str, str]:
    """(diff, interval text, reading) of an effect row; 'too small to compare' (with its sizes) when not comparable."""
    d, lo, hi = sig(r["diff"]), sig(r["lo"]), sig(r["hi"])
    if not bool(r["comparable"]) or d is None or lo is None or hi is None:
        return None, f"{_TOO_SMALL} ({effect_sizes_text(r)})", _TOO_SMALL
    reading = "interval excludes 0" if bool(r["excludes_zero"]) else "no association detected at this size"
    return d, f"{lo:+.4g} to {hi:+.4g}", reading


def effects_panel(se: pd.DataFrame | None) -> Panel:
    """The comparisons side by side; a row below the minimum size prints 'too small to compare', never an interval."""
    title = "Comparisons side by side"
    if not nonempty(se):
        return Panel(title, "", note=missing("eval/status_effect.parquet"))
    order = {c: i for i, c in enumerate(COMPARISONS)}
    se = se.assign(_o=se["comparison"].map(lambda c: order.get(str(c), len(order)))).sort_values(["_o", "metric"])
    rows = []
    for _, r in se.iterrows():
        d, interval, reading = _interval(r)
        label = COMPARISONS.get(str(r["comparison"]), str(r["comparison"]))
        rows.append((label, _what(str(r["metric"])), f"{r['a']} - {r['b']}", d, interval, reading,
                     f"{int(r['n_dogs_a']):,} / {int(r['n_dogs_b']):,}", str(r["note"] or "")))
    cols = ("comparison", "metric", "a - b", "difference", "95% interval", "reads as", "dogs a / b", "note")
    return Panel(title, COHORT_EXPLAIN["effects"], table=Table(cols, tuple(rows)))


def dose_panel(dr: pd.DataFrame | None, trend: Mapping[str, Any] | None) -> Panel:
    """The metric by decile of the saturation score at prediction time, one series, with intervals and the trend."""
    title = "Dose-response: by saturation score before the race"
    if not nonempty(dr):
        return Panel(title, "", note=missing("eval/dose_response.parquet"))
    metric = _main_metric(dr["metric"])
    sub = dr[dr["metric"] == metric].sort_values("decile")
    cats = [f"D{int(k)} ({sig(a, 2)}-{sig(b, 2)})" for k, a, b in zip(sub["decile"], sub["score_lo"], sub["score_hi"])]
    spec = GroupedSpec(
        "fig-dose",
        [GroupedPanel(f"{_what(metric)} by decile of s_{{t-1}}", cats,
                      [GroupedSeries(_what(metric), colour("all"), sigs(sub["value"]), sigs(sub["lo"]), sigs(sub["hi"]))])],
        "points",
        height=380,
    )
    t = trend if isinstance(trend, Mapping) else {}
    vals = [sig(t.get(k)) for k in ("slope", "lo", "hi")]
    if all(v is not None for v in vals):
        trend_text = COHORT_EXPLAIN["dose-trend"].format(slope=vals[0], lo=vals[1], hi=vals[2], n=int(t.get("n_rows") or 0))
    else:
        trend_text = COHORT_EXPLAIN["dose-no-trend"]
    return Panel(title, COHORT_EXPLAIN["dose"].format(what=_what(metric), trend=trend_text), spec)


def sensitivity_reading(sens: pd.DataFrame) -> str:
    """'Flat means robust' only when the grid moved the groups and every interval overlaps the main one;
    otherwise what the grid shows."""
    main = sens[sens["param"] == "default"]
    grid = sens[sens["param"] != "default"]
    moved = len(grid) > 0 and len(sens[["n_dogs_a", "n_dogs_b"]].drop_duplicates()) > 1
    if not moved:
        return COHORT_EXPLAIN["sens-static"]
    m = main.iloc[0] if len(main) else None
    if m is None or not bool(m["comparable"]) or not np.isfinite([m["lo"], m["hi"]]).all():
        return COHORT_EXPLAIN["sens-no-main"]
    off = []
    for _, r in grid.iterrows():
        ok = bool(r["comparable"]) and np.isfinite([r["lo"], r["hi"]]).all()
        if not ok or r["hi"] < m["lo"] or r["lo"] > m["hi"]:
            off.append(f"{r['param']}={sig(r['value'])}")
    if not off:
        return COHORT_EXPLAIN["sens-robust"]
    return COHORT_EXPLAIN["sens-moves"].format(n=len(off), where=", ".join(off))


def sensitivity_panel(sens: pd.DataFrame | None) -> list[Panel]:
    """At each grid point: group sizes and the effect with its interval (figure and table), and what it shows."""
    title = "Threshold sensitivity"
    if not nonempty(sens):
        return [Panel(title, "", note=missing("eval/sensitivity.parquet"))]
    cats, y, lo, hi, rows = [], [], [], [], []
    for _, r in sens.iterrows():
        name = "default" if r["param"] == "default" else f"{r['param']}={sig(r['value'])}"
        ok = bool(r["comparable"])
        cats.append(name)
        y.append(sig(r["diff"]) if ok else None)
        lo.append(sig(r["lo"]) if ok else None)
        hi.append(sig(r["hi"]) if ok else None)
        interval = f"{sig(r['lo']):+.4g} to {sig(r['hi']):+.4g}" if ok and sig(r["lo"]) is not None else _TOO_SMALL
        rows.append((name, int(r["n_dogs_a"]), int(r["n_dogs_b"]), int(r["n_rows_a"]), int(r["n_rows_b"]),
                     sig(r["diff"]) if ok else None, interval))
    spec = GroupedSpec(
        "fig-sensitivity",
        [GroupedPanel("main effect (a - b) at each grid point", cats, [GroupedSeries("effect a - b", colour("saturated"), y, lo, hi)])],
        "points",
        height=360,
    )
    explain = COHORT_EXPLAIN["sensitivity"] + " " + sensitivity_reading(sens)
    cols = ("grid point", "dogs a", "dogs b", "races a", "races b", "a - b", "95% interval")
    return [Panel(title, explain, spec, table=Table(cols, tuple(rows)), collapsed=len(rows) > 12)]
