"""The evaluate stage's comparisons under a plateau rule (`plateau-s`): load each seed's per-row summaries
(stats/row_summary), call gruviz_core.saturation, and return the tables and headline parts.

    status_compare  metrics per race-count stratum and status group (seeds pooled), descriptive
    status_effect   main, within_dog, negative_control, composition_*, dose_* (a - b or slope, interval)
    sensitivity     the main comparison at the rule's own point and each move of (w, delta, k)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gruviz_core import comparisons as cmp
from gruviz_core import saturation as sat
from gruviz_core.cohorts import CohortRule
from gruviz_core.results import StatsSummary
from storage.tables import has_table, read_table

__all__ = ["Found", "plateau_comparisons", "effect_frame", "sensitivity_frame", "saturation_headline", "repro_headline"]


@dataclass(frozen=True)
class Found:
    """Tables, headline fields and notes of the comparisons."""

    tables: dict[str, pd.DataFrame]
    headline: dict
    notes: list[str] = field(default_factory=list)


def plateau_comparisons(
    run_dir: Path, summary: StatsSummary, rule: CohortRule, dogs: pd.DataFrame, sel: np.ndarray, probs: np.ndarray,
    market: np.ndarray | None, won: np.ndarray, race: np.ndarray, dog: np.ndarray, weights: np.ndarray, *,
    sizes: cmp.Sizes, grid_boot: int, n_obs: int,
) -> Found:
    """Settled vs settling and its checks on the evaluated runners (rows `sel` of the run; probs (n, K))."""
    layer = summary.cohort_layer
    K = probs.shape[1]
    s, write, move = _summaries(run_dir, layer, K, n_obs)
    offsets = np.concatenate([[0], np.cumsum(dogs["n_steps"].to_numpy(np.int64))])
    step_all = (np.arange(n_obs) - np.repeat(offsets[:-1], np.diff(offsets)) + 1).astype(np.int64)
    debut = dogs["debut_observed"].to_numpy(bool) if "debut_observed" in dogs else np.zeros(len(dogs), bool)
    scope_debut = np.unique(dog[debut[dog]]).size >= sizes.min_dogs
    in_scope = debut[dog] if scope_debut else np.ones(len(dog), bool)
    notes = [] if scope_debut else ["step-indexed comparisons include dogs whose debut is not observed "
                                    "(too few dogs with an observed debut in the period)"]
    rows = sat.RowsBySeed(p=probs, market=market, won=won, race=race, dog=dog, row=np.asarray(sel, np.int64),
                          in_scope=in_scope, s=s, write=write, move=move, step=step_all, offsets=offsets)
    res = sat.compare_saturation(rows, rule, weights, grid_weights=weights[:grid_boot], sizes=sizes)
    step = step_all[sel]
    gap = sat.gap_by_race_count(probs.mean(axis=1), market, won, race, dog, step, in_scope, weights,
                                n_dogs=len(dogs))
    effects = [("main", res.main), ("within_dog", res.within_dog), ("negative_control", res.negative_control),
               *((f"composition_{k}", v) for k, v in res.composition.items() if v is not None),
               *((f"dose_{x['score']}", _dose_effect(x)) for x in res.dose)]
    tables = {
        "status_compare": _status_table(rows, res, rule, weights),
        "status_effect": effect_frame(effects),
        "sensitivity": sensitivity_frame(res.main, res.grid),
        "dose_response": _dose_deciles(rows, res, weights[:200]),
    }
    scope = {"dogs": int(len(np.unique(dog))), "debut_dogs": int(len(np.unique(dog[in_scope]))),
             "runners": int(len(dog)), "debut_runners": int(in_scope.sum()),
             "races": int(race.max() + 1) if len(race) else 0, "debut_scope": "observed" if scope_debut else "all"}
    comp = {**res.composition, "flagged": res.verdict["composition_flagged"]}
    head = {"main_effect": res.main, "within_dog": res.within_dog, "negative_control": res.negative_control,
            "grid": res.grid, "composition": comp, "dose": res.dose, "gap_by_race_count": gap,
            "verdict": res.verdict, "status_runners": res.status_rows, "scope": scope,
            "n_comparisons": res.verdict["n_intervals"], "debut_scope": scope["debut_scope"],
            "main_metric": res.metric, "dose_trend": None}
    return Found(tables, head, notes)


def _summaries(run_dir: Path, layer: int, n_seeds: int, n_obs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, obs) float32 s, write fraction and relative movement of the cohort layer, per seed (stats/row_summary
    stores them as float32: 12 bytes a row for the three, not float64's 24)."""
    if not has_table(run_dir, "row_summary"):
        raise FileNotFoundError(f"{run_dir}: stats/row_summary is missing; run the stats stage again")
    t = read_table(run_dir, "row_summary", columns=["seed", "layer", "s", "write", "move"])
    t = t[t["layer"] == layer]
    out = []
    for col in ("s", "write", "move"):
        a = np.full((n_seeds, n_obs), np.nan, np.float32)
        for k, part in t.groupby("seed", sort=True):
            if int(k) < n_seeds and len(part) == n_obs:
                a[int(k)] = part[col].to_numpy(np.float32)
        out.append(a)
    return out[0], out[1], out[2]


