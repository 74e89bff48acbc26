"""When the model set changes: the page-one numbers under the set that ran last night and under the set that runs
tonight, and the one that moved most.

Every number here is in nats: per race for race NLL and the overall gap to the market (`unit_of`), per runner for
the gaps by race count and the settled - settling comparison. These are two nights' numbers (the data moved by a
night too); the same-race comparison of the two sets is `same_race_numbers` and its companions below: both sets'
probabilities on the same held-out races, compared with a Poisson bootstrap over dogs (each race's NLL term belongs
to its winner's dog, a runner's gap to its own dog, a race's top pick to the current set's favourite's dog). Pure:
arrays and mappings in, rows out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gruviz_core import comparisons as cmp
from gruviz_core import repro as rp
from gruviz_core.evaluate import race_top_rows
from gruviz_core.racing import win_log_loss

__all__ = ["page_one_numbers", "moved", "pick_races", "same_race_numbers", "top_pick_disagreement",
           "status_agreement", "settled_minus_settling", "largest_change", "unit_of", "STATUS_STEPS"]

STATUS_STEPS: tuple[int, ...] = rp.KAPPA_STEPS
"""Races at which the two sets' settled/settling status is compared (as the seeds' kappa is)."""


def page_one_numbers(headline: Mapping[str, Any]) -> dict[str, float]:
    """label -> value (nats per runner) of a night's headline record (eval/headline.json); absent numbers left out."""
    out: dict[str, float] = {}
    nll = headline.get("race_nll")
    if isinstance(nll, Mapping):
        for key, label in (("model_mean", "race NLL, seed ensemble"), ("model", "race NLL, seed 0"),
                           ("market", "race NLL, market")):
            _put(out, label, nll.get(key))
        if _num(nll.get("model_mean")) is not None and _num(nll.get("market")) is not None:
            out["gap to the market, seed ensemble"] = float(nll["model_mean"]) - float(nll["market"])
    main = headline.get("main_effect")
    if isinstance(main, Mapping) and main.get("comparable"):
        _put(out, "settled - settling, same step", main.get("diff"))
    for b in headline.get("gap_by_race_count") or ():
        if isinstance(b, Mapping):
            _put(out, f"gap to the market, races {b.get('bucket')}", b.get("diff"))
    return out


def unit_of(label: str) -> str:
    """The unit of a page-one number by its label (page_one_numbers'): race NLL and the overall gap are per race."""
    per_race = label.startswith("race NLL") or label == "gap to the market, seed ensemble"
    return "nats per race" if per_race else "nats per runner"


def moved(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, float, float, float]]:
    """(label, before, after, after - before) of every page-one number both headlines have, largest |change| first."""
    a, b = page_one_numbers(before), page_one_numbers(after)
    rows = [(k, a[k], b[k], b[k] - a[k]) for k in a if k in b]
    return sorted(rows, key=lambda r: -abs(r[3]))


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return None
    return float(v)


def _put(out: dict[str, float], label: str, v: Any) -> None:
    x = _num(v)
    if x is not None:
        out[label] = x


# ------------------------------------------------------------------ the same races under both sets


def pick_races(race: np.ndarray, dog: np.ndarray, max_dogs: int, seed: int) -> np.ndarray:
    """(n,) bool rows of whole races drawn at random until one more race would bring more than `max_dogs` dogs
    (at least one race). race, dog: (n,) codes. Whole races, so each race's probabilities are over all its runners."""
    race, dog = np.asarray(race, np.int64), np.asarray(dog, np.int64)
    if len(race) == 0:
        return np.zeros(0, bool)
    n_r = int(race.max()) + 1
    rank = np.random.default_rng([seed, 29]).permutation(n_r)[race]  # (n,) the row's race's place in the draw
    first = np.full(int(dog.max()) + 1, n_r, np.int64)
    np.minimum.at(first, dog, rank)  # the draw position at which each dog first appears
    dogs_by = np.cumsum(np.bincount(first[first < n_r], minlength=n_r))  # (race rank,) dogs once that race is in
    last = max(int(np.searchsorted(dogs_by, max_dogs, side="right")) - 1, 0)
    return rank <= last


def _race_terms(p: np.ndarray, won: np.ndarray, race: np.ndarray) -> np.ndarray:
    """(n,) each winner's share of its race's -log p(winner) (dead heats split); 0 on losers."""
    n_r = int(race.max()) + 1 if len(race) else 0
    winners = np.bincount(race, weights=won, minlength=n_r)
    share = np.where(won > 0, won / np.maximum(winners[race], 1e-300), 0.0)
    return share * -np.log(np.clip(p, 1e-12, 1.0))


