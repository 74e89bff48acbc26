"""The main comparison's panels: the checks side by side (main, within dog, the (w, delta, k) grid, the market's
own difference, the negative control), the reliance dose-response, the status groups by races already run, and
their numbers behind a <details>. Read from the headline record and eval/status_compare.parquet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from reports.model import GroupedPanel, GroupedSeries, GroupedSpec, Panel, Table, sig
from reports.prose import COHORT_EXPLAIN, HIGHER_IS_BETTER, METRIC_NAMES
from reports.sections.common import colour, missing, nonempty, sigs

__all__ = ["checks", "checks_panel", "checks_table", "dose_panel", "status_panel", "STRATA", "GROUPS"]

STRATA: tuple[str, ...] = ("1", "2-5", "6-10", "11-20", "21-40", "41+", "all")
"""Step strata of status_compare, in display order."""
GROUPS: tuple[str, ...] = ("settled", "settling", "undecided", "saturated", "partial", "unsaturated")
"""Status groups at prediction time, in display order."""
_TOO_SMALL = "too small to compare"
_DOSE = {"write_prev": "write fraction u_{t-1}", "move_prev": "movement m_{t-1}", "s_prev": "abs-sum s_{t-1}"}


def _what(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def _m(head: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = head.get(key)
    return v if isinstance(v, Mapping) else {}


def _ok(e: Mapping[str, Any]) -> bool:
    return bool(e.get("comparable", True)) and all(sig(e.get(k)) is not None for k in ("diff", "lo", "hi"))


def checks(head: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(label, series, effect) of every check in the record, in display order; series names what is compared."""
    gap, market, control = "model's gap to the market", "market's own log-loss", "negative control"
    out: list[tuple[str, str, Mapping[str, Any]]] = []
    main = _m(head, "main_effect")
    if main:
        out.append((f"{main.get('a', 'a')} - {main.get('b', 'b')}, same step", gap, main))
    if _m(head, "within_dog"):
        out.append(("within dog: after - before plateau", gap, _m(head, "within_dog")))
    for g in head.get("grid") or []:
        if isinstance(g, Mapping):
            out.append((f"grid {g.get('param')}={sig(g.get('value'))}", gap, g))
    comp = _m(_m(head, "composition"), "market_log_loss")
    if comp:
        out.append(("composition: same groups", market, comp))
    if _m(head, "negative_control"):
        out.append(("negative control: step 1", control, _m(head, "negative_control")))
    return out


_SERIES_COLOURS = {"model's gap to the market": "#0f766e", "market's own log-loss": "#7c3aed",
                   "negative control": "#6b7280"}


def checks_panel(head: Mapping[str, Any]) -> Panel:
    """The checks side by side with their intervals; only the ones that produced an interval are drawn."""
    title = "The comparison and its checks"
    rows = checks(head)
    if not rows:
        return Panel(title, "", note=missing("the headline's main_effect, within_dog, grid and composition"))
    drawn = [(label, series, e) for label, series, e in rows if _ok(e)]
    if not drawn:
        return Panel(title, COHORT_EXPLAIN["checks"], note=COHORT_EXPLAIN["checks-none"])
    cats = [label for label, _, _ in drawn]
    series = []
    for name in dict.fromkeys(s for _, s, _ in drawn):
        pick = [e if s == name else None for _, s, e in drawn]
        series.append(GroupedSeries(name, _SERIES_COLOURS.get(name, "#374151"),
                                    *[[sig(e.get(k)) if e else None for e in pick] for k in ("diff", "lo", "hi")]))
    spec = GroupedSpec("fig-checks", [GroupedPanel("difference a - b, nats per runner", cats, series)], "points",
                       height=360)
    return Panel(title, COHORT_EXPLAIN["checks"], spec)


def _interval(e: Mapping[str, Any]) -> tuple[Any, str, str]:
    if not _ok(e):
        return None, _TOO_SMALL, _TOO_SMALL
    lo, hi = sig(e["lo"]), sig(e["hi"])
    reading = "interval excludes 0" if (lo > 0 or hi < 0) else "includes 0"
    return sig(e["diff"]), f"{lo:+.4g} to {hi:+.4g}", reading


def _n(x: Any) -> int | None:
    v = sig(x, 17)
    return None if v is None else int(v)


