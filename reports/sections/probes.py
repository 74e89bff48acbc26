"""What the state knows: the probe atlas (eval/probes, eval/unit_atlas, eval/probe.json) as a report section."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from gruviz_core.probes import QUANTITIES, seed_agreement
from gruviz_core.results import RunResults
from reports.model import Panel, Section, Table, sig
from reports.sections.common import missing, nonempty, sigs
from reports.specs import GroupedPanel, GroupedSeries, GroupedSpec, Line, Lines2Spec, LinesPanel, MatrixSpec

__all__ = ["probes_section", "UNIT_THRESHOLD"]

UNIT_THRESHOLD = 0.5
"""|Spearman rho| at which a unit is said to track a quantity."""

_INTRO = (
    "Which quantities a modeller can name does the hidden state hold? A linear probe reads each quantity off the "
    "state after a race (ridge regression, logistic for yes/no quantities), fitted on some dogs and scored on "
    "others. Beside each score is a control task: the same probe on the quantity shuffled among dogs at the same "
    "race count, which is what race count alone would let it read. Selectivity (score minus control) is what the "
    "state holds about the dog itself.")
_DOC = {q.name: q.doc for q in QUANTITIES}
_ORDER = {q.name: i for i, q in enumerate(QUANTITIES)}
_BUCKETS = ("1", "2-5", "6-10", "11-20", "21+")
_OWN_CONTROL = "its own control (a function of race count, which the control keeps); selectivity undefined"
"""What the table says of a quantity that race count alone fixes (starts): its control scores exactly as it does."""
_COLOURS = ("#1e3a8a", "#be123c", "#047857", "#d97706", "#7c3aed", "#0891b2", "#4b5563", "#a16207", "#db2777",
            "#0f766e", "#65a30d", "#9333ea", "#ea580c")


def probes_section(results: RunResults) -> Section:
    """The probe atlas: scores with the control per quantity, by race count, the units x quantities map, and the
    leading quantities in words."""
    title = "What the state knows"
    record: Mapping[str, Any] = results.probe_record or {}
    if record.get("error"):
        note = f"Probe atlas not computed: {record['error']}"
        return Section("probes", title, _INTRO, (Panel("Probe atlas", "", note=note),))
    probes, atlas = results.probes, results.unit_atlas
    if not nonempty(probes):
        return Section("probes", title, _INTRO, (Panel("Probe atlas", "", note=missing("eval/probes.parquet")),))
    layer = int(probes["layer"].max())
    top = probes[probes["layer"] == layer]
    panels = (
        _summary_panel(top, atlas, record, layer),
        _scores_panel(top, layer),
        _buckets_panel(top, layer),
        _units_panel(atlas, layer),
    )
    return Section("probes", title, _INTRO, panels)


def _seed0(top: pd.DataFrame) -> pd.DataFrame:
    return top[top["seed"] == top["seed"].min()]


def _scored(top: pd.DataFrame) -> pd.DataFrame:
    """Seed 0's rows on all races with a score, in display order."""
    a = _seed0(top)
    a = a[(a["bucket"] == "all") & np.isfinite(a["score"].astype(float))]
    return a.assign(_o=a["quantity"].map(_ORDER)).sort_values("_o")


