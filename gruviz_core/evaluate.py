"""Cohort comparisons: win metrics with a bootstrap over dogs, calibration,
effect sizes at equal history length, and reproducibility across seeds.

Rows are runners (one per dog and race). Steps of one dog are not independent, so intervals come
from a Poisson bootstrap over DOGS: each replicate gives every dog a weight ~ Poisson(1) and every
metric is a ratio of per-dog sums, so B replicates are one (B, dog) @ (dog,) product each.

AUC is computed from per-dog counts of winners and losers in quantile bins of p (1024 by default;
exact when p takes fewer values), so it bootstraps the same way. The winner hit rate of a cohort is
the share of the cohort's top picks (the race favourite under the model) that won.

Cohorts differ in base rates (dogs that race on and saturate win more often), so raw log-loss
mostly says who wins. Given a reference (the market on the same rows), `log_loss_vs_market` is
the mean per-row log-loss of the model minus the market's: the model's own skill gap, comparable
across cohorts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from gruviz_core import repro as rp
from gruviz_core.cohorts import COHORTS
from gruviz_core.comparisons import percentile_interval as _interval
from gruviz_core.comparisons import poisson1
from gruviz_core.errors import ConfigError
from gruviz_core.racing import race_codes

__all__ = [
    "METRICS",
    "GAP_METRIC",
    "poisson_weights",
    "top_pick_mask",
    "DogSums",
    "dog_sums",
    "metric_values",
    "cohort_metrics",
    "calibration",
    "CALIBRATION_EDGES",
    "prob_spread",
    "top_pick_churn",
    "cohen_kappa",
    "linear_cka",
    "eval_rows",
    "repro_table",
]

METRICS: tuple[str, ...] = ("log_loss", "brier", "auc", "hit_rate")
"""Win metrics of every comparison; lower is better for the first two."""

GAP_METRIC = "log_loss_vs_market"
"""Extra metric when a reference is given: mean log-loss of the model minus the reference's."""


CALIBRATION_EDGES: np.ndarray = np.array([0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0])
"""Bin edges of the calibration table; fine where win probabilities live (1/8 = 0.125)."""

_EPS = 1e-12


def poisson_weights(n_dogs: int, n_boot: int, seed: int) -> np.ndarray:
    """(B, dog) float64 Poisson(1) bootstrap weights; the same seed gives the same weights."""
    if n_boot < 1:
        raise ConfigError(f"bootstrap: n_boot must be >= 1, got {n_boot}")
    return poisson1(np.random.default_rng(seed), (n_boot, n_dogs)).astype(np.float64)


def top_pick_mask(p: np.ndarray, race: np.ndarray) -> np.ndarray:
    """(obs,) bool: the row with the highest p in its race (first row on ties)."""
    order = np.lexsort((-np.asarray(p, dtype=np.float64), race))
    first = np.ones(len(order), dtype=bool)
    first[1:] = race[order][1:] != race[order][:-1]
    out = np.zeros(len(p), dtype=bool)
    out[order[first]] = True
    return out


@dataclass(frozen=True)
class DogSums:
    """Per-dog sufficient statistics of the win metrics of one probability source."""

    ll: np.ndarray
    """(dog,) sum of row log-losses."""
    br: np.ndarray
    """(dog,) sum of squared errors."""
    n: np.ndarray
    """(dog,) rows."""
    picks: np.ndarray
    """(dog,) rows that were their race's top pick."""
    hits: np.ndarray
    """(dog,) top picks that won."""
    pos: sparse.csr_matrix
    """(dog, bin) winners per quantile bin of p."""
    neg: sparse.csr_matrix
    """(dog, bin) losers per quantile bin of p."""
    gap: np.ndarray | None = None
    """(dog,) sum of row log-loss minus the reference's; None without a reference."""

    def take(self, dogs: np.ndarray) -> DogSums:
        """Only the given dogs (index array), in that order."""
        return DogSums(self.ll[dogs], self.br[dogs], self.n[dogs], self.picks[dogs], self.hits[dogs],
                       self.pos[dogs], self.neg[dogs], None if self.gap is None else self.gap[dogs])

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS if self.gap is None else (*METRICS, GAP_METRIC)


