"""Cohorts of dogs by magnitude saturation: a named, versioned rule and its threshold sensitivity.

    saturated    T* exists and the mean F_tau from T* on is >= theta
    unsaturated  the mean F_tau over the tail stays at or below `low`
    partial      neither (some units pinned, not enough to call it saturated)
    undecided    no plateau seen and too few races (< w + k) to have checked one: right-censored

The tail is the steps from T* on when there is a plateau, else the steps after the warm-up w.

`scale="absolute"` reads theta and low as fractions of units. `scale="quantile"` (the default)
reads them as quantiles of the tail F over the decided dogs of the run: a trained model pins the
same units for nearly every dog (on the Iggy data every decided dog has 11-38% of its units at
|h| >= 0.95 after its plateau), so absolute thresholds put everyone in one cohort, while quantiles
always compare the most with the least saturated dogs. `resolve_thresholds` gives the absolute
values a run used; they are stored with the cohort counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from gruviz_core.errors import ConfigError

__all__ = [
    "COHORTS",
    "CohortRule",
    "DEFAULT_RULE",
    "min_steps",
    "tail_start",
    "tail_mean",
    "assign_cohorts",
    "resolve_thresholds",
    "sensitivity_cohorts",
    "THETA_GRID",
    "exemplar_pair",
]

COHORTS: tuple[str, ...] = ("saturated", "partial", "unsaturated", "undecided")
"""Cohort names, in the order reports show them."""

THETA_GRID: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)
"""Default theta values of the sensitivity grid (tau runs over stats.TAUS)."""


@dataclass(frozen=True)
class CohortRule:
    """The rule that puts each dog in a cohort; stored with every run so nights compare like with like."""

    name: str = "plateau-f"
    """Rule family; change it when the logic changes, not the numbers."""
    version: int = 1
    """Bump when a default below changes."""
    w: int = 5
    """Window in steps over which the relative change of s is measured."""
    delta: float = 0.05
    """Relative change of s over w steps below which s counts as flat."""
    k: int = 3
    """Consecutive flat steps needed to call a plateau."""
    tau: float = 0.95
    """|h| >= tau counts a unit as near the boundary (F_tau)."""
    theta: float = 0.75
    """Mean F_tau from T* on at or above which a dog is saturated (a quantile when scale='quantile')."""
    low: float = 0.25
    """Mean F_tau over the tail at or below which a dog is unsaturated (a quantile when scale='quantile')."""
    layer: int = -1
    """Layer whose states decide the dog's cohort (-1: top layer)."""
    scale: str = "quantile"
    """'quantile': theta and low are quantiles of the decided dogs' tail F; 'absolute': shares of units."""

    def __post_init__(self) -> None:
        if self.w < 1 or self.k < 1 or self.delta <= 0:
            raise ConfigError(f"cohort rule {self.name}: need w >= 1, k >= 1, delta > 0; got {self}")
        if not 0 <= self.low <= self.theta <= 1:
            raise ConfigError(f"cohort rule {self.name}: need 0 <= low <= theta <= 1; got low={self.low} theta={self.theta}")
        if self.scale not in ("quantile", "absolute"):
            raise ConfigError(f"cohort rule {self.name}: scale must be 'quantile' or 'absolute'; got {self.scale!r}")
        if not 0 < self.tau < 1:
            raise ConfigError(f"cohort rule {self.name}: tau must be in (0, 1); got {self.tau}")

    def to_dict(self) -> dict:
        """{name, version, params} as stored in summary.json and run.json."""
        d = asdict(self)
        return {"name": d.pop("name"), "version": d.pop("version"), "params": d}

    @classmethod
    def from_dict(cls, d: dict) -> "CohortRule":
        """From {name, version, params} or a flat {name, tau, theta, ...} (settings); unknown keys are an error."""
        flat = {**{k: v for k, v in d.items() if k != "params"}, **d.get("params", {})}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ConfigError(f"cohort rule {d.get('name')!r}: unknown parameters {unknown}; known: {sorted(known)}")
        if "version" in flat:
            flat["version"] = int(flat["version"])
        if "theta" in flat and "low" not in flat:  # a theta alone below the default low keeps the rule valid
            flat["low"] = min(cls.low, float(flat["theta"]))
        return cls(**flat)

    @classmethod
    def coerce(cls, rule: "CohortRule | dict | None") -> "CohortRule":
        """A rule from a rule, a dict (see from_dict) or None (the default rule)."""
        if rule is None:
            return cls()
        return rule if isinstance(rule, cls) else cls.from_dict(rule)

    def with_thresholds(self, *, tau: float, theta: float) -> "CohortRule":
        """The same rule at other thresholds (low kept <= theta)."""
        return replace(self, tau=tau, theta=theta, low=min(self.low, theta))


