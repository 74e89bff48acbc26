"""The main comparison of information saturation and its checks (DESIGN section 6), and the verdict.

Rows are scored runners of the held-out period, stacked over seeds: status comes from each seed's own
states (its plateau), so each seed's races are grouped by its own status and scored by its own
probabilities, then pooled with one bootstrap over DOGS (a dog's rows under every seed move together).

    main              settled - settling, the gap to the market (model minus market log-loss per runner),
                      matched on single steps (`comparisons.FINE_STRATA`)
    within_dog        the same dogs' races after - before their plateau, with step fixed effects
    grid              the main comparison at one-at-a-time moves of (w, delta, k)
    composition       the market's own log-loss and win rate between the same groups at the same steps:
                      a placebo outcome; if the market differs as much as the model, the groups differ
                      mainly in who they are
    negative_control  step-1 races (predicted from h_0 = 0 for every dog) grouped by the dog's eventual
                      plateau: any difference there is selection, not the state
    dose              slope of the gap per SD of the write fraction, relative movement and s of h_{t-1},
                      with step fixed effects

The verdict claims an association only when the main comparison excludes 0 after Holm across its family
(main, within-dog, the three dose slopes) AND the within-dog comparison agrees in sign and excludes 0 AND
at least half of the grid points that produced an interval exclude 0 with the same sign. Associations,
not causes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from gruviz_core import cohorts as co
from gruviz_core import comparisons as cmp
from gruviz_core.cohorts import CohortRule
from gruviz_core.stats import plateau_steps

__all__ = [
    "GRID",
    "RowsBySeed",
    "SaturationComparison",
    "compare_saturation",
    "within_dog_fe",
    "dose_fe",
    "holm",
    "verdict_of",
    "gap_by_race_count",
]

GRID: tuple[tuple[str, tuple[float, ...]], ...] = (("w", (3, 8)), ("delta", (0.02, 0.1)), ("k", (2, 5)))
"""One-at-a-time moves of the plateau's parameters around the rule's own values."""


@dataclass(frozen=True)
class RowsBySeed:
    """The held-out scored runners, and every row's per-seed summaries of the cohort layer."""

    p: np.ndarray
    """(n, K) each seed's win probability of each evaluated runner."""
    market: np.ndarray | None
    """(n,) the market's renormalised win probability, or None."""
    won: np.ndarray
    """(n,) 1.0 for a winner."""
    race: np.ndarray
    """(n,) race codes 0..races-1."""
    dog: np.ndarray
    """(n,) dog index of each runner (0..n_dogs-1)."""
    row: np.ndarray
    """(n,) the runner's row in the run's flat ragged layout."""
    in_scope: np.ndarray
    """(n,) bool: the runner's dog is in the step-indexed scope (debut observed)."""
    s: np.ndarray
    """(K, obs) s of the state after each row's race, per seed (float32 as stored, or float64)."""
    write: np.ndarray
    """(K, obs) write fraction 1 - mean z at each row, per seed (float32 as stored, or float64)."""
    move: np.ndarray
    """(K, obs) relative movement at each row, per seed (float32 as stored, or float64)."""
    step: np.ndarray
    """(obs,) 1-based step of every row."""
    offsets: np.ndarray
    """(dog + 1,) row offsets."""

    @property
    def n_seeds(self) -> int:
        return self.p.shape[1]

    @property
    def n_dogs(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True)
class SaturationComparison:
    """Everything the main comparison and its checks found (plain dicts, as stored in the headline)."""

    main: dict
    within_dog: dict
    grid: list[dict]
    composition: dict
    negative_control: dict
    dose: list[dict]
    verdict: dict
    metric: str
    status_rows: dict[str, int]
    """Runner rows (over seeds) in each status group, in scope."""
    metrics: cmp.RowMetrics
    """(K * n, 8) per-runner metrics of each seed's own probabilities, seeds stacked (the rows compared)."""
    group: np.ndarray
    """(K * n,) each stacked runner's status group at prediction time ('out of scope' outside the scope)."""
    prev_scores: tuple[tuple[str, np.ndarray], ...]
    """(name, (K * n,) score of h_{t-1}) for the dose-response: write_prev, move_prev, s_prev."""


