"""The cohorts section: sizes and the tail-F distribution (the rule may find no saturated dog), the comparison by
saturation status at prediction time (`reports.sections.status`), calibration (model and market apart) and the
metrics by dog cohort (which include selection)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from gruviz_core.results import RunResults
from reports.headline import rule_short
from reports.model import (
    SOURCE_COLOURS,
    GroupedPanel,
    GroupedSeries,
    GroupedSpec,
    Line,
    Lines2Spec,
    LinesPanel,
    LinesSpec,
    Panel,
    Section,
    Table,
    sig,
)
from reports.prose import COHORT_EXPLAIN, INTRO, METRIC_NAMES
from reports.sections.common import cohorts_in, colour, missing, nonempty, sigs
from reports.sections.status import dose_panel, effects_panel, sensitivity_panel, status_panel

__all__ = ["cohort_section", "tail_f_panel"]

_METRICS = ("gap_vs_market", "runner_log_loss", "log_loss", "brier", "concordance", "auc", "hit_rate")
_MAX_ECDF_POINTS = 200
_TITLE = "Saturation and prediction: associations, out of sample"


def cohort_section(
    results: RunResults, dog: pd.DataFrame | None, counts: tuple[tuple[str, int], ...], rule: Any
) -> Section:
    """Is a saturated state associated with worse predictions: sizes, tail F, and (when the held-out period is big
    enough) every comparison of section 6."""
    head = results.headline
    period = head.get("period") if isinstance(head.get("period"), Mapping) else {}
    panels = [_sizes_panel(dog, counts), tail_f_panel(dog, rule, counts)]
    if period.get("too_small"):
        note = COHORT_EXPLAIN["too-small-period"].format(
            races=int(period.get("races") or 0), min_races=int(period.get("min_races") or 0)
        )
        panels.append(Panel("Comparisons", "", note=note))
        return Section("cohorts", _TITLE, INTRO["cohorts"], tuple(panels))
    panels += [
        *status_panel(results.status_compare),
        effects_panel(results.status_effect),
        dose_panel(results.dose_response, head.get("dose_trend")),
        *sensitivity_panel(results.sensitivity),
        _calibration_panel(results.calibration),
        _by_cohort_panel(results.cohort_metrics),
    ]
    return Section("cohorts", _TITLE, INTRO["cohorts"], tuple(panels))


def _sizes_panel(dog: pd.DataFrame | None, counts: tuple[tuple[str, int], ...]) -> Panel:
    explain = COHORT_EXPLAIN["sizes"]
    if not counts:
        return Panel("Cohort sizes", explain, note=missing("stats/dog.parquet"))
    total = sum(n for _, n in counts) or 1
    more: dict[str, tuple[Any, Any]] = {}
    if nonempty(dog):
        for c, g in dog.groupby("cohort"):
            debut = g["debut_observed"].astype(bool).mean() if len(g) else None
            more[str(c)] = (sig(g["n_steps"].median()), sig(100 * debut, 3) if debut is not None else None)
    rows = tuple((c, n, sig(100 * n / total, 3), *more.get(c, (None, None))) for c, n in counts)
    cols = ("cohort", "dogs", "share %", "median races", "debut observed %")
    return Panel("Cohort sizes", explain, table=Table(cols, rows))


def _ecdf(values: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Step points of the empirical CDF, at most _MAX_ECDF_POINTS, starting at (min, 0) so mass at the minimum shows."""
    v = np.sort(values)
    n = len(v)
    xs, idx = np.unique(v, return_index=False, return_counts=True)
    ys = np.cumsum(idx) / n
    if len(xs) > _MAX_ECDF_POINTS:
        keep = np.unique(np.linspace(0, len(xs) - 1, _MAX_ECDF_POINTS).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return sigs([xs[0], *xs]), sigs([0.0, *ys])


def tail_f_panel(dog: pd.DataFrame | None, rule: Any, counts: tuple[tuple[str, int], ...]) -> Panel:
    """The distribution of tail F over decided dogs, always drawn; zero saturated dogs is stated as a finding."""
    title = "Tail F_0.95 of decided dogs"
    if not nonempty(dog):
        return Panel(title, "", note=missing("stats/dog.parquet"))
    decided = dog[dog["cohort"].astype(str) != "undecided"]
    f = pd.to_numeric(decided["f_tail"], errors="coerce").dropna().to_numpy(np.float64)
    if not len(f):
        return Panel(title, "", note="No decided dog has a tail F: every dog has too few races to tell.")
    x, y = _ecdf(f)
    series = [Line("decided dogs (share at or below)", x, y, colour("all"), shape="hv", mode="lines")]
    params = (rule or {}).get("params", {}) if isinstance(rule, Mapping) else {}
    for key, name, c in (("low", "low (unsaturated below)", "unsaturated"), ("theta", "theta (saturated at or above)", "saturated")):
        v = sig(params.get(key))
        if v is not None:
            series.append(Line(name, [v, v], [0.0, 1.0], colour(c), dash="dash"))
    zero = int((f == 0).sum())
    explain = COHORT_EXPLAIN["tail-f"].format(n=len(f), zero=f"{zero:,} ({100 * zero / len(f):.1f}%)")
    if dict(counts).get("saturated", None) == 0:
        explain = COHORT_EXPLAIN["none-saturated"].format(rule=rule_short(rule)) + " " + explain
    spec = LinesSpec(
        "fig-tail-f", series, xlabel="tail F_0.95 (share of units with |h| >= 0.95 after the plateau)",
        ylabel="share of decided dogs", yrange=[0, 1.02], height=340,
    )
    return Panel(title, explain, spec)


def _calibration_panel(cal: pd.DataFrame | None) -> Panel:
    """Model and market as separate series, one panel per dog cohort (all first), bin counts on hover."""
    title = "Calibration"
    if not nonempty(cal):
        return Panel(title, "", note=missing("eval/calibration.parquet"))
    panels = []
    for c in [c for c in cohorts_in(cal["cohort"]) if c in ("all", "saturated", "unsaturated")]:
        sub = cal[cal["cohort"] == c]
        series = []
        for src in [s for s in SOURCE_COLOURS if s in set(sub["source"])] + sorted(set(sub["source"]) - set(SOURCE_COLOURS)):
            s = sub[sub["source"] == src].sort_values("bin")
            text = [f"{int(n):,} runners" for n in s["n"]]
            series.append(Line(str(src), sigs(s["p_mean"]), sigs(s["won_rate"]), SOURCE_COLOURS.get(src, "#374151"),
                               mode="lines+markers", text=text))
        hi = sig(max(sub["p_mean"].max(), sub["won_rate"].max()) * 1.05) or 1.0
        series.append(Line("perfect calibration", [0.0, hi], [0.0, hi], "#9ca3af", dash="dash"))
        panels.append(LinesPanel("all dogs" if c == "all" else f"{c} dogs", series, "observed win rate"))
    spec = Lines2Spec("fig-calibration", panels, xlabel="predicted probability", height=380)
    return Panel(title, COHORT_EXPLAIN["calibration"], spec)


def _by_cohort_panel(cm: pd.DataFrame | None) -> Panel:
    title = "By dog cohort (includes selection)"
    if not nonempty(cm):
        return Panel(title, "", note=missing("eval/cohort_metrics.parquet"))
    cohorts = cohorts_in(cm["cohort"])
    present = set(cm["metric"])
    metrics = [m for m in _METRICS if m in present][:4]
    panels = []
    for m in metrics:
        sub = cm[cm["metric"] == m]
        sources = set(sub["source"])
        series = []
        for src in [s for s in SOURCE_COLOURS if s in sources] + sorted(sources - set(SOURCE_COLOURS)):
            s = sub[sub["source"] == src].set_index("cohort").reindex(cohorts)
            series.append(GroupedSeries(str(src), SOURCE_COLOURS.get(src, "#374151"), sigs(s["value"]), sigs(s["lo"]), sigs(s["hi"])))
        panels.append(GroupedPanel(METRIC_NAMES.get(m, m.replace("_", " ")), cohorts, series))
    return Panel(title, COHORT_EXPLAIN["by-cohort"], GroupedSpec("fig-metrics", panels, "points", height=420), collapsed=True)
