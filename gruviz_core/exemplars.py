"""The exemplar rule, the only one: which dogs the heatmaps, the divergence panel and the email show.

A typical dog of a status is one with enough races whose mean s is nearest the median mean s of the
dogs of that status with enough races (ties: career length nearest their median, then the lowest
dog index). Never the most extreme dog: with three or more candidates the pick is strictly inside
the range of mean s. Statuses are taken in `STATUS_ORDER`, 'undecided' never.

Pure: one row per dog of `stats/dog.parquet` at the cohort layer in (columns dog_index, dog_id,
n_steps, mean_s, cohort), rows out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["STATUS_ORDER", "MIN_RACES", "typical_dogs", "typical_pair"]

STATUS_ORDER: tuple[str, ...] = ("settled", "settling", "saturated", "partial", "unsaturated")
"""Dog statuses an exemplar may come from, in the order they are shown (plateau-s first, tanh-f after)."""

MIN_RACES = 20
"""A typical dog has at least this many races (the abs-sum plateaus by about race 20), or, where no dog of
its status has, is among the longest half of its status."""


def _candidates(g: pd.DataFrame, min_races: int) -> pd.DataFrame:
    n = g["n_steps"].to_numpy()
    enough = g[n >= min_races]
    if len(enough):
        return enough
    return g[n >= np.median(n)]


def _ranked(g: pd.DataFrame, min_races: int) -> pd.DataFrame:
    """The status's candidates, most typical first."""
    c = _candidates(g, min_races)
    s = pd.to_numeric(c["mean_s"], errors="coerce")
    c = c[s.notna()]
    s = s[s.notna()]
    if not len(c):
        return c
    n = c["n_steps"].astype(float)
    return c.assign(_ds=(s - s.median()).abs(), _dn=(n - n.median()).abs()).sort_values(
        ["_ds", "_dn", "dog_index"], kind="stable"
    ).drop(columns=["_ds", "_dn"])


def typical_dogs(
    dogs: pd.DataFrame, *, n: int = 2, statuses: Sequence[str] = STATUS_ORDER, min_races: int = MIN_RACES
) -> pd.DataFrame:
    """Up to `n` typical dogs, one per status in `statuses` order; where fewer statuses have dogs, the next
    most typical dogs of the first one fill in. dogs: stats/dog.parquet rows of the cohort layer -> those rows."""
    if not len(dogs):
        return dogs.iloc[:0]
    cohort = dogs["cohort"].astype(str)
    ranked = [_ranked(dogs[cohort == s], min_races) for s in statuses if (cohort == s).any()]
    ranked = [r for r in ranked if len(r)]
    picks = [r.iloc[:1] for r in ranked[:n]]
    if ranked and len(picks) < n:
        picks.append(ranked[0].iloc[1 : 1 + n - len(picks)])
    if not picks:
        return dogs.iloc[:0]
    return pd.concat(picks).reset_index(drop=True)


def typical_pair(dogs: pd.DataFrame, *, min_races: int = MIN_RACES) -> list[tuple[str, str]]:
    """[(dog_id a, dog_id b)]: the two typical dogs (of two statuses where there are two), for the two-dog
    divergence; [] with fewer than two candidates."""
    t = typical_dogs(dogs, n=2, min_races=min_races)
    if len(t) < 2:
        return []
    return [(str(t["dog_id"].iloc[0]), str(t["dog_id"].iloc[1]))]