def compare_saturation(
    d: RowsBySeed, rule: CohortRule, weights: np.ndarray, *, grid_weights: np.ndarray | None = None,
    sizes: cmp.Sizes = cmp.Sizes(), grid: Sequence[tuple[str, tuple[float, ...]]] = GRID,
) -> SaturationComparison:
    """The main comparison under `rule` (a plateau rule), its checks and the verdict. weights: (B, dog)."""
    a, b = rule.compared
    grid_weights = weights[:200] if grid_weights is None else grid_weights
    rm = _stacked_metrics(d)
    metric = "gap_vs_market" if rm.has_market else "runner_log_loss"
    dog, step_r = np.tile(d.dog, d.n_seeds), np.tile(d.step[d.row], d.n_seeds)
    scope = np.tile(d.in_scope, d.n_seeds)
    stratum = cmp.fine_stratum_of(step_r)
    plateaus = _plateaus(d, rule)
    status = _status(d, plateaus, rule)
    group = np.where(scope, status.status, "out of scope")
    n = d.n_dogs
    main = cmp.stratified_effect(rm, dog, group, stratum, weights, a=a, b=b, metric=metric, n_dogs=n, sizes=sizes)
    pair = scope & ((group == a) | (group == b))
    within = within_dog_fe(_metric_rows(rm, metric), dog, status.plateau_reached, stratum, pair, weights,
                           n_dogs=n, sizes=sizes, won=rm.values[:, 7])
    composition = _composition(d, dog, group, stratum, weights, a, b, sizes)
    negative = _negative_control(d, rm, plateaus, rule, weights, metric, sizes)
    prev = tuple(_prev_scores(d))
    dose = [dose_fe(_metric_rows(rm, metric), x, dog, stratum, (step_r >= 2) & scope & np.isfinite(x), weights,
                    n_dogs=n, name=name) for name, x in prev]
    points = _grid(d, rm, dog, stratum, scope, rule, grid_weights, metric, sizes, grid)
    verdict = verdict_of(main, within, points, dose, composition)
    rows = {g: int((group == g).sum()) for g in rule.groups}
    return SaturationComparison(main, within, points, composition, negative, dose, verdict, metric, rows, rm, group, prev)


def _stacked_metrics(d: RowsBySeed) -> cmp.RowMetrics:
    """Per-runner metrics of each seed's own probabilities, seeds stacked: (K * n, 8)."""
    parts = [cmp.row_metrics(d.p[:, k], d.won, d.race, d.market).values for k in range(d.n_seeds)]
    return cmp.RowMetrics(np.concatenate(parts), d.market is not None)


def _metric_rows(rm: cmp.RowMetrics, metric: str) -> np.ndarray:
    """(rows,) the per-runner value of a row-level metric (gap or log-loss)."""
    return rm.values[:, 1] if metric == "gap_vs_market" else rm.values[:, 2]


def _plateaus(d: RowsBySeed, rule: CohortRule) -> np.ndarray:
    """(K, dog) each seed's plateau step T* under the rule (NaN: none yet)."""
    return np.stack([plateau_steps(d.s[k], d.step, d.offsets, w=rule.w, delta=rule.delta, k=rule.k)
                     for k in range(d.n_seeds)])


def _status(d: RowsBySeed, plateaus: np.ndarray, rule: CohortRule) -> co.PredictionStatus:
    """Status at prediction time of each evaluated runner under each seed, stacked like the metrics."""
    parts = [co.status_at_prediction(d.s[k], None, d.step, d.offsets, plateaus[k], rule, rows=d.row)
             for k in range(d.n_seeds)]
    return co.PredictionStatus(*(np.concatenate([getattr(p, f) for p in parts])
                                 for f in ("status", "plateau_reached", "f_run", "s_prev", "f_prev")))


