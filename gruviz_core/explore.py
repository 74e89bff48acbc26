"""What the explorer reads of one run and one dog (records `storage.explore` fills and `reports.explorer`
draws), and the few sums a dog's page needs: win probabilities within a race, prefix search of names.

    DogDirectory   every dog of a run: ids and names (search, closest names)
    RunInfo        a published run in the list of runs
    CohortBand     the quartiles of s by step of one cohort at the cohort layer (stats table `step`)
    DogRecord      one dog: states (seed 0), every seed's score, the runners' scores in its races,
                   its s and F_tau at the cohort layer (stats table `dog_step`), cohort, plateau, rule,
                   and what each unit of seed 0 tracks best (the probe atlas, eval/unit_atlas)
    UnitRecord     one unit of one seed and layer: its rank correlations with the probe's quantities and
                   its value on a sample of dogs' races (`unit_by_step`, `extreme_dogs` summarise it), and
                   against the quantity it tracks best on the probe's own rows
    UnitAtlas      a run's probe atlas (eval/unit_atlas) for the search "units that track X" (`units_tracking`)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gruviz_core.results import DogStates

__all__ = ["RunInfo", "DogDirectory", "CohortBand", "DogRecord", "UnitQuantity", "UnitRecord", "StepQuartiles",
           "DogMean", "UnitAtlas", "TrackingUnit", "race_win_prob", "search_dogs", "unit_by_step", "extreme_dogs",
           "units_tracking"]


@dataclass(frozen=True)
class RunInfo:
    """A published run, as the explorer lists it."""

    run_id: str
    """The run's id (its directory under runs/)."""
    night: str
    """The night it is for ('' when run.json does not say)."""
    n_dogs: int
    """Dogs in the run."""


@dataclass(frozen=True)
class DogDirectory:
    """Every dog of a run, in store order (position = dog_index)."""

    run_id: str
    """The run."""
    ids: Sequence[str]
    """(dog,) dog ids."""
    names: Sequence[str]
    """(dog,) dog names."""


@dataclass(frozen=True)
class CohortBand:
    """One cohort's quartiles of s by step at the cohort layer (stats table `step`)."""

    cohort: str
    """The cohort ('all' for every dog)."""
    step: np.ndarray
    """(S,) int64 steps."""
    n: np.ndarray
    """(S,) int64 dogs at each step."""
    lo: np.ndarray
    """(S,) float64 25th percentile of s."""
    mid: np.ndarray
    """(S,) float64 median of s."""
    hi: np.ndarray
    """(S,) float64 75th percentile of s."""


@dataclass(frozen=True)
class DogRecord:
    """Everything a dog's explorer page shows, as read from the store (nothing computed yet)."""

    run_id: str
    """The run."""
    states: DogStates
    """Every step of the dog under seed position 0: h, z, r (T, L, H), dates, race ids, seed 0's score."""
    seeds: tuple[int, ...]
    """Seed value of each model of the run."""
    scores: np.ndarray
    """(T, S) float32 every seed's score of each of the dog's races (NaN: not scored)."""
    won: np.ndarray
    """(T,) float32 won (1), lost (0), unknown (NaN)."""
    market_prob: np.ndarray
    """(T,) float32 the market's implied win probability (NaN unknown)."""
    field_offsets: np.ndarray
    """(T + 1,) int64: the runners of race t are field_scores[field_offsets[t]:field_offsets[t + 1]]."""
    field_scores: np.ndarray
    """(N, S) float32 scores of every runner in the store in each of the dog's races (the dog included)."""
    s: np.ndarray | None
    """(T,) float64 s = abs-sum / units at the cohort layer (stats dog_step); None when the stats are missing."""
    abs_sum: np.ndarray | None
    """(T,) float64 abs-sum at the cohort layer; None when the stats are missing."""
    f: np.ndarray | None
    """(T,) float64 F_tau at the cohort layer, tau of the run's rule; None when the stats are missing."""
    cohort: str | None
    """The dog's cohort at the cohort layer; None when the stats are missing."""
    plateau_step: float
    """Its plateau step T* at the cohort layer (NaN: none seen, or no stats)."""
    cohort_layer: int
    """The layer whose states decide cohorts (summary.json)."""
    rule: Mapping[str, Any] | None
    """The run's cohort rule {name, version, params} (summary.json); None when absent."""
    band: CohortBand | None
    """Its cohort's band of s by step; None when the stats are missing."""
    band_all: CohortBand | None
    """Every dog's band of s by step; None when the stats are missing."""
    unit_labels: Mapping[int, Mapping[int, tuple[str, float]]] | None = None
    """{layer: {unit: (the quantity it tracks best, its Spearman rho)}} of seed position 0 (eval/unit_atlas);
    None when the run has no probe atlas."""


