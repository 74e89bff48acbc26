"""What a published run gives the report: typed records, read by `storage.results`, presented by `reports`.

`RunResults` holds a run's metadata, its stats summary and headline (plain dicts for now) and one
pandas DataFrame per run table (`gruviz_core.tables`: the columns are guaranteed; None when the run
has no such table). `DogStates` is one dog's every step under one seed; `DogStatesSet` the few
dogs a report draws. `NightHeadline` is an earlier night for the trend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DogStates", "DogStatesSet", "NightHeadline", "RunResults", "StatsSummary"]


@dataclass(frozen=True)
class DogStates:
    """Every step of one dog under one seed."""

    dog_index: int
    """Position of the dog in the run."""
    dog_id: str
    """The dog's id."""
    dog_name: str
    """The dog's name."""
    step: np.ndarray
    """(T,) int32 1-based step."""
    race_date: np.ndarray
    """(T,) datetime64[D] (NaT unknown)."""
    race_id: np.ndarray
    """(T,) str."""
    score: np.ndarray
    """(T,) float32 this seed's score of each race."""
    h: np.ndarray
    """(T, L, H) float32 state after each race."""
    z: np.ndarray
    """(T, L, H) float32 update gate."""
    r: np.ndarray
    """(T, L, H) float32 reset gate."""


@dataclass(frozen=True)
class DogStatesSet:
    """The states of the few dogs a report draws (seed 0), and why any could not be read."""

    by_id: Mapping[str, DogStates] = field(default_factory=dict)
    """Dog id -> its states, for every dog that could be read."""
    problems: tuple[str, ...] = ()
    """'<dog id>: <error>' for each dog asked for that could not be read."""
    note: str | None = None
    """Why no dog could be read at all (no states store, a broken store); None when the store opened."""


@dataclass(frozen=True)
class NightHeadline:
    """An earlier night's headline numbers, for the trend across nights."""

    night: str
    """The night (YYYY-MM-DD)."""
    headline: Mapping[str, Any]
    """Its eval/headline.json."""


@dataclass(frozen=True)
class StatsSummary:
    """stats/summary.json: what the stats stage found, written once by it and read by evaluate, the model-change
    watch and the report. Nested parts are JSON objects whose shape gruviz_core.stats defines."""

    n_dogs: int
    """Dogs in the run."""
    n_obs: int
    """Rows (dog-steps) in the run."""
    n_layers: int
    """GRU layers."""
    n_units: int
    """Units per layer."""
    seeds: tuple[int, ...]
    """Seed value of each model of the set."""
    cohort_counts: Mapping[str, int]
    """Dogs per cohort (status) on the cohort layer."""
    cohort_layer: int
    """The layer the cohorts are drawn on."""
    rule: Mapping[str, Any]
    """The cohort rule (gruviz_core.cohorts.CohortRule.to_dict)."""
    cohort_thresholds: Mapping[str, Any] | None = None
    """Thresholds the rule settled on (theta, low, tau), when it has them."""
    effective_dim: tuple[float, ...] = ()
    """Participation ratio of seed 0's states, per layer."""
    effective_dim_by_seed: Mapping[str, Any] = field(default_factory=dict)
    """{seed position: per-layer effective dimension}."""
    dead_units: int = 0
    """Units of seed 0 that never move (gruviz_core.stats unit health)."""
    always_saturated_units: int = 0
    """Units of seed 0 pinned near +-1 on most rows."""
    unit_health_by_seed: Mapping[str, Any] = field(default_factory=dict)
    """{seed position: {dead, always_saturated}}."""
    unit_health_params: Mapping[str, Any] = field(default_factory=dict)
    """The thresholds of the unit health counts."""
    magnitude: Mapping[str, Any] = field(default_factory=dict)
    """Magnitude saturation in numbers (gruviz_core.stats.magnitude_summary)."""
    plateau_curve: Mapping[str, Any] = field(default_factory=dict)
    """The abs-sum's population curve (gruviz_core.stats.population_curve)."""
    km_grid: tuple[Mapping[str, Any], ...] = ()
    """Kaplan-Meier median time to plateau across the (w, delta, k) grid: {param, value, median}."""
    reliance: Mapping[str, Any] = field(default_factory=dict)
    """Write fraction and relative movement by race (medians)."""
    rows_missing: int = 0
    """Rows without a summary (a block's rows never written): 0 in a whole run."""
    bytes_scanned: int = 0
    """Bytes of states the stage decoded (0: it reads the blocks' summaries only)."""
    seconds: float = 0.0
    """Wall time of the stage."""


