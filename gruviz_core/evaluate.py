"""Cohort comparisons: win metrics with a bootstrap over dogs, calibration,
effect sizes at equal history length, and reproducibility across seeds.

Rows are runners (one per dog and race). Steps of one dog are not independent, so intervals come
from a Poisson bootstrap over DOGS: each replicate gives every dog a weight ~ Poisson(1) and every
metric is a ratio of per-dog sums, so B replicates are one (B, dog) @ (dog,) product each.

AUC is computed from per-dog counts of winners and losers in quantile bins of p (1024 by default;
exact when p takes fewer values), so it bootstraps the same way. The winner hit rate of a cohort is
the share of the cohort's top picks (the race favourite under the model) that won.

Reproducibility (`repro_table`): spread is per runner, grouped by the runner's own race count and status;
top-pick churn is per race, grouped by the race's favourite under the seed ensemble, so every race sits
in one group whether or not the seeds agree on it.

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
from gruviz_core.comparisons import STRATA, poisson1, product_dtype, replicate_blocks, stratum_of, weighted
from gruviz_core.comparisons import percentile_interval as _interval
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
    "race_top_rows",
    "race_disagreement",
    "top_pick_churn",
    "cohen_kappa",
    "linear_cka",
    "eval_rows",
    "REPRO_COLUMNS",
    "SeedStatus",
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
            reps = _replicate_values(sub, weights, idx)
            for m in s.metrics:
                lo, hi = _interval(reps[m])
                rows.append((name, m, float(point[m][0]), lo, hi, len(idx), int(n_rows_dog[idx].sum()), src))
    return pd.DataFrame(rows, columns=["cohort", "metric", "value", "lo", "hi", "n_dogs", "n_rows", "source"])


def _replicate_values(s: DogSums, weights: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """metric_values(s, weights[:, idx]) with float64 weights made a block of replicates at a time."""
    parts = [metric_values(s, w) for _, w in replicate_blocks(weights, idx, dtype=np.float64)]
    return {m: np.concatenate([p[m] for p in parts]) for m in parts[0]}


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


def race_top_rows(p: np.ndarray, race: np.ndarray, n_races: int) -> np.ndarray:
    """(race,) index of the row with the highest p in each race (first row on ties; -1 for a race without rows)."""
    out = np.full(n_races, -1, dtype=np.int64)
    top = np.flatnonzero(top_pick_mask(p, race))
    out[race[top]] = top
    return out


def race_disagreement(probs: np.ndarray, race: np.ndarray) -> np.ndarray:
    """Per race, the share of seed pairs whose top picks differ (0 = every seed picks the same runner).

    probs: (obs, seed); race: (obs,) codes 0..R-1. -> (R,); NaN when K < 2 or a race has no rows.
    """
    n_r = int(race.max()) + 1 if len(race) else 0
    k = probs.shape[1]
    if k < 2 or n_r == 0:
        return np.full(n_r, np.nan)
    tops = np.stack([race_top_rows(probs[:, i], race, n_r) for i in range(k)], axis=1)  # (R, K)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    out = np.mean([tops[:, i] != tops[:, j] for i, j in pairs], axis=0)
    out[tops[:, 0] < 0] = np.nan
    return out


def top_pick_churn(probs: np.ndarray, race: np.ndarray) -> float:
    """Share of races whose top pick differs between two seeds, averaged over seed pairs and races.

    probs: (obs, seed); race: (obs,) codes. Every race counts once, whether or not the seeds agree.
    """
    d = race_disagreement(probs, race)
    d = d[np.isfinite(d)]
    return float(d.mean()) if len(d) else float("nan")


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


REPRO_COLUMNS: tuple[str, ...] = ("metric", "by", "scope", "step", "value", "lo", "hi", "n", "n_of", "note")
"""Columns of eval/repro: what, grouped how (all, race_count, status, model, step), which group, the fixed race
of a kappa row (NaN otherwise), the value with its 95% dog-bootstrap interval, n with its unit, a note."""


@dataclass(frozen=True)
class SeedStatus:
    """What status at prediction time needs, per seed: each seed's plateau step and the rule's window."""

    plateau: np.ndarray
    """(dog, seed) 1-based plateau step T* of each seed's states (NaN: none)."""
    n_steps: np.ndarray
    """(dog,) races of each dog."""
    w: int
    """The rule's window: settling needs w + k earlier races."""
    k: int
    """The rule's consecutive flat steps: a plateau at T* is confirmed at T* + k - 1."""
    step_ok: np.ndarray | None = None
    """(dog,) bool, dogs whose step is their race count (debut observed); None: all."""