@dataclass(frozen=True)
class UnitQuantity:
    """How one unit tracks one quantity (a row of eval/unit_atlas)."""

    quantity: str
    """The quantity (gruviz_core.probes.QUANTITIES)."""
    rho: float
    """Spearman correlation of the unit with the quantity over the probed rows."""
    rank: int
    """The unit's rank among its layer's units for this quantity (1 = the largest |rho|)."""
    n_rows: int
    """Rows the correlation was computed on."""


@dataclass(frozen=True)
class UnitRecord:
    """One unit of one seed and layer, as its explorer page shows it (nothing summarised yet)."""

    run_id: str
    """The run."""
    seed: int
    """Seed position (0..seeds-1, as in eval/unit_atlas)."""
    seeds: tuple[int, ...]
    """Seed value of each model of the run."""
    layer: int
    """The layer."""
    unit: int
    """The unit."""
    n_layers: int
    """Layers of the run's models."""
    n_units: int
    """Units per layer."""
    quantities: tuple[UnitQuantity, ...]
    """The unit's correlation with each quantity, largest |rho| first; empty without a probe atlas."""
    best_units: Mapping[str, tuple[tuple[int, float], ...]]
    """{quantity: ((unit, rho), ...)} the layer's units that track it best (at most 5, best first)."""
    atlas_note: str | None
    """Why there are no quantities (no probe atlas, or it failed); None when there are."""
    dog_index: np.ndarray
    """(rows,) int64 the sampled dogs' positions in the run, one per sampled race."""
    step: np.ndarray
    """(rows,) int64 race count (1-based) of each sampled race."""
    value: np.ndarray
    """(rows,) float32 the unit's h after each sampled race."""
    probe_dog: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """(n,) int64 dog positions of the probe's rows (eval/probe_rows) where the quantity the unit tracks best
    (quantities[0]) is known; empty without probe rows."""
    probe_step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """(n,) int64 their race counts."""
    probe_row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """(n,) int64 their store rows."""
    probe_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(n,) float64 the quantity there."""
    probe_h: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """(n,) float32 the unit's h there."""


@dataclass(frozen=True)
class UnitAtlas:
    """A run's probe atlas, as the search "units that track X" reads it."""

    run_id: str
    """The run."""
    seeds: tuple[int, ...]
    """Seed value of each model of the run (the atlas's seed is the position)."""
    table: pd.DataFrame | None
    """eval/unit_atlas: seed, layer, unit, quantity, rho, rank, n_rows; None without a probe atlas."""
    note: str | None
    """Why there is no atlas; None when there is."""


@dataclass(frozen=True)
class TrackingUnit:
    """A unit among those that track a quantity best."""

    seed: int
    """Seed position."""
    layer: int
    """The layer."""
    unit: int
    """The unit."""
    rho: float
    """Its Spearman rho with the quantity."""
    rank: int
    """Its rank among its seed's and layer's units for the quantity (1 = the largest |rho|)."""
    n_rows: int
    """Rows the rho was computed on."""


@dataclass(frozen=True)
class StepQuartiles:
    """A value's quartiles by race count over a sample."""

    step: np.ndarray
    """(S,) int64 race counts with enough rows."""
    n: np.ndarray
    """(S,) int64 rows at each."""
    lo: np.ndarray
    """(S,) float64 25th percentile."""
    mid: np.ndarray
    """(S,) float64 median."""
    hi: np.ndarray
    """(S,) float64 75th percentile."""


@dataclass(frozen=True)
class DogMean:
    """A dog's mean of a value over its sampled races."""

    dog_index: int
    """The dog's position in the run."""
    mean: float
    """Mean over its races."""
    n: int
    """Its races in the sample."""