def _summary_panel(top: pd.DataFrame, atlas: pd.DataFrame | None, record: Mapping[str, Any], layer: int) -> Panel:
    a = _scored(top)
    agree = seed_agreement(top, atlas if atlas is not None else pd.DataFrame(), threshold=UNIT_THRESHOLD)
    agree = agree.set_index("quantity") if len(agree) else agree
    best = _best_units(atlas, int(top["seed"].min()), layer)
    rows = []
    own = a.apply(_own_control, axis=1).to_numpy(bool) if len(a) else np.zeros(0, bool)
    ranked = pd.concat([_ranked(a[~own]), a[own]])
    for r in ranked.itertuples(index=False):
        g = agree.loc[r.quantity] if len(agree) and r.quantity in agree.index else None
        unit = best.get(r.quantity)
        mine = _own_control(r)
        rows.append((
            _DOC.get(r.quantity, r.quantity), "AUC" if r.metric == "auc" else "R²", sig(r.score), sig(r.lo), sig(r.hi),
            sig(r.control), _OWN_CONTROL if mine else sig(r.selectivity),
            None if mine else f"{sig(r.sel_lo)} to {sig(r.sel_hi)}",
            None if unit is None else f"unit {unit[0]} (rho {sig(unit[1], 2)})",
            None if g is None else f"{int(g['seeds_with_unit'])} of {int(g['n_seeds'])}",
            None if g is None else f"{sig(g['score_min'], 3)} to {sig(g['score_max'], 3)}",
        ))
    absent = [str(q) for q in record.get("absent") or top.loc[top["note"].astype(str).str.startswith("absent"),
                                                                "quantity"].unique()]
    explain = " ".join(_sentences(a, best)) or "No quantity could be scored."
    if absent:
        explain += " Not in this source (absent, not zero): " + ", ".join(_DOC.get(q, q) for q in absent) + "."
    if record.get("n_dogs") is not None:
        explain += (f" Probed {int(record['n_dogs']):,} of {int(record.get('of_dogs', record['n_dogs'])):,} dogs "
                    f"({int(record.get('n_rows', 0)):,} races), {int(record.get('seeds', 1))} seed(s), layer {layer}, "
                    f"in {float(record.get('seconds', 0.0)):.1f} s.")
    table = Table(("quantity", "score", "value", "95% lo", "95% hi", "control", "selectivity", "selectivity 95%",
                   "best unit (seed 0)", f"seeds with a unit |rho| >= {UNIT_THRESHOLD}", "score across seeds"),
                  tuple(rows))
    return Panel("What the state holds, best first", explain, table=table)


def _ranked(a: pd.DataFrame) -> pd.DataFrame:
    """Most selective first, on one scale: an AUC's selectivity doubled (as a Gini difference, 0 to 1 like R²), so a
    yes/no quantity held perfectly (AUC 1 against 0.5) ranks with a continuous one held perfectly (R² 1 against 0)."""
    key = a["selectivity"].astype(float) * np.where(a["metric"] == "auc", 2.0, 1.0)
    return a.assign(_k=key).sort_values("_k", ascending=False).drop(columns="_k")


def _own_control(r) -> bool:
    """Whether race count alone fixes the quantity (starts): the control task then is the task, and selectivity is
    0 by construction, not a finding."""
    return r.quantity == "starts" or (r.control == r.score and r.sel_lo == 0 and r.sel_hi == 0)


def _sentences(a: pd.DataFrame, best: Mapping[str, tuple[int, float]]) -> list[str]:
    """One sentence per leading quantity (the three most selective) and per trailing one (the three least); a
    quantity that is its own control is in neither."""
    if not len(a):
        return []
    ranked = _ranked(a[~a.apply(_own_control, axis=1).to_numpy(bool)])
    lead = list(ranked.head(3).itertuples(index=False))
    tail = [r for r in ranked.tail(3).itertuples(index=False) if r.quantity not in {x.quantity for x in lead}]
    out = []
    for r in lead:
        unit = best.get(r.quantity)
        where = f"; unit {unit[0]} tracks it most closely (rho {sig(unit[1], 2)})" if unit else ""
        held = "holds" if r.sel_lo > 0 else "may hold"
        out.append(f"The state {held} {_DOC.get(r.quantity, r.quantity)}: {_metric(r)} {sig(r.score, 3)} "
                   f"(95% {sig(r.lo, 3)} to {sig(r.hi, 3)}) against {sig(r.control, 3)} on the control task, "
                   f"a selectivity of {sig(r.selectivity, 3)}{where}.")
    for r in reversed(tail):
        if r.sel_lo <= 0:
            what = (f"It holds no more of {_DOC.get(r.quantity, r.quantity)} than race count alone gives (the "
                    "selectivity interval includes 0)")
        else:
            what = (f"It holds the least of {_DOC.get(r.quantity, r.quantity)} beyond race count, though more than "
                    "the control")
        out.append(f"{what}: {_metric(r)} {sig(r.score, 3)} against {sig(r.control, 3)} on the control task "
                   f"(selectivity {sig(r.selectivity, 3)}, 95% {sig(r.sel_lo, 3)} to {sig(r.sel_hi, 3)}).")
    return out


def _metric(r) -> str:
    return "AUC" if r.metric == "auc" else "out-of-sample R²"


def _best_units(atlas: pd.DataFrame | None, seed: int, layer: int) -> dict[str, tuple[int, float]]:
    """{quantity: (the unit with the largest |rho|, its rho)} of one seed and layer."""
    if not nonempty(atlas):
        return {}
    a = atlas[(atlas["seed"] == seed) & (atlas["layer"] == layer) & (atlas["rank"] == 1)]
    return {str(q): (int(u), float(r)) for q, u, r in zip(a["quantity"], a["unit"], a["rho"])}