def repro_table(
    probs: np.ndarray, race: np.ndarray, dog: np.ndarray, step: np.ndarray, won: np.ndarray, status: SeedStatus,
    *, weights: np.ndarray | None = None, kappa_steps: tuple[int, ...] = rp.KAPPA_STEPS,
) -> pd.DataFrame:
    """Reproducibility across the K seeds: spread and churn by race count and status, ensemble vs seed, status kappa.

    - prob_spread: mean over runners of the sample std (ddof = 1) of the seeds' p; rel_spread: that sum over
      the sum of the mean p. A runner is grouped by its own race count (step) and its status under seed 0.
    - top_pick_churn: per race, the share of seed pairs whose top picks differ, averaged over races. A race
      is grouped by its favourite under the seed ensemble (mean p): that runner's race count and status.
      Each race is in exactly one group, so a race where the seeds disagree counts once, like one where
      they agree (counting a race when either seed picked such a dog inflates small groups).
    - race_nll by model: each seed, the ensemble, and ensemble - mean seed (rp.seed_vs_ensemble).
    - fleiss_kappa at each of kappa_steps: the seeds' settled/settling status at that race among dogs that
      ran it (rp.status_labels); NaN with the reason when not estimable; agreement per category beside it.

    Race count and status rows use debut-observed runners only (status.step_ok); 'all' uses every row.
    probs: (obs, seed) race-normalised; race: (obs,) codes; dog: (obs,) codes into status' dogs and the
    columns of weights (B, dog) (bootstrap over dogs; None: no intervals); step: (obs,) 1-based; won: (obs,).
    -> REPRO_COLUMNS.
    """
    probs = np.asarray(probs, dtype=np.float64)
    race, dog, step = (np.asarray(a, dtype=np.int64) for a in (race, dog, step))
    n_dogs = len(status.n_steps)
    w = np.ones((1, n_dogs), np.float32) if weights is None else np.asarray(weights)
    rows: list[tuple] = []
    if probs.shape[1] >= 2 and len(race):
        rows += _spread_churn_rows(probs, race, dog, step, status, w, intervals=weights is not None)
    else:
        note = "one seed: nothing to compare" if len(race) else "no scored races"
        rows += [(m, "all", "all", np.nan, np.nan, np.nan, np.nan, 0, u, note)
                 for m, u in (("prob_spread", "runners"), ("top_pick_churn", "races"))]
    if len(race):
        rows += _ensemble_rows(rp.seed_vs_ensemble(probs, won, race, dog=dog, weights=weights))
    rows += _kappa_rows(status, kappa_steps, weights)
    return pd.DataFrame(rows, columns=list(REPRO_COLUMNS))