def race_win_prob(own: np.ndarray, field_scores: np.ndarray, field_offsets: np.ndarray) -> np.ndarray:
    """Softmax of the scores within each race over the runners in the store, for the dog's own runner.

    own: (T, S) the dog's scores; field_scores: (N, S); field_offsets: (T + 1,) -> (T, S) float64
    (NaN where the dog's score is NaN; runners with a NaN score are left out of the race).
    """
    own = np.asarray(own, dtype=np.float64)
    fs = np.asarray(field_scores, dtype=np.float64)
    out = np.full(own.shape, np.nan)
    for t in range(own.shape[0]):
        field = fs[field_offsets[t] : field_offsets[t + 1]]  # (n, S)
        for k in range(own.shape[1]):
            x = field[:, k]
            x = x[np.isfinite(x)]
            if not np.isfinite(own[t, k]) or not len(x):
                continue
            m = x.max()
            out[t, k] = np.exp(own[t, k] - m) / np.exp(x - m).sum()
    return out


def search_dogs(directory: DogDirectory, query: str, *, limit: int = 25) -> list[int]:
    """Positions of the dogs whose name or id starts with `query` (case-insensitive), or one of whose name's
    words does; whole-name and id matches first, then by name. Empty query: nothing."""
    q = query.strip().casefold()
    if not q:
        return []
    first, words = [], []
    for i, (dog_id, name) in enumerate(zip(directory.ids, directory.names)):
        n = str(name).casefold()
        if n.startswith(q) or str(dog_id).casefold().startswith(q):
            first.append(i)
        elif any(w.startswith(q) for w in n.split()[1:]):
            words.append(i)
    key = lambda i: (str(directory.names[i]).casefold(), str(directory.ids[i]))  # noqa: E731
    return (sorted(first, key=key) + sorted(words, key=key))[:limit]


def unit_by_step(step: np.ndarray, value: np.ndarray, *, min_rows: int = 10) -> StepQuartiles:
    """Quartiles of value by step, at the steps with at least `min_rows` finite values. step, value: (rows,)."""
    step = np.asarray(step, dtype=np.int64)
    value = np.asarray(value, dtype=np.float64)
    ok = np.isfinite(value)
    step, value = step[ok], value[ok]
    order = np.lexsort((value, step))
    step, value = step[order], value[order]
    steps, start, n = np.unique(step, return_index=True, return_counts=True)
    keep = n >= min_rows
    q = np.array([np.quantile(value[a : a + c], (0.25, 0.5, 0.75)) for a, c in zip(start[keep], n[keep])])
    q = q.reshape(-1, 3)
    return StepQuartiles(steps[keep], n[keep].astype(np.int64), q[:, 0], q[:, 1], q[:, 2])


def extreme_dogs(dog_index: np.ndarray, value: np.ndarray, *, k: int = 5, min_races: int = 3
                 ) -> tuple[list[DogMean], list[DogMean]]:
    """The k dogs with the highest and the k with the lowest mean value over their sampled races (dogs with at
    least `min_races` finite values). dog_index, value: (rows,) -> (highest first, lowest first)."""
    dog_index = np.asarray(dog_index, dtype=np.int64)
    value = np.asarray(value, dtype=np.float64)
    ok = np.isfinite(value)
    dogs, codes = np.unique(dog_index[ok], return_inverse=True)
    n = np.bincount(codes, minlength=len(dogs))
    mean = np.bincount(codes, weights=value[ok], minlength=len(dogs)) / np.maximum(n, 1)
    elig = np.flatnonzero(n >= min_races)
    by = elig[np.lexsort((dogs[elig], mean[elig]))]  # ascending mean, ties by position

    def rec(i: int) -> DogMean:
        return DogMean(int(dogs[i]), float(mean[i]), int(n[i]))

    return [rec(i) for i in by[::-1][:k]], [rec(i) for i in by[:k]]


def units_tracking(atlas: pd.DataFrame, quantity: str, *, per_layer: int = 5) -> list[TrackingUnit]:
    """The units that track `quantity` best: the `per_layer` best-ranked units of each seed and layer of the
    unit_atlas table, largest |rho| first (ties by seed, layer, unit); units whose rho is undefined are left out."""
    a = atlas[(atlas["quantity"] == quantity) & (atlas["rank"] <= per_layer)]
    a = a[np.isfinite(a["rho"].to_numpy(np.float64))]
    a = a.assign(m=-a["rho"].abs()).sort_values(["m", "seed", "layer", "unit"], kind="stable")
    return [TrackingUnit(int(k), int(layer), int(u), float(rho), int(r), int(n))
            for k, layer, u, rho, r, n in zip(a["seed"], a["layer"], a["unit"], a["rho"], a["rank"], a["n_rows"])]
