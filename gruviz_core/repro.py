"""Reproducibility across the K seed models: debiased CKA between seeds' states, agreement on cohorts.

Linear CKA (Kornblith et al. 2019) from the biased HSIC estimator is inflated at small n: two
unrelated 64-unit representations of 50 dogs score about 0.5. The debiased estimator uses the
unbiased HSIC (Song et al. 2012), whose expectation is 0 for independent representations at any n:

    HSIC_u = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),  K~ = K with 0 diagonal

CKA_u = HSIC_u(X, Y) / sqrt(HSIC_u(X, X) HSIC_u(Y, Y)); it can be slightly negative. The bootstrap
resamples dogs; pairs of copies of the same dog are left out like the diagonal, so a replicate is
still debiased. The permutation baseline shuffles the dogs of one seed (what unrelated states give).

Status agreement (`status_kappa`) is Fleiss' kappa of the seeds' settled/settling status at a fixed
race t (rule `plateau-s`, from each seed's own plateau step), among dogs that ran race t with a status
decided under every seed: 'undecided' is fixed by the race count, the same for every seed, and would
inflate agreement. When one label covers more than `MAX_LABEL_SHARE` of the labels, chance agreement
is about 1 and kappa is an unstable ratio of two tiny numbers (the kappa paradox): it is then "not
estimable" (NaN with the reason), and the per-category agreement with its n is what can be read.

`seed_vs_ensemble`: race NLL of each seed and of the ensemble (the mean of the K seeds' p) on the same
races. -log is convex, so the ensemble's NLL is at most the seeds' mean on every race (Jensen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gruviz_core.comparisons import product_dtype, weighted
from gruviz_core.errors import ConfigError

__all__ = [
    "CKA_STEPS",
    "hsic_unbiased",
    "debiased_cka",
    "biased_cka",
    "cka_replicates",
    "cka_dogs",
    "cka_curve",
    "CKA_COLUMNS",
    "fleiss_kappa",
    "specific_agreement",
    "STATUSES",
    "DECIDED",
    "KAPPA_STEPS",
    "MAX_LABEL_SHARE",
    "status_at_step",
    "Agreement",
    "kappa_or_not",
    "status_labels",
    "seed_vs_ensemble",
]

CKA_STEPS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200)
"""Steps at which the CKA curve is drawn (until fewer than `min_dogs` dogs have raced that often)."""

CKA_COLUMNS: tuple[str, ...] = ("step", "seed_a", "seed_b", "n", "cka", "lo", "hi", "cka_perm", "cka_biased")

STATUSES: tuple[str, ...] = ("settled", "settling", "undecided")
"""Status of a race at prediction time under rule `plateau-s`, in the order reports show them."""

DECIDED: tuple[str, ...] = ("settled", "settling")
"""The statuses a seed's states decide; 'undecided' is fixed by the race count alone."""

KAPPA_STEPS: tuple[int, ...] = (15, 20, 25, 30)
"""Races at which the seeds' agreement on status is measured (both statuses populated there on Iggy)."""

MAX_LABEL_SHARE = 0.95
"""Above this share of one label, kappa is not estimable (chance agreement ~1: the kappa paradox)."""


def _centre(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0)


def hsic_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased HSIC with linear kernels of n >= 4 items. (n, p), (n, q) -> float; O(n p q), no n x n matrix."""
    n = len(x)
    if n < 4 or len(y) != n:
        raise ConfigError(f"hsic_unbiased: needs the same n >= 4 items in both, got {len(x)} and {len(y)}")
    x, y = _centre(x), _centre(y)  # HSIC_u is invariant to shifts; centring keeps the sums small
    kx, ky = (x * x).sum(1), (y * y).sum(1)  # diagonals of K and L
    t1 = float(np.sum((x.T @ y) ** 2) - kx @ ky)  # tr(K~L~)
    sx, sy = x.sum(0), y.sum(0)
    kx1, ky1 = x @ sx - kx, y @ sy - ky  # K~1, L~1
    t2 = float(kx1.sum() * ky1.sum())  # 1'K~1 * 1'L~1
    t3 = float(kx1 @ ky1)  # 1'K~L~1
    return (t1 + t2 / ((n - 1) * (n - 2)) - 2.0 * t3 / (n - 2)) / (n * (n - 3))


def debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from the unbiased HSIC. (n, p), (n, q) -> ~0 for unrelated, 1 for the same up to rotation/scale."""
    xy, xx, yy = hsic_unbiased(x, y), hsic_unbiased(x, x), hsic_unbiased(y, y)
    return float(xy / np.sqrt(xx * yy)) if xx > 0 and yy > 0 else float("nan")