def _spread_churn_rows(probs, race, dog, step, status: SeedStatus, w, *, intervals: bool) -> list[tuple]:
    ok = np.ones(len(status.n_steps), bool) if status.step_ok is None else np.asarray(status.step_ok, bool)
    row_status = rp.status_at_step(status.plateau[dog, 0], None, step, status.w, status.k)  # seed 0's status
    sd = prob_spread(probs)  # (obs,)
    disagree = race_disagreement(probs, race)  # (R,)
    fav = race_top_rows(probs.mean(axis=1), race, len(disagree))  # (R,) the ensemble's favourite
    has = fav >= 0
    fav, disagree = fav[has], disagree[has]
    keys = {  # by -> (row labels, race labels); None: not in any group of that kind
        "all": (np.full(len(dog), "all", object), np.full(len(fav), "all", object)),
        "race_count": (_where(stratum_of(step), ok[dog]), _where(stratum_of(step[fav]), ok[dog[fav]])),
        "status": (_where(row_status, ok[dog]), _where(row_status[fav], ok[dog[fav]])),
    }
    ones_r, ones_f = np.ones(len(dog)), np.ones(len(fav))
    measures = (  # metric, unit, per-item numerator and denominator, item's dog, which key
        ("prob_spread", "runners", sd, ones_r, dog, 0),
        ("rel_spread", "runners", sd, probs.mean(axis=1), dog, 0),
        ("top_pick_churn", "races", disagree, ones_f, dog[fav], 1),
    )
    specs, cols = [], []
    for metric, unit, num, den, owner, which in measures:
        for by, labels in keys.items():
            lab = labels[which]
            for scope in _scopes(by, lab):
                m = lab == scope
                cols += [np.bincount(owner[m], weights=num[m], minlength=w.shape[1]),
                         np.bincount(owner[m], weights=den[m], minlength=w.shape[1])]
                specs.append((metric, by, scope, unit, int(m.sum())))
    mat = np.stack(cols, axis=1)  # (dog, 2 * groups)
    point = mat.sum(0)
    reps = weighted(w, mat, dtype=product_dtype(w)).astype(np.float64)  # (B, 2 * groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        values, rep_values = point[0::2] / point[1::2], reps[:, 0::2] / reps[:, 1::2]
    out, at = [], {}
    for g, (metric, by, scope, unit, n) in enumerate(specs):
        lo, hi = _interval(rep_values[:, g]) if intervals else (np.nan, np.nan)
        out.append((metric, by, scope, np.nan, float(values[g]), lo, hi, n, unit, ""))
        at[(metric, by, scope)] = g
    for metric, unit, *_ in measures:  # settled - settling, not matched on step
        a, b = at.get((metric, "status", "settled")), at.get((metric, "status", "settling"))
        if a is None or b is None:
            continue
        lo, hi = _interval(rep_values[:, a] - rep_values[:, b]) if intervals else (np.nan, np.nan)
        out.append((metric, "status", "settled - settling", np.nan, float(values[a] - values[b]), lo, hi,
                    specs[a][4] + specs[b][4], unit, "not matched on race count"))
    return out


def _where(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.asarray(labels, dtype=object).copy()
    out[~keep] = None
    return out


def _scopes(by: str, labels: np.ndarray) -> list[str]:
    order = {"all": ["all"], "race_count": [name for *_, name in STRATA], "status": list(rp.STATUSES)}[by]
    present = set(labels[labels != None].tolist())  # noqa: E711 (object array)
    return [s for s in order if s in present]


def _ensemble_rows(sve: dict) -> list[tuple]:
    n = sve["n_races"]
    rows = [("race_nll", "model", f"seed {j}", np.nan, v, np.nan, np.nan, n, "races", "")
            for j, v in enumerate(sve["seed_nll"])]
    rows.append(("race_nll", "model", "ensemble", np.nan, sve["ensemble_nll"], np.nan, np.nan, n, "races",
                 "mean of the seeds' probabilities"))
    rows.append(("race_nll", "model", "mean seed", np.nan, sve["mean_seed_nll"], np.nan, np.nan, n, "races", ""))
    lo, hi = (np.nan if v is None else v for v in (sve["lo"], sve["hi"]))
    rows.append(("race_nll", "model", "ensemble - mean seed", np.nan, sve["diff"], lo, hi, n, "races",
                 "bootstrap over the winners' dogs"))
    return rows


def _kappa_rows(status: SeedStatus, steps: tuple[int, ...], weights: np.ndarray | None) -> list[tuple]:
    plateau = np.asarray(status.plateau, dtype=np.float64)
    if plateau.ndim != 2 or plateau.shape[1] < 2:
        return [("fleiss_kappa", "step", "settled/settling", float(t), np.nan, np.nan, np.nan, 0, "dogs",
                 "not estimable: one seed") for t in steps]
    out = []
    for t in steps:
        labels, dogs = rp.status_labels(plateau, status.n_steps, t, w=status.w, k=status.k, keep=status.step_ok)
        a = rp.kappa_or_not(labels, weights=weights, cols=None if weights is None else dogs)
        out.append(("fleiss_kappa", "step", "settled/settling", float(t), a.kappa, a.lo, a.hi, a.n, "dogs", a.note))
        out += [("agreement", "step", c, float(t), v, np.nan, np.nan, n, "dogs", "") for c, v, n in a.categories]
    return out