def _scores_panel(top: pd.DataFrame, layer: int) -> Panel:
    a = _scored(top)
    panels = []
    for metric, name in (("r2", "out-of-sample R² (continuous quantities)"), ("auc", "AUC (yes/no quantities)")):
        m = a[a["metric"] == metric]
        if not len(m):
            continue
        cats = [_DOC.get(q, q) for q in m["quantity"]]
        panels.append(GroupedPanel(name, cats, [
            GroupedSeries("probe", "#1e3a8a", sigs(m["score"]), sigs(m["lo"]), sigs(m["hi"])),
            GroupedSeries("control task (shuffled within race count)", "#9ca3af", sigs(m["control"]),
                          sigs(m["control_lo"]), sigs(m["control_hi"])),
        ]))
    explain = (f"Seed {int(top['seed'].min())}, layer {layer}, all races of the probed dogs; whiskers are 95% intervals "
               "over dogs (bootstrap). The gap between a probe and its control is its selectivity.")
    if not panels:
        return Panel("Probe score and control per quantity", explain,
                     note=f"no quantity has a finite probe score on seed {int(top['seed'].min())}, layer {layer}")
    return Panel("Probe score and control per quantity", explain, GroupedSpec("fig-probes", panels, mode="points",
                                                                              height=460))


def _buckets_panel(top: pd.DataFrame, layer: int) -> Panel:
    b = _seed0(top)
    b = b[b["bucket"].isin(_BUCKETS) & np.isfinite(b["score"].astype(float))]
    panels = []
    for metric, name, ylabel in (("r2", "out-of-sample R²", "R²"), ("auc", "AUC", "AUC")):
        lines = []
        for i, (q, g) in enumerate(sorted(b[b["metric"] == metric].groupby("quantity"), key=lambda t: _ORDER.get(t[0], 99))):
            g = g.set_index("bucket").reindex(list(_BUCKETS))
            text = [f"95% {sig(lo, 3)} to {sig(hi, 3)}; control {sig(c, 3)}; {int(n) if n == n else 0} dogs"
                    for lo, hi, c, n in zip(g["lo"], g["hi"], g["control"], g["n_dogs"])]
            lines.append(Line(_DOC.get(q, q), list(_BUCKETS), sigs(g["score"]), color=_COLOURS[i % len(_COLOURS)],
                              mode="lines+markers", text=text))
        if lines:
            panels.append(LinesPanel(name, lines, ylabel))
    if not panels:
        return Panel("By race count", "", note="No quantity could be scored within a race-count bucket.")
    spec = Lines2Spec("fig-probes-buckets", panels, xlabel="races run (bucket)", height=460)
    explain = ("The same probes scored within each race-count bucket (the baseline is the bucket's own mean): where "
               "a line rises, the state learns the quantity as the dog's history grows. Hover for the interval and "
               "the control.")
    return Panel("By race count", explain, spec)


def _units_panel(atlas: pd.DataFrame | None, layer: int) -> Panel:
    title = "Units x quantities (Spearman rho)"
    if not nonempty(atlas):
        return Panel(title, "", note=missing("eval/unit_atlas.parquet"))
    seed = int(atlas["seed"].min())
    a = atlas[(atlas["seed"] == seed) & (atlas["layer"] == layer)]
    m = a.pivot(index="unit", columns="quantity", values="rho")
    m = m[sorted(m.columns, key=lambda q: _ORDER.get(q, 99))]
    absval = m.abs().fillna(-1.0)
    best_q = absval.idxmax(axis=1)
    order = sorted(m.index, key=lambda u: (list(m.columns).index(best_q[u]), -absval.loc[u].max()))
    m = m.loc[order]
    ylabels = [f"unit {u}: {best_q[u]}" for u in m.index]
    spec = MatrixSpec("fig-unit-atlas", [sigs(row, 3) for row in m.to_numpy()], [_DOC.get(q, q) for q in m.columns],
                      ylabels, "rho", xlabel="quantity", ylabel="unit (grouped by what it tracks best)",
                      height=max(380, 14 * len(m) + 200))
    explain = (f"Seed {seed}, layer {layer}: each unit's rank correlation with each quantity over the probed rows; "
               "units are grouped by the quantity they track best, strongest first. A single unit can track a "
               "quantity that the whole state holds only spread out, and the reverse.")
    return Panel(title, explain, spec)
