"""Cohorts of dogs and status at prediction time: named, versioned rules.

Two meanings of "saturated" (DESIGN section 5), each under its own rule:

`plateau-s` v1, the default: information saturation, the abs-sum plateau (the notebook's curve).

    settled      the plateau T* of s was confirmed (T* + k - 1 steps seen)
    settling     at least w + k races and no plateau yet
    undecided    fewer than w + k races: no check possible (right-censored)

`tanh-f` v1 (the former `plateau-f-abs` v2): magnitude saturation, units pinned near +-1.

    saturated    T* exists and the mean F_tau from T* on is >= theta
    unsaturated  the mean F_tau over the tail stays at or below `low`
    partial      neither (some units pinned, not enough to call it saturated)
    undecided    no plateau seen and too few races (< w + k) to have checked one

The tail is the steps from T* on when there is a plateau, else the steps after the warm-up w. Rules are
absolute and may find nothing: that is a finding. A relative split is allowed only under its own name
(`relative-s-quartile`).

Status at prediction time (`status_at_prediction`): race t of a dog is predicted from h_{t-1}, so a
scored race is grouped by what the model had then: plateau reached by t-1 (T* + k - 1 <= t - 1), the
running tail F up to t-1, s_{t-1}. Nothing after the race decides its group.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from gruviz_core.errors import ConfigError

__all__ = [
    "COHORTS",
    "PLATEAU_COHORTS",
    "TANH_COHORTS",
    "RENAMED",
    "TANH_RULE",
    "CohortRule",
    "DEFAULT_RULE",
    "min_steps",
    "tail_start",
    "tail_mean",
    "assign_cohorts",
    "resolve_thresholds",
    "RULES",
    "PredictionStatus",
    "status_at_prediction",
    "debut_observed",
]

PLATEAU_COHORTS: tuple[str, ...] = ("settled", "settling", "undecided")
"""Groups of the plateau rules (`plateau-s`), in the order reports show them."""
TANH_COHORTS: tuple[str, ...] = ("saturated", "partial", "unsaturated", "undecided")
"""Groups of the magnitude rules (`tanh-f`, `relative-s-quartile`)."""
COHORTS: tuple[str, ...] = ("settled", "settling", "saturated", "partial", "unsaturated", "undecided")
"""Every cohort name, in the order reports show them."""

RENAMED: dict[str, str] = {
    "plateau-f-abs": "the magnitude rule is now 'tanh-f'; the default is 'plateau-s' (the abs-sum plateau)",
    "plateau-f": "quantile thresholds are gone; use 'tanh-f' (magnitude) or 'plateau-s' (the default)",
}
"""Old rule names, refused with what to use instead."""


@dataclass(frozen=True)
class CohortRule:
    """The rule that puts each dog in a cohort; stored with every run so nights compare like with like."""

    name: str = "plateau-s"
    """Rule family (a key of RULES); change it when the logic changes, not the numbers."""
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
    theta: float = 0.25
    """Mean F_tau from T* on at or above which a dog is saturated (a share of units; a quantile when scale='quantile')."""
    low: float = 0.05
    """Mean F_tau over the tail below which a dog is unsaturated (a share of units; a quantile when scale='quantile')."""
    layer: int = -1
    """Layer whose states decide the dog's cohort (-1: top layer)."""
    scale: str = "absolute"
    """'absolute': theta and low are shares of units; 'quantile' (only under a relative rule's own name):
    quantiles of the decided dogs' tail F."""

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
    def from_dict(cls, d: dict) -> CohortRule:
        """From {name, version, params} or a flat {name, tau, theta, ...} (settings); unknown keys are an error."""
        flat = {**{k: v for k, v in d.items() if k != "params"}, **d.get("params", {})}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ConfigError(f"cohort rule {d.get('name')!r}: unknown parameters {unknown}; known: {sorted(known)}")
        name = flat.get("name", cls.name)
        if name in RENAMED:
            raise ConfigError(f"cohort rule {name!r} was renamed: {RENAMED[name]}; known rules: "
                              f"{', '.join(sorted(RULES))} (GRUVIZ_COHORT_RULE)")
        if name not in RULES:
            raise ConfigError(f"cohort rule {name!r} is unknown; known rules: {', '.join(sorted(RULES))} "
                              "(GRUVIZ_COHORT_RULE)")
        base = RULES[name]
        if "version" in flat:
            flat["version"] = int(flat["version"])
        if "theta" in flat and "low" not in flat:  # a theta alone below the default low keeps the rule valid
            flat["low"] = min(base.low, float(flat["theta"]))
        return replace(base, **flat)

    @property
    def by_plateau(self) -> bool:
        """True for the information-saturation rules (groups settled / settling / undecided)."""
        return self.name == "plateau-s"

    @property
    def groups(self) -> tuple[str, ...]:
        """This rule's group names, in report order."""
        return PLATEAU_COHORTS if self.by_plateau else TANH_COHORTS

    @property
    def compared(self) -> tuple[str, str]:
        """(a, b): the groups the main comparison sets against each other (a - b)."""
        return ("settled", "settling") if self.by_plateau else ("saturated", "unsaturated")

    @classmethod
    def coerce(cls, rule: CohortRule | dict | None) -> CohortRule:
        """A rule from a rule, a dict (see from_dict) or None (the default rule)."""
        if rule is None:
            return cls()
        return rule if isinstance(rule, cls) else cls.from_dict(rule)

    def with_thresholds(self, *, tau: float, theta: float) -> CohortRule:
        """The same rule at other thresholds (low kept <= theta)."""
        return replace(self, tau=tau, theta=theta, low=min(self.low, theta))