def _prev_scores(d: RowsBySeed) -> list[tuple[str, np.ndarray]]:
    """(name, (K * n,) score of h_{t-1}) for the dose-response: NaN at step 1 (no state yet)."""
    prev = np.maximum(d.row - 1, 0)
    first = d.step[d.row] == 1
    out = []
    for name, x in (("write_prev", d.write), ("move_prev", d.move), ("s_prev", d.s)):
        out.append((name, np.concatenate([np.where(first, np.nan, np.asarray(x[k][prev], np.float64))
                                          for k in range(d.n_seeds)])))
    return out


def within_dog_fe(
    y: np.ndarray, dog: np.ndarray, after: np.ndarray, stratum: np.ndarray, keep: np.ndarray, weights: np.ndarray,
    *, n_dogs: int, sizes: cmp.Sizes = cmp.Sizes(), won: np.ndarray | None = None,
) -> dict:
    """The same dogs after - before their plateau, with step fixed effects: y less its stratum mean (over the
    kept rows), then per dog mean(after) - mean(before), averaged over dogs with both; bootstrap over dogs.
    y, dog, after, stratum, keep: (rows,)."""
    ok = keep & np.isfinite(y)
    y, dog, after, stratum = y[ok], dog[ok], after[ok], stratum[ok]
    inv = np.unique(stratum.astype(str), return_inverse=True)[1]
    resid = y - (np.bincount(inv, weights=y) / np.maximum(np.bincount(inv), 1))[inv]
    na, nb = np.bincount(dog[after], minlength=n_dogs), np.bincount(dog[~after], minlength=n_dogs)
    with np.errstate(invalid="ignore", divide="ignore"):
        da = np.bincount(dog[after], weights=resid[after], minlength=n_dogs) / na
        db = np.bincount(dog[~after], weights=resid[~after], minlength=n_dogs) / nb
    both = np.flatnonzero((na > 0) & (nb > 0))
    diff = (da - db)[both]
    wins = (np.zeros(2) if won is None else
            [float(np.asarray(won)[ok][after & np.isin(dog, both)].sum()),
             float(np.asarray(won)[ok][~after & np.isin(dog, both)].sum())])
    comparable = len(both) >= sizes.min_dogs and (won is None or min(wins) >= sizes.min_winners)
    rec = {"metric": "step-adjusted", "a": "after plateau", "b": "before plateau", "diff": None, "lo": None,
           "hi": None, "n_dogs_a": int(len(both)), "n_dogs_b": int(len(both)),
           "n_winners_a": int(round(wins[0])), "n_winners_b": int(round(wins[1])),
           "n_runners_a": int(na[both].sum()), "n_runners_b": int(nb[both].sum()),
           "comparable": bool(comparable), "excludes_zero": False, "p_value": None}
    if len(both):
        reps = cmp.weighted_mean(weights, diff, both)
        lo, hi = cmp.percentile_interval(reps)
        rec.update(diff=float(diff.mean()), lo=lo, hi=hi, p_value=cmp.bootstrap_p(reps),
                   excludes_zero=bool(comparable and np.isfinite(lo) and (lo > 0 or hi < 0)))
    return rec


