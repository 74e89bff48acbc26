"""Resilience to data issues (perturbations at several target steps, two scopes) and the two-dog divergence."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gruviz_core.results import RunResults
from reports.model import GroupedPanel, GroupedSeries, GroupedSpec, Line, LinesSpec, Panel, Section, Table, sig
from reports.prose import EXPLAIN, INTRO, VERDICT_RES
from reports.sections.common import ints, missing, nonempty, sigs

__all__ = ["resilience_section", "divergence_section"]

_TITLE = "Resilience to data issues"
_BUCKET_COLOURS = ("#be123c", "#d97706", "#1e3a8a", "#64748b")
_SCOPES = (("dog", "this dog's data corrupted"), ("feed", "feed fault: every runner of the race"))


def resilience_section(results: RunResults) -> Section:
    """How much damaged histories move race predictions and states, by target step, kind and severity."""
    res, con = results.resilience, results.resilience_contrast
    intro = INTRO["resilience"]
    no_con = Panel("Early vs late within each kind", "", note=missing("eval/resilience_contrast.parquet"))
    if not nonempty(res):
        panels = [Panel("Resilience", "", note=missing("eval/resilience.parquet"))]
        return Section("resilience", _TITLE, intro, tuple(panels + ([] if nonempty(con) else [no_con])))
    flat = res[res["plateau"] == "all"]
    strongest = flat[flat["level"] == flat.groupby(["scope", "perturbation"])["level"].transform("max")]
    out = [_bucket_panel(strongest, "d_nll", "change in race NLL"), _bucket_panel(strongest, "flip_rate", "top-pick flip rate")]
    out.append(_contrast_panel(con) if nonempty(con) else no_con)
    out.append(_numbers_panel(res))
    return Section("resilience", _TITLE, intro, tuple(out))


def _bucket_panel(df: pd.DataFrame, col: str, what: str) -> Panel:
    buckets = [b for b in df["bucket"].drop_duplicates() if b != "all"]
    panels = []
    for scope, label in _SCOPES:
        d = df[(df["scope"] == scope) & (df["bucket"] != "all")]
        if d.empty:
            continue
        kinds = sorted(d["perturbation"].astype(str).unique())
        g = d.set_index(["perturbation", "bucket"])
        series = [
            GroupedSeries(b, _BUCKET_COLOURS[i % len(_BUCKET_COLOURS)],
                          *[sigs(_get(g, (k, b), c) for k in kinds) for c in (col, f"{col}_lo", f"{col}_hi")])
            for i, b in enumerate(buckets)
        ]
        panels.append(GroupedPanel(f"{what}: {label}", kinds, series))
    spec = GroupedSpec(f"fig-resilience-{col.replace('_', '-')}", panels, "bars", height=380)
    return Panel(f"{what.capitalize()} by target step (strongest severity)", EXPLAIN[f"resilience-{col}"], spec)


def _get(g: pd.DataFrame, key: tuple, col: str):
    try:
        v = g.loc[key, col]
    except KeyError:
        return None
    return v.iloc[0] if isinstance(v, pd.Series) else v


def _contrast_panel(con: pd.DataFrame) -> Panel:
    strongest = con[con["level"] == con.groupby(["scope", "perturbation"])["level"].transform("max")]
    rows = []
    for r in strongest.sort_values(["contrast", "scope", "perturbation", "measure"]).itertuples(index=False):
        rows.append((r.contrast, r.scope, r.perturbation, sig(r.severity), r.measure, sig(r.value_a), sig(r.value_b),
                     sig(r.diff), f"{sig(r.lo)} to {sig(r.hi)}", int(r.n_a), int(r.n_b), _word(r.lo, r.hi)))
    cols = ("contrast", "scope", "kind", "severity", "measure", "first group", "second group", "difference",
            "95% interval", "n first", "n second", "reading")
    return Panel("Early vs late within each kind", EXPLAIN["resilience-contrast"] + " " + _verdict(strongest),
                 table=Table(cols, tuple(rows)))


def _word(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "too few"
    return "first moves more" if lo > 0 else ("second moves more" if hi < 0 else "no clear difference")


def _verdict(con: pd.DataFrame) -> str:
    """Whether the notebook's hypothesis (early steps less resilient) holds, from the race-NLL contrasts."""
    c = con[(con["contrast"] == "early - late") & (con["measure"] == "d_nll") & (con["scope"] == "dog")]
    c = c[np.isfinite(c["lo"]) & np.isfinite(c["hi"])]
    if c.empty:
        return VERDICT_RES["none"]
    up, down = int((c["lo"] > 0).sum()), int((c["hi"] < 0).sum())
    ratio = float(np.nanmedian(c["value_a"] / c["value_b"].where(c["value_b"].abs() > 1e-12)))
    key = "holds" if up > down and up * 2 >= len(c) else ("refuted" if down > up and down * 2 >= len(c) else "mixed")
    return VERDICT_RES[key].format(up=up, down=down, n=len(c), ratio=ratio)


def _numbers_panel(res: pd.DataFrame) -> Panel:
    full = res.sort_values(["scope", "perturbation", "level", "bucket", "plateau"], kind="stable")
    rows = []
    for r in full.itertuples(index=False):
        rows.append((r.scope, r.perturbation, sig(r.severity), r.severity_unit, r.bucket, r.plateau, r.status,
                     int(r.n_cases), sig(r.changed_share), _ci(r.d_nll, r.d_nll_lo, r.d_nll_hi),
                     _ci(r.flip_rate, r.flip_rate_lo, r.flip_rate_hi),
                     _ci(r.state_divergence, r.state_divergence_lo, r.state_divergence_hi)))
    cols = ("scope", "kind", "severity", "unit", "target step", "plateau by t-1", "status", "cases",
            "share changed", "change in race NLL [95%]", "flip rate [95%]", "state divergence [95%]")
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