RULES: dict[str, CohortRule] = {}
"""Named rules, each at its current version. A change of any default bumps that rule's version."""


def _register(rule: CohortRule) -> CohortRule:
    RULES[rule.name] = rule
    return rule


DEFAULT_RULE = _register(CohortRule())
TANH_RULE = _register(CohortRule(name="tanh-f", version=1))
_register(CohortRule(name="relative-s-quartile", version=1, theta=0.75, low=0.25, scale="quantile"))


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
    has = np.isfinite(plateau)
    short = (~has) & (np.asarray(n_steps) < min_steps(rule))
    if rule.by_plateau:
        return np.where(has, "settled", np.where(short, "undecided", "settling")).astype(object)
    theta, low = resolve_thresholds(plateau, n_steps, f_tail, rule)
    f = np.nan_to_num(np.asarray(f_tail, dtype=np.float64), nan=0.0)
    out = np.full(len(plateau), "partial", dtype=object)
    out[(f < low) if rule.scale == "absolute" else (f <= low)] = "unsaturated"
    out[has & (f >= max(theta, 1e-9))] = "saturated"  # nobody is saturated with no unit near the boundary
    out[short] = "undecided"
    return out


@dataclass(frozen=True)
class PredictionStatus:
    """What the model had when it predicted each race: from h_{t-1} and the steps before t only."""

    status: np.ndarray
    """(obs,) object: the rule's group (settled / settling / undecided, or saturated / partial / unsaturated /
    undecided) from steps < t."""
    plateau_reached: np.ndarray
    """(obs,) bool: T* + k - 1 <= t - 1 (the plateau was checkable by the race before)."""
    f_run: np.ndarray
    """(obs,) float64 running mean F_tau over the tail so far (from T* once reached, else the last w
    steps); NaN at step 1 (no state yet but h_0 = 0)."""
    s_prev: np.ndarray
    """(obs,) float64 s_{t-1} = mean |h_{t-1}|; 0 at step 1 (h_0 = 0)."""
    f_prev: np.ndarray
    """(obs,) float64 F_tau(h_{t-1}); 0 at step 1."""