def _status_table(rows: sat.RowsBySeed, res: sat.SaturationComparison, rule: CohortRule,
                  weights: np.ndarray) -> pd.DataFrame:
    """Metrics per coarse race-count stratum and status group, seeds pooled (what the status figure draws)."""
    stratum = cmp.stratum_of(np.tile(rows.step[rows.row], rows.n_seeds))
    return cmp.group_table(res.metrics, np.tile(rows.dog, rows.n_seeds), res.group, stratum, weights[:200],
                           groups=rule.groups, n_dogs=rows.n_dogs)


def _dose_deciles(rows: sat.RowsBySeed, res: sat.SaturationComparison, weights: np.ndarray) -> pd.DataFrame:
    """The gap by decile of each reliance score of h_{t-1} ADJUSTED FOR STEP (the score less its single-step
    mean), seeds pooled: raw deciles of a score that rises with step would mostly sort races by step."""
    dog = np.tile(rows.dog, rows.n_seeds)
    step = np.tile(rows.step[rows.row], rows.n_seeds)
    inv = np.unique(cmp.fine_stratum_of(step).astype(str), return_inverse=True)[1]
    keep0 = (step >= 2) & np.tile(rows.in_scope, rows.n_seeds)
    parts = []
    for name, x in res.prev_scores:
        keep = keep0 & np.isfinite(x)
        xs = np.where(keep, x, 0.0)
        resid = x - (np.bincount(inv, weights=xs) / np.maximum(np.bincount(inv, weights=keep), 1))[inv]
        table, _ = cmp.dose_response(res.metrics, dog, resid, keep, weights, metric=res.metric, n_dogs=rows.n_dogs)
        parts.append(table.assign(score=f"{name} (step-adjusted)"))
    cols = ["score", "decile", "score_lo", "score_hi", "score_mid", "value", "lo", "hi", "metric", "n_rows", "n_dogs"]
    return pd.concat(parts, ignore_index=True)[cols]


def _dose_effect(x: dict) -> dict:
    return {"metric": "slope per SD", "a": x["score"], "b": "", "diff": x["slope_per_sd"], "lo": x["lo"],
            "hi": x["hi"], "n_dogs_a": x["n_dogs"], "n_dogs_b": x["n_dogs"], "comparable": x["comparable"],
            "excludes_zero": x["excludes_zero"]}


EFFECT_COLUMNS = ["comparison", "metric", "a", "b", "diff", "lo", "hi", "n_dogs_a", "n_dogs_b", "n_winners_a",
                  "n_winners_b", "comparable", "excludes_zero", "note"]


