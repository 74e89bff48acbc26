"""Resilience to data issues: the latest-race test first (early vs late, held out and within the same dogs),
then every kind at relative severity, and the two-dog divergence."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gruviz_core.resilience import latest_race_summary
from gruviz_core.results import RunResults
from reports.model import GroupedPanel, GroupedSeries, GroupedSpec, Line, LinesSpec, Panel, Section, Table, sig
from reports.prose import EXPLAIN, INTRO, VERDICT_RES
from reports.sections.common import ints, missing, nonempty, sigs

__all__ = ["resilience_section", "divergence_section", "latest_race_verdict"]

_TITLE = "Resilience to data issues"
_BUCKET_COLOURS = ("#be123c", "#d97706", "#1e3a8a", "#64748b")
_KIND_COLOURS = {"drop_last": "#be123c", "blank_last": "#d97706", "noise_last": "#1e3a8a"}
_KIND_WORDS = {"drop_last": "latest race dropped", "blank_last": "its values blanked", "noise_last": "noise on its values"}
_MEASURE_WORDS = {"flip_rate": "top-pick flip rate", "abs_dlogp": "|change in log p|", "kl": "KL before || after",
                  "state_divergence": "state divergence", "d_nll": "change in race NLL (harm)"}
_WITHIN_WORDS = {"early more": "the early ones move more", "late more": "the late ones move more",
                 "no clear difference": "no clear difference", "too few for a reading": "too few dogs for a reading"}


def resilience_section(results: RunResults) -> Section:
    """The latest-race test (held out and same dogs), sensitivity by step, every kind by step, the tables."""
    res, con = results.resilience, results.resilience_contrast
    intro = INTRO["resilience"]
    if not nonempty(res):
        panels = [Panel("Resilience", "", note=missing("eval/resilience.parquet"))]
        return Section("resilience", _TITLE, intro, tuple(panels))
    out = []
    if nonempty(con):
        out.append(_latest_panel(con))
    else:
        out.append(Panel("The latest race: early vs late", "", note=missing("eval/resilience_contrast.parquet")))
    by_step = _by_step_panel(res)
    if by_step is not None:
        out.append(by_step)
    out.append(_kinds_panel(res))
    if nonempty(con):
        out.append(_contrast_panel(con))
    out.append(_numbers_panel(res))
    return Section("resilience", _TITLE, intro, tuple(out))


def latest_race_verdict(summary: dict) -> str:
    """The latest-race test in sentences, every number from `gruviz_core.resilience.latest_race_summary`:
    sensitivity (flips) and harm (race NLL) of held-out targets, then the same dogs' flips."""
    held, within = summary.get("held_out", {}), summary.get("within_dog", {})
    out = []
    for measure, key in (("flip_rate", "sensitivity"), ("d_nll", "harm")):
        e = held.get(measure)
        if e is None or e["reading"] == "too few for a reading" or e["diff"] is None:
            continue
        out.append(VERDICT_RES[f"{key}:{e['reading']}"].format(**_fmt(e)))
    e = within.get("flip_rate")
    if e is not None and e["diff"] is not None and e["lo"] is not None:
        out.append(VERDICT_RES["within"].format(n=e["n_dogs_early"], word=_WITHIN_WORDS[e["reading"]], **_fmt(e)))
    return " ".join(out) if out else VERDICT_RES["none"]


def _fmt(e: dict) -> dict:
    return {"e": e["early"], "l": e["late"], "d": e["diff"], "lo": e["lo"], "hi": e["hi"]}


def _latest_panel(con: pd.DataFrame) -> Panel:
    rows = []
    c = con[(con["perturbation"] == "drop_last") & con["scope"].isin(["dog", "within-dog"])]  # the others: below
    order = {"dog": 0, "within-dog": 1}
    kinds = {"drop_last": 0, "blank_last": 1, "noise_last": 2}
    measures = {m: i for i, m in enumerate(_MEASURE_WORDS)}
    c = c.assign(_o=c["scope"].map(order), _k=c["perturbation"].map(kinds).fillna(9),
                 _m=c["measure"].map(measures).fillna(9)).sort_values(["_o", "_k", "_m"], kind="stable")
    for r in c.itertuples(index=False):
        rows.append(("held out" if r.scope == "dog" else "same dogs, all races",
                     _KIND_WORDS.get(r.perturbation, r.perturbation), _MEASURE_WORDS.get(r.measure, r.measure),
                     sig(r.value_a), sig(r.value_b), sig(r.diff), f"{sig(r.lo)} to {sig(r.hi)}",
                     f"{int(r.n_dogs_a):,} / {int(r.n_dogs_b):,}", r.reading))
    cols = ("races", "damage", "measure", "early (t<=5)", "late (t>=16)", "early - late", "95% interval",
            "dogs early / late", "reading")
    b = int(con["n_boot"].max()) if len(con) else 0
    verdict = latest_race_verdict(latest_race_summary(con))
    return Panel("The latest race: early vs late", f"{verdict} {EXPLAIN['resilience-latest']} B = {b:,}.",
                 table=Table(cols, tuple(rows)))


