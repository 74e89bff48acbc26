"""Resilience to data issues (perturbations by cohort and career position) and the two-dog divergence."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gruviz_core.results import RunResults
from reports.model import GroupedPanel, GroupedSeries, GroupedSpec, Line, LinesSpec, Panel, Section, Table, sig
from reports.prose import EXPLAIN, INTRO
from reports.sections.common import cohorts_in, colour, ints, missing, nonempty, sigs

__all__ = ["resilience_section", "divergence_section"]

_TITLE = "Resilience to data issues"
_POSITION_COLOURS = {"early": "#be123c", "late": "#1e3a8a"}


def resilience_section(results: RunResults) -> Section:
    """How much perturbed inputs move predictions and states, by cohort and by position in the career."""
    res = results.resilience
    intro = INTRO["resilience"]
    if not nonempty(res):
        return Section("resilience", _TITLE, intro, (Panel("Resilience", "", note=missing("eval/resilience.parquet")),))
    worst = res.groupby("perturbation")["severity"].transform("max")
    hard = res[res["severity"] == worst]
    overall = hard[hard["position"] == "all"] if (hard["position"] == "all").any() else hard
    perts = sorted(overall["perturbation"].astype(str).unique())
    cohorts = cohorts_in(overall["cohort"])
    panels = []
    for col, title in (
        ("d_loss", "change in log-loss"),
        ("flip_rate", "top-pick flip rate"),
        ("state_divergence", "state divergence"),
    ):
        g = overall.groupby(["perturbation", "cohort"])[col].mean()
        series = [GroupedSeries(c, colour(c), sigs(g.get((p, c)) for p in perts)) for c in cohorts]
        panels.append(GroupedPanel(title, perts, series))
    out = [
        Panel(
            "By perturbation and cohort",
            EXPLAIN["resilience"],
            GroupedSpec("fig-resilience", panels, "bars", height=400),
        )
    ]
    if {"early", "late"} <= set(hard["position"]):
        out.append(_position_panel(hard[hard["position"].isin(["early", "late"])], cohorts))
    out.append(_all_numbers(res))
    return Section("resilience", _TITLE, intro, tuple(out))


def _position_panel(pos: pd.DataFrame, cohorts: list[str]) -> Panel:
    panels = []
    for col, title in (("d_loss", "change in log-loss"), ("state_divergence", "state divergence")):
        g = pos.groupby(["position", "cohort"])[col].mean()
        series = [
            GroupedSeries(p, _POSITION_COLOURS[p], sigs(g.get((p, c)) for c in cohorts)) for p in ("early", "late")
        ]
        panels.append(GroupedPanel(title, cohorts, series))
    spec = GroupedSpec("fig-resilience-position", panels, "bars", height=360)
    return Panel("Early vs late in the career", EXPLAIN["resilience-position"], spec)


def _all_numbers(res: pd.DataFrame) -> Panel:
    cols = ["perturbation", "severity", "cohort", "position", "d_loss", "flip_rate", "state_divergence", "n"]
    full = res.sort_values(["perturbation", "severity", "cohort", "position"], kind="stable")
    rows = tuple(
        tuple(
            sig(v) if isinstance(v, (float, np.floating)) else (int(v) if isinstance(v, (np.integer,)) else str(v))
            for v in r
        )
        for r in full[cols].itertuples(index=False)
    )
    return Panel("All resilience numbers", EXPLAIN["resilience-all"], table=Table(tuple(cols), rows), collapsed=True)


def divergence_section(results: RunResults, dog: pd.DataFrame | None) -> Section:
    """Distance between two dogs' states race by race, the pair named by the dogs' names."""
    div = results.divergence
    intro = INTRO["divergence"]
    if not nonempty(div):
        return Section(
            "divergence", "Two-dog divergence", intro, (Panel("Divergence", "", note=missing("eval/divergence.parquet")),)
        )
    names = {}
    if nonempty(dog):
        names = dict(zip(dog["dog_id"].astype(str), dog["dog_name"].astype(str)))
    series = []
    for _, g in div.groupby("pair", sort=True):
        g = g.sort_values("step")
        a, b = str(g["dog_a"].iloc[0]), str(g["dog_b"].iloc[0])
        series.append(Line(f"{names.get(a, a)} vs {names.get(b, b)}", ints(g["step"]), sigs(g["distance"])))
    spec = LinesSpec("fig-divergence", series, xlabel="race (step)", ylabel="||h_a - h_b||", height=340)
    panel = Panel("Distance between two dogs' states", EXPLAIN["divergence"], spec)
    return Section("divergence", "Two-dog divergence", intro, (panel,))