def dose_fe(
    y: np.ndarray, x: np.ndarray, dog: np.ndarray, stratum: np.ndarray, keep: np.ndarray, weights: np.ndarray,
    *, n_dogs: int, name: str, min_dogs: int = 100,
) -> dict:
    """Slope of y per SD of x with step fixed effects (both demeaned within strata), bootstrap over dogs.
    -> {score, slope_per_sd, lo, hi, n_runners, n_dogs, comparable, excludes_zero, p_value}."""
    ok = keep & np.isfinite(y) & np.isfinite(x)
    y, x, dog = y[ok], x[ok], dog[ok]
    inv = np.unique(np.asarray(stratum)[ok].astype(str), return_inverse=True)[1]
    cnt = np.maximum(np.bincount(inv), 1)
    yr = y - (np.bincount(inv, weights=y) / cnt)[inv]
    xr = x - (np.bincount(inv, weights=x) / cnt)[inv]
    sd = float(np.std(x)) if len(x) > 1 else 0.0
    n_d = int(np.unique(dog).size)
    rec = {"score": name, "slope_per_sd": None, "lo": None, "hi": None, "n_runners": int(ok.sum()), "n_dogs": n_d,
           "comparable": False, "excludes_zero": False, "p_value": None}
    sxx = np.bincount(dog, weights=xr * xr, minlength=n_dogs)
    if sd <= 0 or sxx.sum() <= 0:
        return rec
    sxy = np.bincount(dog, weights=xr * yr, minlength=n_dogs)
    slope = float(sxy.sum() / sxx.sum()) * sd
    num, den = np.empty(len(weights)), np.empty(len(weights))
    for rows, w in cmp.replicate_blocks(weights, dtype=np.float64):  # float64 weights a block at a time
        num[rows], den[rows] = w @ sxy, w @ sxx
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = num / den * sd
    lo, hi = cmp.percentile_interval(reps)
    comparable = n_d >= min_dogs
    rec.update(slope_per_sd=slope, lo=lo, hi=hi, comparable=comparable, p_value=cmp.bootstrap_p(reps),
               excludes_zero=bool(comparable and np.isfinite(lo) and (lo > 0 or hi < 0)))
    return rec


def _composition(d, dog, group, stratum, weights, a, b, sizes) -> dict:
    """The market's own log-loss and win rate between the same groups at the same steps (placebo outcomes)."""
    out: dict = {"market_log_loss": None, "market_win_rate": None}
    won, race = np.tile(d.won, d.n_seeds), np.tile(d.race, d.n_seeds)
    won_rm = cmp.row_metrics(np.full(len(won), 0.5), won, race, None)  # only its win column is read
    out["market_win_rate"] = cmp.stratified_effect(won_rm, dog, group, stratum, weights, a=a, b=b, metric="win_rate",
                                                   n_dogs=d.n_dogs, sizes=sizes)
    if d.market is not None:
        m_rm = cmp.row_metrics(np.tile(d.market, d.n_seeds), won, race, None)
        out["market_log_loss"] = cmp.stratified_effect(m_rm, dog, group, stratum, weights, a=a, b=b,
                                                       metric="runner_log_loss", n_dogs=d.n_dogs, sizes=sizes)
    return out


def _negative_control(d, rm, plateaus, rule, weights, metric, sizes) -> dict:
    """Step-1 races (h_0 = 0 for every dog) grouped by each seed's eventual dog-level cohort, in scope."""
    n_steps = np.diff(d.offsets)
    parts = [co.assign_cohorts(plateaus[k], n_steps, np.zeros(d.n_dogs), rule)[d.dog] for k in range(d.n_seeds)]
    cohort = np.concatenate(parts)
    first = np.tile((d.step[d.row] == 1) & d.in_scope, d.n_seeds)
    a, b = rule.compared
    group = np.where(first, cohort, "-")
    dog = np.tile(d.dog, d.n_seeds)
    return cmp.stratified_effect(rm, dog, group, np.full(len(dog), "1", dtype=object), weights, a=a, b=b,
                                 metric=metric, n_dogs=d.n_dogs, sizes=sizes)


def _grid(d, rm, dog, stratum, scope, rule, weights, metric, sizes, grid) -> list[dict]:
    """The main comparison at each one-at-a-time move of (w, delta, k)."""
    a, b = rule.compared
    out = []
    for param, values in grid:
        for v in values:
            r = replace(rule, **{param: type(getattr(rule, param))(v)})
            status = _status(d, _plateaus(d, r), r)
            group = np.where(scope, status.status, "out of scope")
            e = cmp.stratified_effect(rm, dog, group, stratum, weights, a=a, b=b, metric=metric, n_dogs=d.n_dogs,
                                      sizes=sizes)
            out.append({"param": param, "value": float(v), "w": r.w, "delta": r.delta, "k": r.k,
                        **{k: e[k] for k in ("diff", "lo", "hi", "comparable", "excludes_zero", "n_dogs_a",
                                             "n_dogs_b", "n_runners_a", "n_runners_b")}})
    return out


