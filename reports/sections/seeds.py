"""Reproducibility across seeds: spread and churn by race count and status, the ensemble against a single seed,
agreement on status at fixed races (or why it is not estimable), and CKA as one health line."""

from __future__ import annotations

import math

import pandas as pd

from gruviz_core.results import RunResults
from reports.model import GroupedPanel, GroupedSeries, GroupedSpec, Panel, Section, Table, sig
from reports.prose import EXPLAIN, INTRO, REPRO_READING
from reports.sections.common import colour, missing, nonempty, sigs

__all__ = ["repro_section", "NOT_ESTIMABLE"]

NOT_ESTIMABLE = "not estimable"
"""What a kappa cell says instead of a number when one label covers nearly every dog."""

CKA_HEALTHY = 0.8
"""Lowest CKA at which the health line says the seeds learn the same representation."""

_COUNTS = ("1", "2-5", "6-10", "11-20", "21-40", "41+")
_STATUSES = ("settled", "settling", "undecided")
_WHAT = {"top_pick_churn": "top-pick churn", "prob_spread": "spread of p (SD)", "rel_spread": "spread / mean p"}


def repro_section(results: RunResults) -> Section:
    """Would another training seed tell the same story?"""
    rep = results.repro
    if not nonempty(rep):
        note = missing("eval/repro.parquet")
        panels = tuple(Panel(t, "", note=note) for t in ("Churn and spread by race count and status",
                                                          "The ensemble against a single seed",
                                                          "Agreement on status at fixed races"))
    else:
        panels = (_churn_panel(rep), _ensemble_panel(rep), _kappa_panel(rep))
    return Section("reproducibility", "Reproducibility across seeds", INTRO["reproducibility"],
                   (*panels, _cka_panel(results.cka)))


def _rows(rep: pd.DataFrame, metric: str, by: str) -> dict[str, pd.Series]:
    sub = rep[(rep["metric"] == metric) & (rep["by"] == by)]
    return {str(r["scope"]): r for _, r in sub.iterrows()}


def _churn_panel(rep: pd.DataFrame) -> Panel:
    title = "Churn and spread by race count and status"
    panels = []
    for metric in ("top_pick_churn", "prob_spread"):
        for by, cats in (("race_count", _COUNTS), ("status", _STATUSES)):
            got = _rows(rep, metric, by)
            cats = [c for c in cats if c in got]
            if not cats:
                continue
            rows = [got[c] for c in cats]
            series = GroupedSeries(_WHAT[metric], colour("all"), sigs(r["value"] for r in rows),
                                   sigs(r["lo"] for r in rows), sigs(r["hi"] for r in rows))
            label = [f"{c} (n={int(r['n']):,})" for c, r in zip(cats, rows)]
            what = "race count" if by == "race_count" else "status (seed 0)"
            panels.append(GroupedPanel(f"{_WHAT[metric]} by {what}", label, [series]))
    body = rep[rep["metric"].isin(list(_WHAT))]
    table = Table(("measure", "grouped by", "group", "value", "95% lo", "95% hi", "n", "of", "note"), tuple(
        (_WHAT[str(r.metric)], str(r.by).replace("_", " "), str(r.scope), sig(r.value), sig(r.lo), sig(r.hi),
         int(r.n), str(r.n_of), str(r.note)) for r in body.itertuples(index=False)))
    explain = EXPLAIN["repro"] + " " + _churn_reading(rep)
    spec = GroupedSpec("fig-repro", panels, "points", height=520) if panels else None
    return Panel(title, explain.strip(), spec, table, collapsed=True)


def _churn_reading(rep: pd.DataFrame) -> str:
    churn, spread, rel = (_rows(rep, m, "all").get("all") for m in ("top_pick_churn", "prob_spread", "rel_spread"))
    if churn is None or spread is None or not _finite(churn["value"], spread["value"]):
        return ""
    out = REPRO_READING["churn"].format(churn=churn["value"], races=int(churn["n"]), spread=spread["value"],
                                        rel=rel["value"] if rel is not None else math.nan)
    by_count = _rows(rep, "top_pick_churn", "race_count")
    if "1" in by_count and "41+" in by_count and _finite(by_count["1"]["value"], by_count["41+"]["value"]):
        out += REPRO_READING["churn-count"].format(first=by_count["1"]["value"], last=by_count["41+"]["value"])
    dc = _rows(rep, "top_pick_churn", "status").get("settled - settling")
    ds = _rows(rep, "prob_spread", "status").get("settled - settling")
    if dc is not None and ds is not None and _finite(dc["value"], dc["lo"], dc["hi"], ds["value"], ds["lo"], ds["hi"]):
        signs = {_direction(r) for r in (dc, ds)} - {0}
        reading = ("status-none" if not signs else "status-mixed" if len(signs) > 1
                   else "status-better" if signs == {-1} else "status-worse")
        out += REPRO_READING["churn-status"].format(
            churn=dc["value"], churn_lo=dc["lo"], churn_hi=dc["hi"], spread=ds["value"], spread_lo=ds["lo"],
            spread_hi=ds["hi"], reading=REPRO_READING[reading])
    return out


