"""Race-level probability helpers: softmax within a race (conditional logit) and win metrics.

Rows are runners; `race` is an integer code per row (e.g. from `pd.factorize(race_id)`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["race_codes", "race_softmax", "renormalise", "win_log_loss", "brier", "hit_rate", "uniform_probs"]

_EPS = 1e-12


def race_codes(race_id: np.ndarray) -> np.ndarray:
    """(obs,) race ids -> (obs,) int64 codes 0..n_races-1."""
    import pandas as pd

    return pd.factorize(np.asarray(race_id), sort=False)[0].astype(np.int64)


def race_softmax(scores: np.ndarray, race: np.ndarray) -> np.ndarray:
    """Win probabilities from scores by a softmax within each race. (obs,) -> (obs,)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = int(race.max()) + 1 if len(race) else 0
    top = np.full(n, -np.inf)
    np.maximum.at(top, race, scores)
    e = np.exp(scores - top[race])
    tot = np.bincount(race, weights=e, minlength=n)
    return e / tot[race]


def renormalise(p: np.ndarray, race: np.ndarray) -> np.ndarray:
    """Probabilities scaled to sum to 1 within each race; NaN where any runner lacks one. (obs,) -> (obs,)."""
    p = np.asarray(p, dtype=np.float64)
    n = int(race.max()) + 1 if len(race) else 0
    bad = np.bincount(race, weights=~np.isfinite(p), minlength=n) > 0
    tot = np.bincount(race, weights=np.where(np.isfinite(p), p, 0.0), minlength=n)
    out = p / np.where(tot > 0, tot, np.nan)[race]
    out[bad[race]] = np.nan
    return out


def uniform_probs(race: np.ndarray) -> np.ndarray:
    """1 / field size for every runner. (obs,) -> (obs,)."""
    return 1.0 / np.bincount(race)[race]


def win_log_loss(p: np.ndarray, won: np.ndarray) -> np.ndarray:
    """Per-row binary log-loss of the win probability. (obs,) -> (obs,)."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return -(won * np.log(p) + (1 - won) * np.log1p(-p))


def brier(p: np.ndarray, won: np.ndarray) -> np.ndarray:
    """Per-row squared error of the win probability. (obs,) -> (obs,)."""
    return (np.asarray(p, dtype=np.float64) - won) ** 2


def hit_rate(p: np.ndarray, won: np.ndarray, race: np.ndarray) -> float:
    """Share of races whose top-probability runner won (ties: first row)."""
    order = np.lexsort((-np.asarray(p), race))
    first = np.ones(len(order), dtype=bool)
    first[1:] = race[order][1:] != race[order][:-1]
    return float(np.mean(won[order][first])) if first.any() else float("nan")