def effect_frame(effects: list[tuple[str, dict]]) -> pd.DataFrame:
    """The status_effect table: one row per comparison."""
    rows = [{"comparison": name, **{k: e.get(k) for k in EFFECT_COLUMNS[1:-1]}, "note": e.get("note", "")}
            for name, e in effects]
    df = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    for c in ("diff", "lo", "hi"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("n_dogs_a", "n_dogs_b", "n_winners_a", "n_winners_b"):
        df[c] = df[c].fillna(0).astype("int64")
    for c in ("comparable", "excludes_zero"):
        df[c] = df[c].fillna(False).astype(bool)
    return df


def sensitivity_frame(main: dict, grid: list[dict]) -> pd.DataFrame:
    """The sensitivity table: the rule's own point (param 'default'), then each grid move."""
    cols = ["param", "value", "n_dogs_a", "n_dogs_b", "n_rows_a", "n_rows_b", "diff", "lo", "hi", "comparable"]
    rows = [("default", np.nan, main.get("n_dogs_a", 0), main.get("n_dogs_b", 0), main.get("n_runners_a", 0),
             main.get("n_runners_b", 0), main.get("diff"), main.get("lo"), main.get("hi"), main.get("comparable"))]
    rows += [(g["param"], g["value"], g["n_dogs_a"], g["n_dogs_b"], g["n_runners_a"], g["n_runners_b"], g["diff"],
              g["lo"], g["hi"], g["comparable"]) for g in grid]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("diff", "lo", "hi", "value"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("n_dogs_a", "n_dogs_b", "n_rows_a", "n_rows_b"):
        df[c] = df[c].fillna(0).astype("int64")
    df["comparable"] = df["comparable"].fillna(False).astype(bool)
    return df


def saturation_headline(summary: StatsSummary, km_median: int | None, probs: np.ndarray, won: np.ndarray,
                        race: np.ndarray, rule: CohortRule) -> dict:
    """The headline's description of saturation on this model (from the stats summary) and the ensemble."""
    mag = dict(summary.magnitude)
    curve = summary.plateau_curve
    rel = summary.reliance
    by_seed = [cmp.race_nll(probs[:, k], won, race) for k in range(probs.shape[1])] if len(race) else []
    ens = cmp.race_nll(probs.mean(axis=1), won, race) if len(race) else None
    mag["tanh_comparable"] = bool(summary.cohort_counts.get("saturated", 0)) and not rule.by_plateau
    return {
        "magnitude": mag,
        "plateau": {"level": curve.get("level"), "race_90": curve.get("race_90"), "race_95": curve.get("race_95"),
                    "s_by_race": [{"race": t, "median_s": m, "n": n} for t, m, n in curve.get("median_by_race", [])],
                    "km_median": km_median, "km_grid": list(summary.km_grid)},
        "reliance": {"write_by_race": [{"race": t, "median_write": m, "n": n} for t, m, n in rel.get("write_by_race", [])],
                     "move_by_race": [{"race": t, "median_move": m, "n": n} for t, m, n in rel.get("move_by_race", [])]},
        "ensemble": {"race_nll": ens, "by_seed": by_seed,
                     "ensemble_minus_mean_seed": (ens - float(np.mean(by_seed))) if by_seed else None},
    }


def repro_headline(repro: pd.DataFrame | None, *, kappa_step: int = 20) -> dict:
    """Page one's reproducibility numbers from the repro table: churn and spread over all races, and Fleiss'
    kappa on settled/settling at one fixed race, as a sentence part (its note when not estimable)."""
    if repro is None or len(repro) == 0:
        return {}

    def _row(metric: str, by: str, step: float | None = None) -> pd.Series | None:
        t = repro[(repro["metric"] == metric) & (repro["by"] == by)]
        if step is not None:
            t = t[t["step"] == step]
        return t.iloc[0] if len(t) else None

    out: dict = {}
    for key, metric in (("churn", "top_pick_churn"), ("spread", "prob_spread")):
        r = _row(metric, "all")
        if r is not None:
            out[key] = {"value": float(r["value"]), "lo": float(r["lo"]), "hi": float(r["hi"]), "n": int(r["n"])}
    k = _row("fleiss_kappa", "step", float(kappa_step))
    if k is not None:
        if np.isfinite(k["value"]):
            out["kappa"] = (f"{k['value']:.2f} [{k['lo']:.2f}, {k['hi']:.2f}] at race {kappa_step} "
                            f"({int(k['n']):,} dogs settled or settling under every seed)")
        else:
            out["kappa"] = f"at race {kappa_step}, {k['note'] or 'not estimable'}"
    return out