def dog_sums(
    p: np.ndarray, won: np.ndarray, dog: np.ndarray, is_top: np.ndarray, n_dogs: int,
    *, keep: np.ndarray | None = None, n_bins: int = 1024, ref: np.ndarray | None = None,
) -> DogSums:
    """Sufficient statistics per dog. p, won, dog, is_top, ref: (obs,); keep: (obs,) bool rows to count."""
    p = np.asarray(p, dtype=np.float64)
    if keep is not None:
        p, won, dog, is_top = p[keep], won[keep], dog[keep], is_top[keep]
        ref = None if ref is None else ref[keep]
    ll = _log_loss(p, won)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1])) if len(p) else np.array([])
    b = np.searchsorted(edges, p, side="right")
    nb = len(edges) + 1
    w = won.astype(np.float64)

    def _counts(v: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix((v, (dog, b)), shape=(n_dogs, nb))

    def _bc(v) -> np.ndarray:
        return np.bincount(dog, weights=v, minlength=n_dogs).astype(np.float64)

    return DogSums(
        ll=_bc(ll), br=_bc((p - w) ** 2), n=_bc(None), picks=_bc(is_top.astype(np.float64)),
        hits=_bc(is_top * w), pos=_counts(w), neg=_counts(1 - w),
        gap=None if ref is None else _bc(ll - _log_loss(np.asarray(ref, dtype=np.float64), won)),
    )


def _log_loss(p: np.ndarray, won: np.ndarray) -> np.ndarray:
    pc = np.clip(p, _EPS, 1 - _EPS)
    return -(won * np.log(pc) + (1 - won) * np.log1p(-pc))


def metric_values(s: DogSums, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric under dog weights (B, dog) -> {metric: (B,)}. Ones give the point estimate."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = weights @ s.n
        out = {"log_loss": weights @ s.ll / n, "brier": weights @ s.br / n,
               "hit_rate": (weights @ s.hits) / (weights @ s.picks)}
        pos = np.asarray(s.pos.T @ weights.T).T  # (B, bin)
        neg = np.asarray(s.neg.T @ weights.T).T
        below = np.cumsum(neg, axis=1) - neg  # losers in lower bins
        out["auc"] = (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))
        if s.gap is not None:
            out[GAP_METRIC] = weights @ s.gap / n
    return out


def _groups(dog_cohort: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """[('all', every dog), (cohort, its dogs)...] as index arrays."""
    out = [("all", np.arange(len(dog_cohort)))]
    for c in pd.unique(dog_cohort):
        out.append((str(c), np.flatnonzero(dog_cohort == c)))
    return out


def cohort_metrics(
    sources: dict[str, np.ndarray], won: np.ndarray, race: np.ndarray, dog: np.ndarray,
    dog_cohort: np.ndarray, *, weights: np.ndarray, ref: str | None = "market",
) -> pd.DataFrame:
    """Metrics with 95% intervals per cohort and source (model, market, uniform...) on the same rows.

    sources: {name: p (obs,)}; dog: (obs,) codes into dog_cohort (dog,); weights: (B, dog).
    Sources whose name starts with 'model' also get GAP_METRIC against sources[ref] when present.
    -> columns cohort, metric, value, lo, hi, n_dogs, n_rows, source.
    """
    rows = []
    n_rows_dog = np.bincount(dog, minlength=len(dog_cohort))
    ref_p = sources.get(ref) if ref else None
    for src, p in sources.items():
        r = ref_p if src.startswith("model") else None
        s = dog_sums(p, won, dog, top_pick_mask(p, race), len(dog_cohort), ref=r)
        for name, idx in _groups(dog_cohort):
            idx = idx[n_rows_dog[idx] > 0]
            sub = s.take(idx)
            point = metric_values(sub, np.ones((1, len(idx))))
            reps = metric_values(sub, weights[:, idx])
            for m in s.metrics:
                lo, hi = _interval(reps[m])
                rows.append((name, m, float(point[m][0]), lo, hi, len(idx), int(n_rows_dog[idx].sum()), src))
    return pd.DataFrame(rows, columns=["cohort", "metric", "value", "lo", "hi", "n_dogs", "n_rows", "source"])


def calibration(
    p: np.ndarray, won: np.ndarray, group: np.ndarray, *, edges: np.ndarray = CALIBRATION_EDGES
) -> pd.DataFrame:
    """Reliability table per group and 'all'. -> columns cohort, bin, lo, hi, p_mean, won_rate, n."""
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    df = pd.DataFrame({"cohort": np.asarray(group, dtype=object), "bin": b, "p": p, "won": won})
    both = pd.concat([df.assign(cohort="all"), df])
    g = both.groupby(["cohort", "bin"], sort=True).agg(p_mean=("p", "mean"), won_rate=("won", "mean"), n=("p", "size"))
    g = g.reset_index()
    g["lo"], g["hi"] = edges[g["bin"]], edges[g["bin"] + 1]
    return g[["cohort", "bin", "lo", "hi", "p_mean", "won_rate", "n"]]


def prob_spread(probs: np.ndarray) -> np.ndarray:
    """Sample std (ddof=1) of the win probability across the K seeds. probs: (obs, seed) -> (obs,); NaN when K < 2."""
    if probs.shape[1] < 2:
        return np.full(len(probs), np.nan)
    return probs.std(axis=1, ddof=1)


def top_pick_churn(probs: np.ndarray, race: np.ndarray, scope: np.ndarray | None = None) -> float:
    """Share of races whose top pick differs between two seeds, averaged over seed pairs (symmetric in the seeds).

    probs: (obs, seed); scope: (obs,) bool, count only races where either seed's pick is such a row.
    """
    k = probs.shape[1]
    if k < 2:
        return float("nan")
    tops = [top_pick_mask(probs[:, i], race) for i in range(k)]
    vals = []
    for i in range(k):
        for j in range(i + 1, k):
            pi, pj = tops[i], tops[j]
            if scope is not None:
                pi, pj = pi & scope, pj & scope
            races = np.union1d(race[pi], race[pj])
            if len(races):
                same = np.intersect1d(race[tops[i] & tops[j]], races)
                vals.append(1.0 - len(same) / len(races))
    return float(np.mean(vals)) if vals else float("nan")


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two labelings of the same items. (n,), (n,) -> float (1 = same, 0 = chance)."""
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    labels = pd.unique(np.concatenate([a, b]))
    if len(a) == 0:
        return float("nan")
    po = float(np.mean(a == b))
    pe = float(sum(np.mean(a == c) * np.mean(b == c) for c in labels))
    return 1.0 if pe >= 1.0 else (po - pe) / (1.0 - pe)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same n items. (n, p), (n, q) -> [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ConfigError(f"linear_cka: {len(x)} rows vs {len(y)}; both representations need the same items")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    xy = np.linalg.norm(y.T @ x) ** 2
    xx = np.linalg.norm(x.T @ x)
    yy = np.linalg.norm(y.T @ y)
    return float(xy / (xx * yy)) if xx > 0 and yy > 0 else float("nan")


# ------------------------------------------------------------------ the evaluate stage's tables


def eval_rows(rows: pd.DataFrame, scores: np.ndarray, race: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Rows to score: known result, every seed scored, races with >= 2 such runners and a winner.

    If at least half of those races have a price for every runner, keep only those races so the
    market baseline sits on exactly the same rows; else report no market baseline. race: (obs,)
    codes of rows["race_id"] when the caller has them (else computed here).
    """
    won = rows["won"].to_numpy()
    ok = np.isfinite(won) & np.isfinite(scores).all(axis=1)
    race = race_codes(rows["race_id"].to_numpy()) if race is None else np.asarray(race, dtype=np.int64)
    n_r = race.max() + 1 if len(race) else 0
    runners = np.bincount(race[ok], minlength=n_r)
    winners = np.bincount(race[ok], weights=won[ok], minlength=n_r)
    ok &= (runners[race] >= 2) & (winners[race] >= 1)
    mkt = np.isfinite(rows["market_prob"].to_numpy())
    priced = np.bincount(race[ok & ~mkt], minlength=n_r) == 0
    used = np.bincount(race[ok], minlength=n_r) > 0
    has_market = used.sum() > 0 and priced[used].mean() >= 0.5
    if has_market:
        ok &= priced[race]
    return np.flatnonzero(ok), bool(has_market)


def repro_table(probs: np.ndarray, race: np.ndarray, dog: np.ndarray, cohort: np.ndarray,
                seed_labels: np.ndarray | None, decided: np.ndarray | None) -> pd.DataFrame:
    """Prediction spread (ddof=1) and symmetric top-pick churn per scope; Fleiss' kappa and per-cohort agreement
    of the seeds' cohort labels among decided dogs.

    probs: (obs, seed); dog: (obs,) codes into cohort (dog,); seed_labels: (dog, seed) or None;
    decided: (dog,) bool, dogs with enough races for every seed to decide. -> scope, metric, value, n.
    """
    spread = prob_spread(probs)
    row_c = cohort[dog]
    out = []
    for scope in ["all", *COHORTS]:
        m = np.ones(len(dog), bool) if scope == "all" else row_c == scope
        if not m.any():
            continue
        out.append((scope, "prob_spread", float(np.nanmean(spread[m])) if probs.shape[1] > 1 else np.nan,
                    int(m.sum())))
        out.append((scope, "top_pick_churn", top_pick_churn(probs, race, None if scope == "all" else m), int(m.sum())))
    if seed_labels is not None and seed_labels.shape[1] >= 2:
        lab = seed_labels[decided] if decided is not None else seed_labels
        out.append(("decided", "fleiss_kappa", rp.fleiss_kappa(lab), len(lab)))
        for c, (agree, n) in sorted(rp.specific_agreement(lab).items()) if len(lab) else []:
            out.append((c, "agreement", agree, n))
    return pd.DataFrame(out, columns=["scope", "metric", "value", "n"])