def _race_shares(won: np.ndarray, race: np.ndarray) -> np.ndarray:
    n_r = int(race.max()) + 1 if len(race) else 0
    winners = np.bincount(race, weights=won, minlength=n_r)
    return np.where(won > 0, won / np.maximum(winners[race], 1e-300), 0.0)


def _ratio(num: np.ndarray, den: np.ndarray, dog: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """sum(num) / sum(den) and its (B,) replicates under dog weights (B, dog)."""
    w = np.asarray(weights, np.float64)
    nd = np.bincount(dog, weights=num, minlength=w.shape[1])
    dd = np.bincount(dog, weights=den, minlength=w.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(nd.sum() / dd.sum()) if dd.sum() > 0 else float("nan"), (w @ nd) / (w @ dd)


def _row(number: str, unit: str, n: int, a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> dict:
    lo_a, hi_a = cmp.percentile_interval(a[1])
    lo_b, hi_b = cmp.percentile_interval(b[1])
    lo, hi = cmp.percentile_interval(b[1] - a[1])
    return {"number": number, "unit": unit, "n": int(n), "before": a[0], "before_lo": lo_a, "before_hi": hi_a,
            "after": b[0], "after_lo": lo_b, "after_hi": hi_b, "change": b[0] - a[0], "lo": lo, "hi": hi}


def same_race_numbers(
    p_before: np.ndarray, p_after: np.ndarray, market: np.ndarray | None, won: np.ndarray, race: np.ndarray,
    dog: np.ndarray, step: np.ndarray, weights: np.ndarray,
) -> list[dict]:
    """The page-one accuracy numbers under the set before and the set after on the same runners, each with its
    95% interval over dogs and the change's (after - before, the same replicates for both sets).

    p_before, p_after: (n, K) race-normalised win probabilities per seed (each set's own K); market: (n,) or None;
    won, race (codes), dog (codes into weights' columns), step (1-based race count): (n,); weights: (B, dog).
    -> [{number, unit, n, before, before_lo, before_hi, after, after_lo, after_hi, change, lo, hi}], labels as
    `page_one_numbers` gives them."""
    won, race, dog = np.asarray(won, np.float64), np.asarray(race, np.int64), np.asarray(dog, np.int64)
    share = _race_shares(won, race)
    n_races = int((np.bincount(race, weights=won) > 0).sum()) if len(race) else 0
    ens_a, ens_b = np.asarray(p_before).mean(axis=1), np.asarray(p_after).mean(axis=1)

    def nll(p):
        return _ratio(_race_terms(p, won, race), share, dog, weights)

    rows = [_row("race NLL, seed ensemble", "nats per race", n_races, nll(ens_a), nll(ens_b)),
            _row("race NLL, seed 0", "nats per race", n_races, nll(p_before[:, 0]), nll(p_after[:, 0]))]
    if market is not None:
        mk = _race_terms(market, won, race)
        gap = [_ratio(_race_terms(p, won, race) - mk, share, dog, weights) for p in (ens_a, ens_b)]
        rows.append(_row("gap to the market, seed ensemble", "nats per race", n_races, *gap))
        ref = win_log_loss(market, won)
        unit = "nats per runner, model - market"
    else:
        ref, unit = np.zeros(len(won)), "nats per runner (no market)"
    stratum = cmp.stratum_of(np.asarray(step))
    for *_, name in cmp.STRATA:
        k = stratum == name
        if not k.any():
            continue
        ones = k.astype(np.float64)
        a, b = (_ratio(np.where(k, win_log_loss(p, won) - ref, 0.0), ones, dog, weights) for p in (ens_a, ens_b))
        label = f"gap to the market, races {name}" if market is not None else f"runner log-loss, races {name}"
        rows.append(_row(label, unit, int(k.sum()), a, b))
    return rows


def top_pick_disagreement(p_before: np.ndarray, p_after: np.ndarray, race: np.ndarray, dog: np.ndarray,
                          weights: np.ndarray) -> dict:
    """Share of races whose favourite differs between the two sets (ensembles; and seed 0 against seed 0), with
    95% intervals over dogs (a race belongs to the after set's favourite's dog). -> {ensemble, seed0: {value, lo,
    hi}, races}."""
    race, dog = np.asarray(race, np.int64), np.asarray(dog, np.int64)
    n_r = int(race.max()) + 1 if len(race) else 0
    out: dict[str, Any] = {"races": n_r}
    for key, a, b in (("ensemble", p_before.mean(axis=1), p_after.mean(axis=1)),
                      ("seed0", p_before[:, 0], p_after[:, 0])):
        ta, tb = race_top_rows(a, race, n_r), race_top_rows(b, race, n_r)
        ok = tb >= 0
        v, reps = _ratio((ta[ok] != tb[ok]).astype(np.float64), np.ones(int(ok.sum())), dog[tb[ok]], weights)
        lo, hi = cmp.percentile_interval(reps)
        out[key] = {"value": v, "lo": lo, "hi": hi}
    return out


def status_agreement(
    plateau_before: np.ndarray, plateau_after: np.ndarray, n_steps: np.ndarray, *, w: int, k: int,
    weights: np.ndarray, steps: Sequence[int] = STATUS_STEPS,
) -> list[dict]:
    """Agreement of the two sets' settled/settling status (rule plateau-s, each seed's own plateau) at fixed races.

    plateau_before (dog, Ka), plateau_after (dog, Kb): 1-based plateau steps (NaN none) of the same dogs; seed
    positions 0..min(Ka, Kb)-1 are paired. Per race t: dogs that ran it with a status decided under both sets;
    agreement = share of (dog, seed pair) labels that match, 95% interval over dogs; kappa of the seed-0 pair
    (or why it is not estimable); the share settled under each set.
    -> [{step, n, agreement, lo, hi, kappa, kappa_note, settled_before, settled_after}]."""
    pa, pb = np.asarray(plateau_before, np.float64), np.asarray(plateau_after, np.float64)
    pairs = min(pa.shape[1], pb.shape[1])
    out = []
    for t in steps:
        la = np.stack([rp.status_at_step(pa[:, j], n_steps, t, w, k) for j in range(pairs)], axis=1)
        lb = np.stack([rp.status_at_step(pb[:, j], n_steps, t, w, k) for j in range(pairs)], axis=1)
        ok = np.isin(la, rp.DECIDED).all(axis=1) & np.isin(lb, rp.DECIDED).all(axis=1)
        dogs = np.flatnonzero(ok)
        row = {"step": int(t), "n": int(len(dogs)), "agreement": float("nan"), "lo": float("nan"),
               "hi": float("nan"), "kappa": float("nan"), "kappa_note": "no decided dogs",
               "settled_before": float("nan"), "settled_after": float("nan")}
        if len(dogs):
            same = (la[dogs] == lb[dogs]).mean(axis=1)
            v, reps = _ratio(same, np.ones(len(dogs)), dogs, weights)
            lo, hi = cmp.percentile_interval(reps)
            a = rp.kappa_or_not(np.stack([la[dogs, 0], lb[dogs, 0]], axis=1))
            row |= {"agreement": v, "lo": lo, "hi": hi, "kappa": a.kappa, "kappa_note": a.note,
                    "settled_before": float((la[dogs] == "settled").mean()),
                    "settled_after": float((lb[dogs] == "settled").mean())}
        out.append(row)
    return out


def settled_minus_settling(
    probs: np.ndarray, plateau: np.ndarray, market: np.ndarray | None, won: np.ndarray, race: np.ndarray,
    dog: np.ndarray, step: np.ndarray, *, w: int, k: int, weights: np.ndarray, sizes: cmp.Sizes = cmp.Sizes(),
) -> dict:
    """Page one's main comparison under one set: settled - settling at the same step, each seed's races grouped by
    its own status (plateau (dog, K)) and scored by its own p (probs (n, K)), seeds pooled, bootstrap over dogs.
    -> comparisons.stratified_effect's record."""
    n_seeds = probs.shape[1]
    parts = [cmp.row_metrics(probs[:, j], won, race, market).values for j in range(n_seeds)]
    rm = cmp.RowMetrics(np.concatenate(parts), market is not None)
    group = np.concatenate([rp.status_at_step(plateau[dog, j], None, step, w, k) for j in range(n_seeds)])
    metric = "gap_vs_market" if rm.has_market else "runner_log_loss"
    return cmp.stratified_effect(rm, np.tile(dog, n_seeds), group, cmp.fine_stratum_of(np.tile(step, n_seeds)),
                                 weights, a="settled", b="settling", metric=metric, n_dogs=weights.shape[1],
                                 sizes=sizes)


def largest_change(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The row whose |change| is largest among those with a finite change (the market's own NLL never moves)."""
    ok = [r for r in rows if _num(r.get("change")) is not None and r.get("number") != "race NLL, market"]
    return max(ok, key=lambda r: abs(float(r["change"])), default=None)
