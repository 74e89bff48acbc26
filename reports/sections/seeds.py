"""Reproducibility across seeds: CKA between seeds' states, prediction spread, churn and label agreement."""

from __future__ import annotations

import pandas as pd

from gruviz_core.results import RunResults
from reports.model import Line, Lines2Spec, LinesPanel, Panel, Section, Table, sig
from reports.prose import CKA_READING, EXPLAIN, INTRO
from reports.sections.common import ints, missing, nonempty, sigs

__all__ = ["repro_section"]

_KNOWN = ("prob_spread", "top_pick_churn", "fleiss_kappa", "agreement")
_PAIR_COLOURS = ("#1e3a8a", "#be123c", "#047857", "#d97706", "#7c3aed", "#0891b2")


def repro_section(results: RunResults) -> Section:
    """Would another training seed tell the same story?"""
    panels = (_cka_panel(results.cka), _repro_panel(results.repro))
    return Section("reproducibility", "Reproducibility across seeds", INTRO["reproducibility"], panels)


def _cka_panel(cka: pd.DataFrame | None) -> Panel:
    title, explain = "Debiased CKA between seeds by race", EXPLAIN["cka"]
    if not nonempty(cka):
        return Panel(title, explain, note=missing("eval/cka.parquet"))
    cka_lines, n_lines = [], []
    for i, ((a, b), g) in enumerate(cka.groupby(["seed_a", "seed_b"], sort=True)):
        g = g.sort_values("step")
        c = _PAIR_COLOURS[i % len(_PAIR_COLOURS)]
        x, name = ints(g["step"]), f"seed {int(a)} vs {int(b)}"
        text = [f"n={int(n)}, 95% {lo:.3g} to {hi:.3g}" for n, lo, hi in zip(g["n"], g["lo"], g["hi"])]
        cka_lines.append(Line(name, x, sigs(g["cka"]), color=c, mode="lines+markers", text=text))
        cka_lines.append(Line(f"{name}: dogs shuffled (baseline)", x, sigs(g["cka_perm"]), color=c, dash="dot"))
        if i == 0:
            n_lines.append(Line("dogs compared (n)", x, sigs(g["n"]), color="#334155", mode="lines+markers"))
    spec = Lines2Spec("fig-cka", [LinesPanel("debiased linear CKA", cka_lines, "CKA"),
                                  LinesPanel("dogs compared at each race", n_lines, "n")], xlabel="race (step)")
    return Panel(title, explain + " " + _cka_reading(cka), spec)


def _cka_reading(cka: pd.DataFrame) -> str:
    early, late = cka[cka["step"] <= 5], cka[cka["step"] >= 20]
    if early.empty or late.empty:
        return ""
    rising = bool(late["lo"].min() > early["hi"].max())
    return CKA_READING["rising" if rising else "flat"].format(
        early=float(early["cka"].mean()), late=float(late["cka"].mean()), n=int(cka["n"].min()),
        perm=float(cka["cka_perm"].abs().max()))


def _repro_panel(rep: pd.DataFrame | None) -> Panel:
    title, explain = "Prediction spread, churn and agreement", EXPLAIN["repro"]
    if not nonempty(rep):
        return Panel(title, explain, note=missing("eval/repro.parquet"))
    order = {m: i for i, m in enumerate(_KNOWN)}
    rep = rep.assign(_o=rep["metric"].map(order).fillna(len(order))).sort_values(["_o", "scope"], kind="stable")
    rows = tuple((str(r.metric), str(r.scope), sig(r.value), int(r.n)) for r in rep.itertuples(index=False))
    return Panel(title, explain, table=Table(("metric", "scope", "value", "n"), rows))