def biased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from the biased HSIC (the classic estimator, inflated at small n). (n, p), (n, q) -> [0, 1]."""
    x, y = _centre(x), _centre(y)
    xy = np.linalg.norm(y.T @ x) ** 2
    xx, yy = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    return float(xy / (xx * yy)) if xx > 0 and yy > 0 else float("nan")


class _Gram:
    """One representation's zero-diagonal linear Gram matrix and its bootstrap sums, shared across seed pairs."""

    def __init__(self, x: np.ndarray, w: np.ndarray):
        x = _centre(x)
        k = (x @ x.T).astype(np.float32)
        np.fill_diagonal(k, 0.0)
        self.k, self.w = k, w
        self.kw = (w @ k).astype(np.float64)  # (B, n): sum over the other dogs of w_j K_ij
        self.self_hsic = _hsic_weighted(k * k, self.kw, self.kw, w)


def _hsic_weighted(kl: np.ndarray, kw: np.ndarray, lw: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Unbiased HSIC of B multisets of dogs given by multiplicities w (B, n), pairs of one dog left out.

    kl = K o L with a zero diagonal (n, n); kw, lw = w @ K, w @ L (B, n). -> (B,).
    """
    w64 = w.astype(np.float64)
    n_tot = w64.sum(1)
    t1 = ((w @ kl).astype(np.float64) * w64).sum(1)
    t2 = (kw * w64).sum(1) * (lw * w64).sum(1)
    t3 = (w64 * kw * lw).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (t1 + t2 / ((n_tot - 1) * (n_tot - 2)) - 2.0 * t3 / (n_tot - 2)) / (n_tot * (n_tot - 3))


def _cka_weighted(gx: _Gram, gy: _Gram) -> np.ndarray:
    xy = _hsic_weighted(gx.k * gy.k, gx.kw, gy.kw, gx.w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return xy / np.sqrt(gx.self_hsic * gy.self_hsic)


def cka_replicates(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Debiased CKA under dog multiplicities (B, n) (e.g. Poisson(1) bootstrap weights). -> (B,)."""
    w = np.asarray(weights, dtype=np.float32)
    return _cka_weighted(_Gram(x, w), _Gram(y, w))


def cka_dogs(
    n_steps: np.ndarray, *, seed: int, n_per_step: int = 1000, min_dogs: int = 200,
    steps: Sequence[int] = CKA_STEPS,
) -> dict[int, np.ndarray]:
    """Dogs compared at each step: up to n_per_step drawn among dogs with >= t races; stops below min_dogs.

    One random priority per dog, so the same dogs recur across steps (fewer states to read). -> {t: dogs (sorted)}.
    """
    n_steps = np.asarray(n_steps)
    priority = np.random.default_rng(seed).permutation(len(n_steps))
    by_priority = np.argsort(priority)  # dogs in priority order
    out = {}
    for t in sorted(steps):
        have = by_priority[n_steps[by_priority] >= t]
        if len(have) < min_dogs:
            break
        out[int(t)] = np.sort(have[:n_per_step])
    return out


def cka_curve(
    states: dict[int, dict[int, np.ndarray]], *, weights_of, seed: int, n_perm: int = 5,
) -> pd.DataFrame:
    """Debiased CKA between every pair of seeds at each step, with a bootstrap interval and a permutation baseline.

    states: step -> seed -> (n_t, H) top-layer states of the step's dogs (same dogs, same order);
    weights_of(n) -> (B, n) bootstrap weights. -> CKA_COLUMNS.
    """
    rng = np.random.default_rng([seed, 3])
    out = []
    for t, by_seed in sorted(states.items()):
        seeds = sorted(by_seed)
        n = len(by_seed[seeds[0]])
        w = np.asarray(weights_of(n), dtype=np.float32)
        grams = {a: _Gram(by_seed[a], w) for a in seeds}
        cent = {a: _centre(by_seed[a]) for a in seeds}
        self_h = {a: hsic_unbiased(cent[a], cent[a]) for a in seeds}  # the same under any permutation of the dogs
        for i, a in enumerate(seeds):
            for b in seeds[i + 1:]:
                x, y = cent[a], cent[b]
                norm = np.sqrt(self_h[a] * self_h[b]) if self_h[a] > 0 and self_h[b] > 0 else np.nan
                reps = _cka_weighted(grams[a], grams[b])
                reps = reps[np.isfinite(reps)]
                lo, hi = np.percentile(reps, [2.5, 97.5]) if len(reps) >= 2 else (np.nan, np.nan)
                perm = float(np.mean([hsic_unbiased(x, y[rng.permutation(n)]) for _ in range(n_perm)]) / norm)
                out.append((t, a, b, n, float(hsic_unbiased(x, y) / norm), float(lo), float(hi), perm,
                            biased_cka(x, y)))
    return pd.DataFrame(out, columns=list(CKA_COLUMNS))


def fleiss_kappa(labels: np.ndarray) -> float:
    """Fleiss' kappa of K raters (seeds) labelling N items. labels: (N, K) -> 1 = full agreement, 0 = chance.

    NaN when there are no items or every label is the same category (chance agreement is then 1).
    """
    labels = np.asarray(labels, dtype=object)
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise ConfigError(f"fleiss_kappa: labels must be (items, raters >= 2), got shape {labels.shape}")
    n = len(labels)
    if n == 0:
        return float("nan")
    return float(_kappa_of(_counts(labels), np.ones((1, n)))[0])


def specific_agreement(labels: np.ndarray) -> dict[str, tuple[float, int]]:
    """Per category: the chance that another seed agrees with a seed that chose it, and the items any seed put there.

    labels: (N, K) -> {category: (agreement, n items)}; symmetric in the seeds.
    """
    labels = np.asarray(labels, dtype=object)
    k = labels.shape[1]
    cats = [str(c) for c in pd.unique(labels.ravel())]
    counts = _counts(labels, cats)
    out = {}
    for j, c in enumerate(cats):
        n_c = counts[:, j]
        den = float((n_c * (k - 1)).sum())
        out[c] = (float((n_c * (n_c - 1)).sum() / den) if den else float("nan"), int((n_c > 0).sum()))
    return out


def _counts(labels: np.ndarray, cats: Sequence[str] | None = None) -> np.ndarray:
    """(N, K) labels -> (N, C) how many raters gave each category."""
    cats = [str(c) for c in pd.unique(labels.ravel())] if cats is None else list(cats)
    s = labels.astype(str)
    return np.stack([(s == c).sum(1) for c in cats], axis=1).astype(np.float64)


def _kappa_of(counts: np.ndarray, weights: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """Fleiss' kappa under item weights. counts: (N, C) raters per category, every row summing to K;
    weights: (B, N), or (B, items) of which `cols` are the N -> (B,); NaN where chance agreement is 1 or no item
    has weight.

    The products run in float64 on whole numbers (counts, agreeing pairs, bootstrap counts), by blocks of
    replicates: every sum is exact (below 2**53), so the answer is the same whatever the blocking, and a block's
    float copy of the weights is all the memory it takes (a million dogs' float32 copy was 4 GB)."""
    counts = np.asarray(counts, dtype=np.float64)
    k = counts[0].sum() if len(counts) else 0.0
    pairs = np.column_stack([(counts * counts).sum(1) - k, counts])  # (N, 1 + C): agreeing ordered pairs, counts
    sums = weighted(weights, pairs, cols, dtype=np.float64)  # (B, 1 + C)
    with np.errstate(invalid="ignore", divide="ignore"):
        tot = sums[:, 1:].sum(1) / k  # every item's counts sum to k: the items' total weight, exactly
        p_obs = sums[:, 0] / (k * (k - 1)) / tot
        p_c = sums[:, 1:] / (k * tot[:, None])  # (B, C)
        pe = (p_c * p_c).sum(1)
        return np.where(pe < 1.0 - 1e-12, (p_obs - pe) / (1.0 - pe), np.nan)


def status_at_step(
    plateau_step: np.ndarray, n_steps: np.ndarray | None, t: int | np.ndarray, w: int, k: int,
) -> np.ndarray:
    """Status at prediction time of race t from the plateau step alone (rule `plateau-s`).

    settled: T* + k - 1 <= t - 1 (plateau confirmed by the race before); settling: not settled and
    t - 1 >= w + k (enough earlier races to have seen one); undecided: otherwise. plateau_step: (n,)
    1-based T* or NaN; n_steps: (n,) races of the dog, or None when every row has a race t; t: int
    or (n,). -> (n,) object labels, '' where the dog has no race t (n_steps < t).
    """
    if w < 1 or k < 1:
        raise ConfigError(f"status_at_step: need w >= 1 and k >= 1, got w={w} k={k}")
    ts = np.asarray(plateau_step, dtype=np.float64)
    t = np.broadcast_to(np.asarray(t), ts.shape)
    settled = ts + k - 1 <= t - 1  # NaN (no plateau) -> False
    out = np.full(ts.shape, "undecided", dtype=object)
    out[~settled & (t - 1 >= w + k)] = "settling"
    out[settled] = "settled"
    if n_steps is not None:
        out[np.asarray(n_steps) < t] = ""
    return out


def status_labels(
    plateau: np.ndarray, n_steps: np.ndarray, t: int, *, w: int, k: int, keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every seed's status at race t for the dogs whose status every seed decides.

    plateau: (dog, seed) plateau steps; n_steps: (dog,); keep: (dog,) bool, dogs allowed at all (e.g.
    debut observed). Items are dogs that ran race t (n_steps >= t) labelled settled or settling under
    every seed; beyond race w + k that is every dog that ran it, before it none.
    -> (labels (N, seed) object, dogs (N,) indices).
    """
    plateau = np.asarray(plateau, dtype=np.float64)
    lab = np.stack([status_at_step(plateau[:, j], n_steps, t, w, k) for j in range(plateau.shape[1])], axis=1)
    ok = np.isin(lab, DECIDED).all(axis=1)
    if keep is not None:
        ok &= np.asarray(keep, dtype=bool)
    dogs = np.flatnonzero(ok)
    return lab[dogs], dogs


@dataclass(frozen=True)
class Agreement:
    """The seeds' agreement on the labels of N items: Fleiss' kappa, or why it is not estimable, and per category."""

    kappa: float
    """Fleiss' kappa (1 = full agreement, 0 = chance); NaN when not estimable."""
    lo: float
    """95% bootstrap interval low (NaN without weights or when not estimable)."""
    hi: float
    """95% bootstrap interval high."""
    n: int
    """Items (dogs) labelled."""
    note: str
    """'' when kappa is estimable, else 'not estimable: <reason>'."""
    top_label: str
    """The most frequent label ('' without items)."""
    top_share: float
    """Its share of all N x K labels."""
    categories: tuple[tuple[str, float, int], ...]
    """Per category: (label, chance that another seed agrees with a seed that chose it, items any seed put there)."""


def kappa_or_not(
    labels: np.ndarray, *, max_share: float = MAX_LABEL_SHARE, weights: np.ndarray | None = None,
    cols: np.ndarray | None = None,
) -> Agreement:
    """Fleiss' kappa of (N, K) labels, "not estimable" when one label covers more than max_share of them.

    weights: (B, N) item bootstrap weights for the interval (e.g. Poisson(1) per dog), or None; or (B, dogs)
    with `cols` the N labelled dogs' columns (selected a block of replicates at a time, never copied whole).
    """
    labels = np.asarray(labels, dtype=object)
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise ConfigError(f"kappa_or_not: labels must be (items, raters >= 2), got shape {labels.shape}")
    n = len(labels)
    if n == 0:
        return Agreement(np.nan, np.nan, np.nan, 0, "not estimable: no decided dogs", "", np.nan, ())
    cats = sorted(str(c) for c in pd.unique(labels.ravel()))
    counts = _counts(labels, cats)
    share = counts.sum(0) / counts.sum()
    top = int(np.argmax(share))
    agree = specific_agreement(labels)
    per_cat = tuple((c, *agree[c]) for c in cats)
    if share[top] > max_share:
        note = (f"not estimable: one label ({cats[top]}) covers {100 * share[top]:.2f}% of the {n:,} decided dogs' "
                "labels, so chance agreement is about 1")
        return Agreement(np.nan, np.nan, np.nan, n, note, cats[top], float(share[top]), per_cat)
    if n < 2:
        return Agreement(np.nan, np.nan, np.nan, n, "not estimable: one decided dog", cats[top], float(share[top]),
                         per_cat)
    kappa = float(_kappa_of(counts, np.ones((1, n)))[0])
    lo = hi = np.nan
    if weights is not None:
        reps = _kappa_of(counts, weights, cols)
        reps = reps[np.isfinite(reps)]
        if len(reps) >= 2:
            lo, hi = (float(v) for v in np.percentile(reps, [2.5, 97.5]))
    return Agreement(kappa, lo, hi, n, "", cats[top], float(share[top]), per_cat)


def seed_vs_ensemble(
    probs: np.ndarray, won: np.ndarray, race: np.ndarray, *, dog: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> dict:
    """Race NLL of each seed and of the seed ensemble (mean of the K seeds' p) on the same races.

    probs: (n, K) race-normalised win probabilities; won: (n,) 0/1 (dead heats: the winners' mean);
    race: (n,) codes; dog: (n,) codes into the columns of weights (B, dog) for a bootstrap over dogs of
    the difference, each race's term belonging to its winner's dog. Races without a winner are left out.
    -> {seed_nll: [K floats], ensemble_nll, mean_seed_nll, diff (ensemble - mean seed; <= 0 by Jensen),
    lo, hi (95% interval of diff, None without weights), n_races}.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1 or len(probs) != len(won) or len(won) != len(race):
        raise ConfigError(f"seed_vs_ensemble: probs must be (n, K >= 1) with won and race (n,); got {probs.shape}, "
                          f"{np.shape(won)}, {np.shape(race)}")
    won = np.asarray(won, dtype=np.float64)
    race = np.asarray(race, dtype=np.int64)
    n_r = int(race.max()) + 1 if len(race) else 0
    winners = np.bincount(race, weights=won, minlength=n_r)
    share = np.where(won > 0, won / np.maximum(winners[race], 1e-300), 0.0)  # (n,) this row's part of its race
    nll = -np.log(np.clip(np.column_stack([probs, probs.mean(axis=1)]), 1e-12, 1.0))  # (n, K + 1)
    terms = share[:, None] * nll  # (n, K + 1); zero on losers
    n_races = int((winners > 0).sum())
    if n_races == 0:
        nan = float("nan")
        return {"seed_nll": [nan] * probs.shape[1], "ensemble_nll": nan, "mean_seed_nll": nan, "diff": nan,
                "lo": None, "hi": None, "n_races": 0}
    tot = terms.sum(0) / share.sum()
    seed_nll = [float(v) for v in tot[:-1]]
    out = {"seed_nll": seed_nll, "ensemble_nll": float(tot[-1]), "mean_seed_nll": float(np.mean(seed_nll)),
           "diff": float(tot[-1] - np.mean(tot[:-1])), "lo": None, "hi": None, "n_races": n_races}
    if dog is not None and weights is not None:
        w = np.asarray(weights)
        dt = product_dtype(w)
        d = np.asarray(dog, dtype=np.int64)
        diff_d = np.bincount(d, weights=terms[:, -1] - terms[:, :-1].mean(axis=1), minlength=w.shape[1])
        cnt_d = np.bincount(d, weights=share, minlength=w.shape[1])
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = weighted(w, diff_d, dtype=dt).astype(np.float64) / weighted(w, cnt_d, dtype=dt).astype(np.float64)
        reps = reps[np.isfinite(reps)]
        if len(reps) >= 2:
            out["lo"], out["hi"] = (float(v) for v in np.percentile(reps, [2.5, 97.5]))
    return out