def _by_step_panel(res: pd.DataFrame) -> Panel | None:
    d = res[(res["scope"] == "within-dog") & res["bucket"].str.startswith("t=") & (res["status"] == "ok")]
    if d.empty:
        return None
    steps = sorted(d["bucket"].unique(), key=lambda b: int(b[2:]))
    kinds = [k for k in _KIND_COLOURS if k in set(d["perturbation"])]
    g = d.set_index(["perturbation", "bucket"])
    panels = []
    for m in ("flip_rate", "abs_dlogp", "state_divergence"):
        series = [GroupedSeries(_KIND_WORDS[k], _KIND_COLOURS[k],
                                *[sigs(_get(g, (k, t), c) for t in steps) for c in (m, f"{m}_lo", f"{m}_hi")])
                  for k in kinds]
        panels.append(GroupedPanel(_MEASURE_WORDS[m], steps, series))
    n = int(d["n_dogs"].max())
    spec = GroupedSpec("fig-resilience-by-step", panels, "points", height=360)
    return Panel(f"Sensitivity to the latest race by step, the same {n:,} dogs", EXPLAIN["resilience-by-step"], spec)


def _kinds_panel(res: pd.DataFrame) -> Panel:
    d = res[(res["scope"] == "dog") & (res["bucket"] != "all")]
    d = d[d["level"] == d.groupby("perturbation")["level"].transform("max")]
    kinds = list(dict.fromkeys(d["perturbation"].astype(str)))
    buckets = [b for b in d["bucket"].drop_duplicates()]
    g = d.set_index(["perturbation", "bucket"])
    panels = []
    for col in ("d_nll", "abs_dlogp"):
        series = [GroupedSeries(b, _BUCKET_COLOURS[i % len(_BUCKET_COLOURS)],
                                *[sigs(_get(g, (k, b), c) for k in kinds) for c in (col, f"{col}_lo", f"{col}_hi")])
                  for i, b in enumerate(buckets)]
        panels.append(GroupedPanel(_MEASURE_WORDS[col], kinds, series))
    spec = GroupedSpec("fig-resilience-kinds", panels, "bars", height=380)
    return Panel("Every kind of damage by target step (held out, strongest severity)", EXPLAIN["resilience-kinds"],
                 spec)


def _get(g: pd.DataFrame, key: tuple, col: str):
    try:
        v = g.loc[key, col]
    except KeyError:
        return None
    return v.iloc[0] if isinstance(v, pd.Series) else v


def _contrast_panel(con: pd.DataFrame) -> Panel:
    rows = []
    for r in con.sort_values(["scope", "family", "perturbation", "level", "measure"], kind="stable").itertuples(index=False):
        rows.append((r.scope, r.perturbation, sig(r.severity), r.measure, r.role, sig(r.value_a), sig(r.value_b),
                     sig(r.diff), f"{sig(r.lo)} to {sig(r.hi)}", int(r.n_dogs_a), int(r.n_dogs_b), r.reading))
    cols = ("scope", "kind", "severity", "measure", "sensitivity or harm", "early", "late", "early - late",
            "95% interval", "dogs early", "dogs late", "reading")
    return Panel("Early vs late for every kind", EXPLAIN["resilience-contrast"], table=Table(cols, tuple(rows)),
                 collapsed=True)


def _numbers_panel(res: pd.DataFrame) -> Panel:
    full = res.sort_values(["scope", "family", "perturbation", "level", "bucket"], kind="stable")
    rows = []
    for r in full.itertuples(index=False):
        rows.append((r.scope, r.perturbation, sig(r.severity), r.severity_unit, r.bucket, r.status, int(r.n_cases),
                     int(r.n_changed), int(r.n_duplicate), sig(r.damage_share),
                     _ci(r.d_nll, r.d_nll_lo, r.d_nll_hi), _ci(r.flip_rate, r.flip_rate_lo, r.flip_rate_hi),
                     _ci(r.abs_dlogp, r.abs_dlogp_lo, r.abs_dlogp_hi), _ci(r.kl, r.kl_lo, r.kl_hi),
                     _ci(r.state_divergence, r.state_divergence_lo, r.state_divergence_hi)))
    cols = ("scope", "kind", "severity", "unit", "target step", "status", "cases", "changed", "duplicates",
            "share of history", "change in race NLL [95%]", "flip rate [95%]", "|change in log p| [95%]",
            "KL [95%]", "state divergence [95%]")
    return Panel("All resilience numbers", EXPLAIN["resilience-all"], table=Table(cols, tuple(rows)), collapsed=True)


def _ci(v, lo, hi) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{sig(v)} [{sig(lo)}, {sig(hi)}]"


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
