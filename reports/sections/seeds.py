"""Reproducibility across seeds: CKA between seeds' states, prediction spread, churn and label agreement."""

from __future__ import annotations

import pandas as pd

from gruviz_core.results import RunResults
from reports.model import Line, LinesSpec, Panel, Section, Table, sig
from reports.prose import EXPLAIN, INTRO
from reports.sections.common import cohorts_in, ints, missing, nonempty, sigs

__all__ = ["repro_section"]

_KNOWN = ("prob_spread", "top_pick_churn", "kappa")


def repro_section(results: RunResults) -> Section:
    """Would another training seed tell the same story?"""
    panels = (_cka_panel(results.cka), _repro_panel(results.repro))
    return Section("reproducibility", "Reproducibility across seeds", INTRO["reproducibility"], panels)


def _cka_panel(cka: pd.DataFrame | None) -> Panel:
    title, explain = "CKA between seeds by race", EXPLAIN["cka"]
    if not nonempty(cka):
        return Panel(title, explain, note=missing("eval/cka.parquet"))
    series = []
    for (a, b), g in cka.groupby(["seed_a", "seed_b"], sort=True):
        g = g.sort_values("step")
        series.append(Line(f"seed {int(a)} vs {int(b)}", ints(g["step"]), sigs(g["cka"])))
    spec = LinesSpec("fig-cka", series, xlabel="race (step)", ylabel="linear CKA", yrange=[0, 1.02], height=340)
    return Panel(title, explain, spec)


def _repro_panel(rep: pd.DataFrame | None) -> Panel:
    title, explain = "Prediction spread, churn and agreement", EXPLAIN["repro"]
    if not nonempty(rep):
        return Panel(title, explain, note=missing("eval/repro.parquet"))
    piv = rep.pivot_table(index="scope", columns="metric", values="value", aggfunc="first")
    metrics = [m for m in _KNOWN if m in piv.columns] + sorted(set(piv.columns) - set(_KNOWN))
    rows = tuple((s, *[sig(piv.loc[s, m]) for m in metrics]) for s in cohorts_in(piv.index))
    return Panel(title, explain, table=Table(("scope", *metrics), rows))