@dataclass(frozen=True)
class RunResults:
    """Everything a published run gives the report; each table has its `gruviz_core.tables` columns."""

    name: str
    """The run directory's name (the night when run.json and the headline do not say)."""
    meta: Mapping[str, Any]
    """run.json ({} when absent): run_id, night, snapshot_id, model_set_id, seeds, code_version, device, ..."""
    summary: StatsSummary | None
    """stats/summary.json; None when absent."""
    headline: Mapping[str, Any]
    """eval/headline.json ({} when absent): period, race_nll, main_effect, negative_control, within_dog,
    dose_trend, n_comparisons, plateau_median_km, rule, dogs, obs, cohort_counts, exemplars, ..."""
    dog_step: pd.DataFrame | None = None
    """stats/dog_step.parquet, the columns of `gruviz_core.tables.DOG_STEP_COLUMNS`: one row per dog, step and layer."""
    dog: pd.DataFrame | None = None
    """stats/dog.parquet: one row per dog and layer (tail F `f_tail`, `debut_observed`)."""
    unit: pd.DataFrame | None = None
    """stats/unit.parquet: one row per seed, layer, gate and unit."""
    step: pd.DataFrame | None = None
    """stats/step.parquet: quartiles of s and F_0.95 per layer, step and cohort."""
    plateau: pd.DataFrame | None = None
    """stats/plateau.parquet: Kaplan-Meier share not yet plateaued per layer and step."""
    cohort_metrics: pd.DataFrame | None = None
    """eval/cohort_metrics.parquet: metric per cohort and source, with intervals."""
    calibration: pd.DataFrame | None = None
    """eval/calibration.parquet: predicted vs observed win rate per cohort and bin."""
    status_compare: pd.DataFrame | None = None
    """eval/status_compare.parquet: metrics per step stratum and saturation status at prediction time."""
    status_effect: pd.DataFrame | None = None
    """eval/status_effect.parquet: comparisons (a - b) with intervals, sizes and whether they are comparable."""
    dose_response: pd.DataFrame | None = None
    """eval/dose_response.parquet: the metric by decile of the saturation score at prediction time."""
    sensitivity: pd.DataFrame | None = None
    """eval/sensitivity.parquet: group sizes and the main effect at each point of a grid over the rule."""
    repro: pd.DataFrame | None = None
    """eval/repro.parquet: prediction spread, churn and cohort agreement across seeds, with each value's n."""
    cka: pd.DataFrame | None = None
    """eval/cka.parquet: debiased linear CKA between seeds per step, with n, interval and permutation baseline."""
    resilience: pd.DataFrame | None = None
    """eval/resilience.parquet: effect of perturbations per scope, kind, severity, target-step bucket and plateau."""
    resilience_contrast: pd.DataFrame | None = None
    """eval/resilience_contrast.parquet: early minus late (and before minus after the plateau) within kind and severity."""
    divergence: pd.DataFrame | None = None
    """eval/divergence.parquet: distance between two dogs' states per step."""
    probes: pd.DataFrame | None = None
    """eval/probes.parquet: probe score (R² or AUC) per seed, layer, quantity and race-count bucket, with the control
    task's score and the selectivity (gruviz_core.probes)."""
    unit_atlas: pd.DataFrame | None = None
    """eval/unit_atlas.parquet: Spearman rho of every unit with every quantity, per seed and layer."""
    probe_record: Mapping[str, Any] | None = None
    """eval/probe.json: what the probe stage sampled and how long it took, or {"error": why it failed}; None when
    the stage did not run."""
    drift: pd.DataFrame | None = None
    """eval/drift.parquet: per model input, the night's rows against the set's training window (gruviz_core.drift)."""
    drift_record: Mapping[str, Any] | None = None
    """eval/drift.json: the windows compared and their rows, the threshold, the flagged inputs, or {"error": why};
    None when the stage did not run."""
    model_change_record: Mapping[str, Any] | None = None
    """eval/model_change.json: whether a new model set took over tonight (and from which), the page-one numbers that
    moved; None when the stage did not run."""
    determinism_record: Mapping[str, Any] | None = None
    """eval/determinism.json: the watched dogs whose history did not change since last night under the same model set,
    and any whose stored states differ (first differing step, likely causes); None when the stage did not run."""