DEFAULT_RULE = CohortRule()


def min_steps(rule: CohortRule) -> int:
    """Fewest races with which a plateau can be checked once."""
    return rule.w + rule.k


def tail_start(plateau: np.ndarray, rule: CohortRule) -> np.ndarray:
    """First step of each dog's tail: T* if there is one, else w + 1. (dog,) -> (dog,) float."""
    return np.where(np.isfinite(plateau), plateau, rule.w + 1.0)


def tail_mean(f: np.ndarray, step: np.ndarray, offsets: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Mean of a per-row series over each dog's rows with step >= start. f: (obs,) -> (dog,), NaN if none."""
    sizes = np.diff(offsets)
    dog = np.repeat(np.arange(len(sizes)), sizes)
    keep = np.asarray(step) >= start[dog]
    tot = np.bincount(dog[keep], weights=np.asarray(f, dtype=np.float64)[keep], minlength=len(sizes))
    cnt = np.bincount(dog[keep], minlength=len(sizes))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def resolve_thresholds(
    plateau: np.ndarray, n_steps: np.ndarray, f_tail: np.ndarray, rule: CohortRule
) -> tuple[float, float]:
    """(theta, low) as shares of units: as given, or the quantiles of the decided dogs' tail F."""
    if rule.scale == "absolute":
        return rule.theta, rule.low
    decided = ~((~np.isfinite(plateau)) & (np.asarray(n_steps) < min_steps(rule)))
    vals = np.asarray(f_tail, dtype=np.float64)[decided]
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return float("nan"), float("nan")
    theta, low = np.quantile(vals, [rule.theta, rule.low])
    return float(theta), float(low)


def assign_cohorts(plateau: np.ndarray, n_steps: np.ndarray, f_tail: np.ndarray, rule: CohortRule) -> np.ndarray:
    """Cohort of each dog. plateau (dog,) float T* or NaN, n_steps (dog,), f_tail (dog,) -> (dog,) object."""
    theta, low = resolve_thresholds(plateau, n_steps, f_tail, rule)
    has = np.isfinite(plateau)
    short = (~has) & (np.asarray(n_steps) < min_steps(rule))
    f = np.nan_to_num(np.asarray(f_tail, dtype=np.float64), nan=0.0)
    out = np.full(len(plateau), "partial", dtype=object)
    out[f <= low] = "unsaturated"
    out[has & (f >= max(theta, 1e-9))] = "saturated"  # nobody is saturated with no unit near the boundary
    out[short] = "undecided"
    return out


def sensitivity_cohorts(
    plateau: np.ndarray,
    n_steps: np.ndarray,
    f_tail_by_tau: dict[float, np.ndarray],
    rule: CohortRule,
    thetas: tuple[float, ...] = THETA_GRID,
) -> list[tuple[float, float, np.ndarray]]:
    """Cohorts over a grid of (tau, theta): [(tau, theta, cohorts (dog,))]. T* does not depend on them."""
    out = []
    for tau, f in sorted(f_tail_by_tau.items()):
        for theta in thetas:
            r = rule.with_thresholds(tau=tau, theta=theta)
            out.append((tau, theta, assign_cohorts(plateau, n_steps, f, r)))
    return out


def exemplar_pair(dogs: "pd.DataFrame") -> list[tuple[str, str]]:
    """The exemplar rule, the only one: the most and the least saturated dog by mean s among dogs with long
    histories (top decile of race counts). dogs: stats/dog.parquet rows of the cohort layer. -> [(most, least)]."""
    if len(dogs) < 2:
        return []
    n = dogs["n_steps"].to_numpy()
    long = dogs[n >= max(np.quantile(n, 0.9), 2)]
    if len(long) < 2:
        long = dogs
    order = long.sort_values(["mean_s", "dog_index"])
    return [(str(order["dog_id"].iloc[-1]), str(order["dog_id"].iloc[0]))]


