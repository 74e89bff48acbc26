"""The cohort comparison: sizes, metrics by cohort, effect sizes, length-matched, calibration, sensitivity."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from gruviz_core.results import RunResults
from reports.model import (
    SOURCE_COLOURS, GroupedPanel, GroupedSeries, GroupedSpec, Line, Lines2Spec, LinesPanel, LinesSpec, Panel,
    Section, Table, sig,
)
from reports.prose import EXPLAIN, INTRO
from reports.sections.common import cohorts_in, colour, missing, nonempty, sigs

__all__ = ["cohort_section"]

_METRICS = ("log_loss", "brier", "auc", "hit_rate")


def cohort_section(
    results: RunResults, dog: pd.DataFrame | None, counts: tuple[tuple[str, int], ...], rule: Any
) -> Section:
    """Does saturation matter for prediction: every comparison of the cohorts."""
    panels = [
        _sizes_panel(dog, counts),
        _metrics_panel(results.cohort_metrics),
        _effect_panel(results.effect_size),
        _length_panel(results.length_matched),
        _calibration_panel(results.calibration),
        _sensitivity_panel(results.sensitivity, rule),
    ]
    return Section("cohorts", "Saturated vs unsaturated dogs", INTRO["cohorts"], tuple(panels))


def _sizes_panel(dog: pd.DataFrame | None, counts: tuple[tuple[str, int], ...]) -> Panel:
    explain = EXPLAIN["sizes"]
    if not counts:
        return Panel("Cohort sizes", explain, note=missing("stats/dog.parquet"))
    total = sum(n for _, n in counts) or 1
    med: dict[str, tuple[Any, Any]] = {}
    if nonempty(dog):
        for c, g in dog.groupby("cohort"):
            ps = pd.to_numeric(g["plateau_step"], errors="coerce").dropna()
            med[str(c)] = (sig(g["n_steps"].median()), sig(ps.median()) if len(ps) else None)
    rows = tuple((c, n, sig(100 * n / total, 3), *med.get(c, (None, None))) for c, n in counts)
    return Panel(
        "Cohort sizes",
        explain,
        table=Table(("cohort", "dogs", "share %", "median races", "median plateau race"), rows),
    )


def _grouped_series(sub: pd.DataFrame, name: str, colour_: str) -> GroupedSeries:
    return GroupedSeries(name, colour_, sigs(sub["value"]), sigs(sub["lo"]), sigs(sub["hi"]))


def _metrics_panel(cm: pd.DataFrame | None) -> Panel:
    explain = EXPLAIN["metrics"]
    if not nonempty(cm):
        return Panel("Metrics by cohort", explain, note=missing("eval/cohort_metrics.parquet"))
    cohorts = cohorts_in(cm["cohort"])
    panels = []
    for m in [m for m in _METRICS if m in set(cm["metric"])]:
        sub = cm[cm["metric"] == m]
        sources = set(sub["source"])
        series = []
        for src in [s for s in SOURCE_COLOURS if s in sources] + sorted(sources - set(SOURCE_COLOURS)):
            s = sub[sub["source"] == src].set_index("cohort").reindex(cohorts)
            series.append(_grouped_series(s, src, SOURCE_COLOURS.get(src, "#374151")))
        panels.append(GroupedPanel(m.replace("_", "-"), cohorts, series))
    return Panel("Metrics by cohort", explain, GroupedSpec("fig-metrics", panels, "points", height=420))


def _effect_panel(eff: pd.DataFrame | None) -> Panel:
    explain = EXPLAIN["effect"]
    if not nonempty(eff):
        return Panel("Effect sizes", explain, note=missing("eval/effect_size.parquet"))
    rows = []
    for _, r in eff.iterrows():
        d, lo, hi = sig(r["diff"]), sig(r["lo"]), sig(r["hi"])
        if d is None or lo is None or hi is None:
            interval, reads = None, "not computed (a cohort is empty or too small)"
        else:
            interval = f"{lo:.4g} to {hi:.4g}"
            reads = "clear difference" if (lo > 0 or hi < 0) else "no clear difference"
        adjust = {"none": "as is", "length_matched": "at equal history length"}.get(str(r["adjust"]), str(r["adjust"]))
        rows.append((str(r["metric"]), adjust, str(r["a"]), str(r["b"]), d, interval, reads))
    cols = ("metric", "compared", "a", "b", "a - b", "95% interval", "reads as")
    return Panel("Effect sizes", explain, table=Table(cols, tuple(rows)))


def _length_panel(lm: pd.DataFrame | None) -> Panel:
    explain = EXPLAIN["length"]
    if not nonempty(lm):
        return Panel("At equal history length", explain, note=missing("eval/length_matched.parquet"))
    strata = list(dict.fromkeys(sorted(lm["stratum"].astype(str), key=_stratum_key)))
    panels = []
    for m in [m for m in _METRICS if m in set(lm["metric"])]:
        sub = lm[lm["metric"] == m]
        series = []
        for c in cohorts_in(sub["cohort"]):
            s = (
                sub[sub["cohort"] == c]
                .assign(stratum=lambda d: d["stratum"].astype(str))
                .set_index("stratum")
                .reindex(strata)
            )
            series.append(_grouped_series(s, c, colour(c)))
        panels.append(GroupedPanel(m.replace("_", "-") + " by races run", strata, series))
    spec = GroupedSpec("fig-length-matched", panels[:2], "points", height=400)
    return Panel("At equal history length", explain, spec)


def _stratum_key(s: str) -> tuple[float, str]:
    digits = "".join(ch if ch.isdigit() else " " for ch in s).split()
    return (float(digits[0]) if digits else math.inf, s)


def _calibration_panel(cal: pd.DataFrame | None) -> Panel:
    explain = EXPLAIN["calibration"]
    if not nonempty(cal):
        return Panel("Calibration", explain, note=missing("eval/calibration.parquet"))
    series = []
    for c in cohorts_in(cal["cohort"]):
        sub = cal[cal["cohort"] == c].sort_values("p_mean")
        series.append(Line(c, sigs(sub["p_mean"]), sigs(sub["won_rate"]), colour(c), mode="lines+markers"))
    hi = sig(max(cal["p_mean"].max(), cal["won_rate"].max()) * 1.05) or 1.0
    spec = LinesSpec(
        "fig-calibration", series, xlabel="predicted probability", ylabel="observed win rate", diagonal=hi,
        xrange=[0, hi], yrange=[0, hi], height=380,
    )
    return Panel("Calibration", explain, spec)


def _sensitivity_panel(sens: pd.DataFrame | None, rule: Any) -> Panel:
    explain = EXPLAIN["sensitivity"]
    if not nonempty(sens):
        return Panel("Threshold sensitivity", explain, note=missing("eval/sensitivity.parquet"))
    tot = sens.groupby(["tau", "theta"])["n_dogs"].transform("sum").replace(0, np.nan)
    sens = sens.assign(share=sens["n_dogs"] / tot)
    sat = sens[sens["cohort"] == "saturated"]
    share, ll = [], []
    for i, tau in enumerate(sorted(sat["tau"].unique())):
        s = sat[sat["tau"] == tau].sort_values("theta")
        dash = ("dot", "solid", "dash", "dashdot")[i % 4]
        share.append(Line(f"tau {sig(tau)}", sigs(s["theta"]), sigs(s["share"]), colour("saturated"), dash))
        ll.append(Line(f"tau {sig(tau)}", sigs(s["theta"]), sigs(s["log_loss"]), colour("saturated"), dash))
    params: Mapping[str, Any] = (rule or {}).get("params", {}) if isinstance(rule, dict) else {}
    spec = Lines2Spec(
        "fig-sensitivity",
        [
            LinesPanel("share of dogs saturated", share, "share"),
            LinesPanel("log-loss of saturated dogs", ll, "log-loss"),
        ],
        xlabel="theta",
        vline=sig(params.get("theta")),
        vline_label="tonight's rule",
        height=360,
    )
    return Panel("Threshold sensitivity", explain, spec)