def status_at_prediction(
    s: np.ndarray, f: np.ndarray | None, step: np.ndarray, offsets: np.ndarray, plateau: np.ndarray,
    rule: CohortRule, *, rows: np.ndarray | None = None,
) -> PredictionStatus:
    """Status of every row at prediction time. s, f: (obs,) s and F_tau of the state AFTER each row's
    race (f None: zeros, as the plateau rules that read no F pass, without a per-row array of them);
    step: (obs,) 1-based; offsets: (dog + 1,); plateau: (dog,) T* (NaN if none).
    rows: only these rows (index array; the fields then have len(rows)), e.g. the evaluated ones."""
    s = np.asarray(s)
    step = np.asarray(step)
    r = np.arange(len(s)) if rows is None else np.asarray(rows, dtype=np.int64)
    dog = np.searchsorted(np.asarray(offsets), r, side="right") - 1
    first = step[r] == 1
    prev = np.maximum(r - 1, 0)
    s_prev = np.where(first, 0.0, np.asarray(s[prev] if len(s) else s, dtype=np.float64))
    t_prev = step[r].astype(np.int64) - 1  # steps known before the race
    T = np.asarray(plateau, dtype=np.float64)[dog]
    reached = np.isfinite(T) & (T + rule.k - 1 <= t_prev)
    start = np.asarray(offsets[:-1])[dog]
    if f is None:
        f_prev = np.zeros(len(r))

        def _sum_steps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.zeros(len(a))
    else:
        f = np.asarray(f, dtype=np.float64)
        f_prev = np.where(first, 0.0, f[prev] if len(f) else f)
        # running mean of F over steps [a, t-1] from a per-dog cumulative sum (row r holds steps 1..step[r])
        csum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(f))])  # csum[i] = sum of rows < i

        def _sum_steps(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # sum of F over steps a..b of the row's dog
            return csum[start + b] - csum[start + a - 1] if len(a) else np.zeros(0)

    a = np.where(reached, np.nan_to_num(T, nan=1.0), np.maximum(t_prev - rule.w + 1, 1)).astype(np.int64)
    b = np.maximum(t_prev, 0)
    ok = b >= a
    with np.errstate(invalid="ignore", divide="ignore"):
        f_run = np.where(ok, _sum_steps(np.where(ok, a, 1), np.where(ok, b, 1)) / np.maximum(b - a + 1, 1), np.nan)
    if rule.by_plateau:
        out = np.where(reached, "settled", np.where(t_prev < min_steps(rule), "undecided", "settling")).astype(object)
        return PredictionStatus(out, reached, f_run, s_prev, f_prev)
    out = np.full(len(r), "partial", dtype=object)
    out[np.nan_to_num(f_run, nan=0.0) < rule.low] = "unsaturated"
    out[reached & (np.nan_to_num(f_run, nan=0.0) >= max(rule.theta, 1e-9))] = "saturated"
    out[(~reached) & (t_prev < min_steps(rule))] = "undecided"
    return PredictionStatus(out, reached, f_run, s_prev, f_prev)


def debut_observed(first_date: np.ndarray, covered_months: np.ndarray, *, lookback_days: int = 90) -> np.ndarray:
    """(dog,) bool: the data cover every month in the `lookback_days` before the dog's first observed race,
    so a dog that raced then would have been seen: its first observed race is (taken as) its debut.

    first_date: (dog,) datetime64[D]; covered_months: sorted datetime64[M] months with any race in the data.
    """
    first = np.asarray(first_date, dtype="datetime64[D]")
    cov = np.asarray(covered_months, dtype="datetime64[M]")
    if len(cov) == 0:
        return np.zeros(len(first), dtype=bool)
    lo = (first - np.timedelta64(lookback_days, "D")).astype("datetime64[M]")
    hi = first.astype("datetime64[M]")
    # months in [lo, hi] all covered <=> count of covered months in range == span, and lo >= first covered month
    idx_lo = np.searchsorted(cov, lo, side="left")
    idx_hi = np.searchsorted(cov, hi, side="right")
    span = (hi - lo).astype(np.int64) + 1
    return ((idx_hi - idx_lo) == span) & (lo >= cov[0])