def checks_table(head: Mapping[str, Any]) -> Panel | None:
    """The checks in numbers (behind a <details>); a check below the minimum sizes prints its sizes only."""
    rows = []
    for label, series, e in checks(head):
        d, interval, reading = _interval(e)
        rows.append((label, series, d, interval, reading, _n(e.get("n_dogs_a")), _n(e.get("n_dogs_b")),
                     _n(e.get("n_runners_a")), _n(e.get("n_runners_b"))))
    if not rows:
        return None
    cols = ("check", "what", "a - b", "95% interval", "reads as", "dogs a", "dogs b", "runners a", "runners b")
    return Panel("The checks in numbers", COHORT_EXPLAIN["checks-table"], table=Table(cols, tuple(rows)), collapsed=True)


def dose_panel(head: Mapping[str, Any]) -> Panel:
    """Slope of the gap per SD of each reliance score before the race, step fixed effects, with intervals."""
    title = "Reliance on the latest race: dose-response"
    dose = [d for d in head.get("dose") or [] if isinstance(d, Mapping)]
    if not dose:
        return Panel(title, "", note=missing("the headline's dose"))
    drawn = [d for d in dose if bool(d.get("comparable", True)) and sig(d.get("slope_per_sd")) is not None]
    if not drawn:
        return Panel(title, "", note=COHORT_EXPLAIN["dose-none"])
    cats = [_DOSE.get(str(d.get("score")), str(d.get("score"))) for d in drawn]
    s = GroupedSeries("slope of the gap per SD", "#0f766e", [sig(d.get("slope_per_sd")) for d in drawn],
                      [sig(d.get("lo")) for d in drawn], [sig(d.get("hi")) for d in drawn])
    n = max(int(d.get("n_runners") or 0) for d in drawn)
    spec = GroupedSpec("fig-dose", [GroupedPanel("gap to the market per SD of the score", cats, [s])], "points",
                       height=300)
    return Panel(title, COHORT_EXPLAIN["dose"].format(n=n), spec)


def _main_metric(metrics: Any) -> str:
    present = list(dict.fromkeys(str(m) for m in metrics))
    for m in ("gap_vs_market", "runner_log_loss"):
        if m in present:
            return m
    return present[0]


def status_panel(sc: pd.DataFrame | None) -> list[Panel]:
    """By status at prediction time and races already run: one series per status group, with intervals; sizes."""
    title = "By status at prediction time and races already run"
    if not nonempty(sc):
        return [Panel(title, "", note=missing("eval/status_compare.parquet"))]
    metric = _main_metric(sc["metric"])
    sub = sc[sc["metric"] == metric].assign(stratum=lambda d: d["stratum"].astype(str))
    strata = [s for s in STRATA if s in set(sub["stratum"])] + sorted(set(sub["stratum"]) - set(STRATA))
    groups = _groups(sub["group"])
    series = []
    for g in groups:
        s = sub[sub["group"] == g].set_index("stratum").reindex(strata)
        series.append(GroupedSeries(g, colour(g), sigs(s["value"]), sigs(s["lo"]), sigs(s["hi"])))
    spec = GroupedSpec("fig-status-compare", [GroupedPanel(f"{_what(metric)} by races already run", strata, series)],
                       "points", height=360)
    better = "Higher is better." if metric in HIGHER_IS_BETTER else "Lower is better."
    panels = [Panel(title, COHORT_EXPLAIN["status"].format(what=_what(metric), better=better), spec, closed=True)]
    overall = sub[sub["stratum"] == "all"].set_index("group").reindex(groups)
    if len(overall):
        rows = tuple((g, _n(r["n_dogs"]), _n(r["n_rows"]), _n(r["n_winners"]), sig(r["n_eff_dogs"]))
                     for g, r in overall.iterrows())
        table = Table(("status group", "dogs", "runners", "winners", "effective dogs"), rows)
        panels.append(Panel("Status groups: sizes", COHORT_EXPLAIN["status-sizes"], table=table, collapsed=True))
    return panels


def _groups(values: Sequence[Any] | pd.Series) -> list[str]:
    present = {str(v) for v in values}
    return [g for g in GROUPS if g in present] + sorted(present - set(GROUPS))
