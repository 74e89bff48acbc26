"""Page one's figure and scorecard: the gap to the market by race count (always shown) and settled vs settling
races on loss, accuracy and reproducibility, with intervals where the run has them (resilience is measured by
race count, early against late, not by status: its page-one line says so)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from gruviz_core.results import RunResults
from reports.headline import races_label, record
from reports.model import GroupedPanel, GroupedSeries, GroupedSpec, Panel, Table, sig
from reports.prose import EXPLAIN
from reports.sections.common import missing, nonempty

__all__ = ["front_panels", "gap_panel", "scorecard_panel"]

_A, _B = "settled", "settling"


def front_panels(results: RunResults) -> tuple[Panel, ...]:
    """The gap chart and the scorecard, in that order."""
    head = record(results.headline)
    return gap_panel(head.get("gap_by_race_count")), scorecard_panel(results, head)


def gap_panel(rows: Any) -> Panel:
    """The model's gap to the market by race count, one series, with intervals."""
    title = "Gap to the market by race count"
    pts = [r for r in rows or [] if isinstance(r, Mapping) and sig(r.get("diff")) is not None]
    if not pts:
        return Panel(title, "", note=missing("the headline's gap_by_race_count"))
    cats = [races_label(r.get("bucket")) for r in pts]
    s = GroupedSeries("model minus market, nats per runner", "#0f766e", [sig(r.get("diff")) for r in pts],
                      [sig(r.get("lo")) for r in pts], [sig(r.get("hi")) for r in pts])
    spec = GroupedSpec("fig-gap", [GroupedPanel("gap to the market by the dog's race count", cats, [s])], "points",
                       height=300)
    return Panel(title, EXPLAIN["gap"], spec)


def _ci(v: Any, lo: Any, hi: Any) -> str | None:
    v, lo, hi = sig(v), sig(lo), sig(hi)
    if v is None:
        return None
    return f"{v:.3g} [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else f"{v:.3g}"


def _diff(e: Any) -> str | None:
    if not isinstance(e, Mapping) or not e.get("comparable", True):
        return None
    d, lo, hi = sig(e.get("diff")), sig(e.get("lo")), sig(e.get("hi"))
    return None if None in (d, lo, hi) else f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]"


def _status_rows(sc: pd.DataFrame | None, head: Mapping[str, Any]) -> list[tuple]:
    if not nonempty(sc):
        return []
    sub = sc[sc["stratum"].astype(str) == "all"]
    out = []
    for metric, label, kind in (("gap_vs_market", "gap to the market (nats per runner)", "loss"),
                                ("runner_log_loss", "per-runner log-loss", "loss"),
                                ("hit_rate", "winner hit rate", "accuracy"),
                                ("concordance", "within-race concordance", "accuracy")):
        m = sub[sub["metric"] == metric].set_index("group")
        if _A not in m.index or _B not in m.index:
            continue
        a, b = m.loc[_A], m.loc[_B]
        main = head.get("main_effect") if metric == "gap_vs_market" else None
        out.append((kind, label, _ci(a["value"], a["lo"], a["hi"]), _ci(b["value"], b["lo"], b["hi"]), _diff(main)))
    return out


def _repro_rows(rep: pd.DataFrame | None) -> list[tuple]:
    """Churn and spread by status under seed 0 (eval/repro, by = status), with intervals."""
    if not nonempty(rep) or "by" not in rep.columns:
        return []
    out = []
    for metric, label in (("top_pick_churn", "seeds' favourites differ (churn)"), ("prob_spread", "prediction spread")):
        m = rep[(rep["metric"] == metric) & (rep["by"] == "status")].set_index("scope")
        if _A not in m.index or _B not in m.index:
            continue
        a, b = m.loc[_A], m.loc[_B]
        d = m.loc["settled - settling"] if "settled - settling" in m.index else None
        diff = None if d is None else _diff({"diff": d["value"], "lo": d["lo"], "hi": d["hi"]})
        out.append(("reproducibility", label + (" (not step-matched)" if diff else ""),
                    _ci(a["value"], a["lo"], a["hi"]), _ci(b["value"], b["lo"], b["hi"]), diff))
    return out


def scorecard_panel(results: RunResults, head: Mapping[str, Any]) -> Panel:
    """Settled vs settling on loss, accuracy, reproducibility and resilience, from the tables the run has."""
    title = "Scorecard: settled vs settling races"
    rows = _status_rows(results.status_compare, head) + _repro_rows(results.repro)
    if not rows:
        return Panel(title, "", note=missing("eval/status_compare.parquet (settled and settling groups)"))
    cols = ("", "measure", "settled [95%]", "settling [95%]", "settled - settling, same step [95%]")
    return Panel(title, EXPLAIN["scorecard"], table=Table(cols, tuple(rows)))
