"""Reproducibility across the K seed models: debiased CKA between seeds' states, agreement on cohorts.

Linear CKA (Kornblith et al. 2019) from the biased HSIC estimator is inflated at small n: two
unrelated 64-unit representations of 50 dogs score about 0.5. The debiased estimator uses the
unbiased HSIC (Song et al. 2012), whose expectation is 0 for independent representations at any n:

    HSIC_u = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),  K~ = K with 0 diagonal

CKA_u = HSIC_u(X, Y) / sqrt(HSIC_u(X, X) HSIC_u(Y, Y)); it can be slightly negative. The bootstrap
resamples dogs; pairs of copies of the same dog are left out like the diagonal, so a replicate is
still debiased. The permutation baseline shuffles the dogs of one seed (what unrelated states give).

Cohort agreement is measured among decided dogs only (enough races to have checked a plateau): the
'undecided' label is fixed by the race count, the same for every seed, and would inflate agreement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

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
]

CKA_STEPS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200)
"""Steps at which the CKA curve is drawn (until fewer than `min_dogs` dogs have raced that often)."""

CKA_COLUMNS: tuple[str, ...] = ("step", "seed_a", "seed_b", "n", "cka", "lo", "hi", "cka_perm", "cka_biased")


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
    n, k = labels.shape
    if n == 0:
        return float("nan")
    counts = _counts(labels)  # (N, C)
    p_i = ((counts * counts).sum(1) - k) / (k * (k - 1))
    p_c = counts.sum(0) / (n * k)
    pe = float((p_c * p_c).sum())
    return float((p_i.mean() - pe) / (1.0 - pe)) if pe < 1.0 else float("nan")


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