def _direction(r: pd.Series) -> int:
    """-1 when the interval is below 0 (settled agree more), +1 above, 0 when it includes 0."""
    return -1 if r["hi"] < 0 else 1 if r["lo"] > 0 else 0


def _ensemble_panel(rep: pd.DataFrame) -> Panel:
    title = "The ensemble against a single seed"
    got = _rows(rep, "race_nll", "model")
    if not got:
        return Panel(title, EXPLAIN["repro-ensemble"], note="No race NLL by seed in eval/repro.parquet.")
    rows = tuple((scope, sig(r["value"], 5), sig(r["lo"]), sig(r["hi"]), int(r["n"])) for scope, r in got.items())
    seeds = [s for s in got if s.startswith("seed ")]
    explain = EXPLAIN["repro-ensemble"]
    need = ("ensemble", "mean seed", "ensemble - mean seed")
    if seeds and all(k in got for k in need) and _finite(*(got[k]["value"] for k in need)):
        d = got["ensemble - mean seed"]
        explain += " " + REPRO_READING["ensemble"].format(
            k=len(seeds), ens=got["ensemble"]["value"], mean=got["mean seed"]["value"],
            seed0=got[seeds[0]]["value"], diff=d["value"], lo=d["lo"], hi=d["hi"], races=int(d["n"]),
            reading=REPRO_READING["ensemble-gain" if _finite(d["hi"]) and d["hi"] < 0 else "ensemble-none"])
    return Panel(title, explain, table=Table(("model", "race NLL", "95% lo", "95% hi", "races"), rows))


def _kappa_panel(rep: pd.DataFrame) -> Panel:
    title = "Agreement on status at fixed races"
    kap = rep[rep["metric"] == "fleiss_kappa"].sort_values("step")
    if kap.empty:
        return Panel(title, EXPLAIN["repro-kappa"], note="No status agreement in eval/repro.parquet.")
    agree = rep[rep["metric"] == "agreement"]
    rows, items, none = [], [], []
    for r in kap.itertuples(index=False):
        step = int(r.step)
        per_cat = {str(a.scope): a for a in agree[agree["step"] == r.step].itertuples(index=False)}
        cells = tuple(f"{sig(per_cat[c].value, 3)} (n={int(per_cat[c].n):,})" if c in per_cat else "-"
                      for c in ("settled", "settling"))
        if _finite(r.value):
            rows.append((step, sig(r.value, 3), sig(r.lo, 3), sig(r.hi, 3), int(r.n), *cells, ""))
            items.append(REPRO_READING["kappa-item"].format(kappa=r.value, lo=r.lo, hi=r.hi, step=step, n=int(r.n)))
        else:
            rows.append((step, NOT_ESTIMABLE, None, None, int(r.n), *cells, str(r.note)))
            none.append((step, str(r.note)))
    explain = EXPLAIN["repro-kappa"]
    if items:
        explain += " " + REPRO_READING["kappa"].format(items="; ".join(items))
    if none:
        reason = none[0][1].removeprefix(NOT_ESTIMABLE).lstrip(": ") or "too few dogs"
        where = ("race " if len(none) == 1 else "races ") + ", ".join(str(s) for s, _ in none)
        explain += " " + REPRO_READING["kappa-none"].format(steps=where, reason=reason)
    columns = ("race", "Fleiss' kappa", "95% lo", "95% hi", "dogs", "settled: agreement", "settling: agreement",
               "note")
    return Panel(title, explain, table=Table(columns, tuple(rows)))


def _cka_panel(cka: pd.DataFrame | None) -> Panel:
    title = "Representation health (CKA)"
    if not nonempty(cka):
        return Panel(title, EXPLAIN["cka"], note=missing("eval/cka.parquet"))
    ok = cka[pd.to_numeric(cka["cka"], errors="coerce").notna()]
    if ok.empty:
        return Panel(title, EXPLAIN["cka"], note="CKA was not estimable at any race (too few dogs or constant states).")
    low = ok.loc[ok["cka"].idxmin()]
    fields = dict(low=float(low["cka"]), at=int(low["step"]), first=int(ok["step"].min()), last=int(ok["step"].max()),
                  n_min=int(ok["n"].min()), n_max=int(ok["n"].max()), perm=float(ok["cka_perm"].abs().max()))
    line = REPRO_READING["cka-ok" if fields["low"] >= CKA_HEALTHY else "cka-low"].format(**fields)
    rows = tuple((int(r.step), f"{int(r.seed_a)} vs {int(r.seed_b)}", int(r.n), sig(r.cka, 3), sig(r.lo, 3),
                  sig(r.hi, 3), sig(r.cka_perm, 2)) for r in cka.sort_values(["step", "seed_a", "seed_b"])
                 .itertuples(index=False))
    table = Table(("race", "seeds", "dogs", "CKA", "95% lo", "95% hi", "shuffled"), rows)
    return Panel(title, line + " " + EXPLAIN["cka"], table=table, collapsed=True)


def _finite(*values) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False