def holm(p_values: dict[str, float | None], *, alpha: float = 0.05) -> list[dict]:
    """Holm's step-down adjustment over the tests that produced a p-value.
    -> [{name, p, p_adj, rejected}] in the order of the adjusted p-values."""
    named = sorted(((p, k) for k, p in p_values.items() if p is not None and np.isfinite(p)))
    m, out, running = len(named), [], 0.0
    for i, (p, k) in enumerate(named):
        running = max(running, min(1.0, (m - i) * p))
        out.append({"name": k, "p": float(p), "p_adj": float(running), "rejected": bool(running < alpha)})
    return out


def verdict_of(main: dict, within: dict, grid: list[dict], dose: list[dict], composition: dict) -> dict:
    """The verdict on the main comparison (see the module docstring): kind is one of
    'not_comparable', 'none' (its interval includes 0), 'fragile' (it excludes 0 but a check disagrees) or
    'robust'; `composition_flagged` when the market differs between the groups at least half as much."""
    family = {"main": main.get("p_value") if main.get("comparable") else None,
              "within_dog": within.get("p_value") if within.get("comparable") else None,
              **{f"dose_{x['score']}": x.get("p_value") if x.get("comparable") else None for x in dose}}
    adj = holm(family)
    rejected = {x["name"] for x in adj if x["rejected"]}
    ml = composition.get("market_log_loss") or {}
    flagged = bool(ml.get("excludes_zero") and main.get("diff") is not None and ml.get("diff") is not None
                   and abs(ml["diff"]) >= 0.5 * abs(main["diff"]))
    grid_ok = [g for g in grid if g.get("comparable") and g.get("lo") is not None and np.isfinite(g["lo"])]
    rec = {"family": list(family), "n_intervals": len(adj), "holm": adj, "composition_flagged": flagged,
           "grid_points": len(grid_ok), "grid_agree": 0, "within_agrees": False}
    if not main.get("comparable") or main.get("diff") is None:
        return {**rec, "kind": "not_comparable"}
    sign = np.sign(main["diff"])
    rec["grid_agree"] = sum(1 for g in grid_ok if g["excludes_zero"] and np.sign(g["diff"]) == sign)
    rec["within_agrees"] = bool(within.get("comparable") and within.get("excludes_zero")
                                and np.sign(within["diff"]) == sign)
    if not main.get("excludes_zero"):
        return {**rec, "kind": "none"}
    robust = ("main" in rejected and rec["within_agrees"] and 2 * rec["grid_agree"] >= max(len(grid_ok), 1))
    return {**rec, "kind": "robust" if robust else "fragile"}


def gap_by_race_count(p: np.ndarray, market: np.ndarray | None, won: np.ndarray, race: np.ndarray, dog: np.ndarray,
                      step: np.ndarray, keep: np.ndarray, weights: np.ndarray, *, n_dogs: int) -> list[dict]:
    """The gap to the market (or the runner log-loss without one) by the runner's race count
    (comparisons.STRATA), with 95% intervals over dogs. p: (n,) the ensemble's probabilities."""
    rm = cmp.row_metrics(p, won, race, market)
    metric = "gap_vs_market" if rm.has_market else "runner_log_loss"
    stratum = cmp.stratum_of(step)
    out = []
    for _, _, name in cmp.STRATA:
        k = keep & (stratum == name)
        if not k.any():
            continue
        v = cmp.bucket_value(rm, dog, k, weights, metric=metric, n_dogs=n_dogs)
        out.append({"bucket": name, "diff": v["value"], "lo": v["lo"], "hi": v["hi"], "n_runners": v["n_rows"],
                    "n_dogs": v["n_dogs"], "metric": metric})
    return out
