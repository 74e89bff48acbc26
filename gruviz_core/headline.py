"""The headline record (eval/headline.json): written once by the evaluate stage, read by the page, the
email and the Prefect summary. Typed where the page reads it; `extra` keeps every other key of the file
so older readers and the trend across nights still find theirs.

Every effect-like field is an `Effect`; lists of grid points, dose slopes and race-count buckets are
typed too. `Headline.from_dict(json)` accepts files written before a field existed (it is then None or
empty) and never re-parses by key path elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from gruviz_core.records import from_json, to_json

__all__ = ["Effect", "GridPoint", "DoseSlope", "Bucket", "Verdict", "EvalPeriod", "Headline"]


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None  # NaN -> None


@dataclass(frozen=True)
class Effect:
    """A difference a - b with its 95% interval (bootstrap over dogs) and the groups' sizes."""

    diff: float | None = None
    """a - b (None when it could not be computed)."""
    lo: float | None = None
    """Lower end of the 95% interval."""
    hi: float | None = None
    """Upper end of the 95% interval."""
    comparable: bool = False
    """Both groups above the minimum sizes (dogs and winners)."""
    excludes_zero: bool = False
    """The interval excludes 0 (and the groups are comparable)."""
    n_dogs_a: int = 0
    n_dogs_b: int = 0
    n_winners_a: int = 0
    n_winners_b: int = 0
    n_runners_a: int = 0
    """Runner rows in group a (over seeds, for pooled comparisons)."""
    n_runners_b: int = 0
    metric: str = ""
    """gap_vs_market, runner_log_loss, win_rate, step-adjusted ..."""
    a: str = ""
    b: str = ""
    p_value: float | None = None
    """Two-sided bootstrap p-value (for Holm)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Effect | None:
        return _typed(cls, d) if d else None


@dataclass(frozen=True)
class GridPoint:
    """The main comparison at one one-at-a-time move of the plateau's parameters."""

    param: str
    """w, delta or k."""
    value: float
    diff: float | None = None
    lo: float | None = None
    hi: float | None = None
    comparable: bool = False
    excludes_zero: bool = False
    n_dogs_a: int = 0
    n_dogs_b: int = 0


@dataclass(frozen=True)
class DoseSlope:
    """Slope of the gap per SD of a reliance score of h_{t-1}, with step fixed effects."""

    score: str
    """write_prev, move_prev or s_prev."""
    slope_per_sd: float | None = None
    lo: float | None = None
    hi: float | None = None
    n_runners: int = 0
    comparable: bool = False
    excludes_zero: bool = False


@dataclass(frozen=True)
class Bucket:
    """The gap to the market (the ensemble's) over runners at one race-count bucket."""

    bucket: str
    """1, 2-5, 6-10, 11-20, 21-40, 41+."""
    diff: float | None = None
    lo: float | None = None
    hi: float | None = None
    n_runners: int = 0
    n_dogs: int = 0


@dataclass(frozen=True)
class Verdict:
    """What the main comparison and its checks add up to (gruviz_core.saturation.verdict_of)."""

    kind: str = "not_comparable"
    """robust, fragile, none or not_comparable."""
    composition_flagged: bool = False
    """The market's own log-loss differs between the groups at least half as much as the model's gap."""
    family: tuple[str, ...] = ()
    """The tests of the family (main, within_dog, dose_*)."""
    n_intervals: int = 0
    """Tests of the family that produced an interval."""
    holm: tuple[Mapping[str, Any], ...] = ()
    """[{name, p, p_adj, rejected}] Holm over the family."""
    grid_points: int = 0
    """Grid points that produced an interval."""
    grid_agree: int = 0
    """Of those, the ones that exclude 0 with the main comparison's sign."""
    within_agrees: bool = False


def _typed(cls, x):
    """A record of `cls` from a JSON object (gruviz_core.records' codec): unknown keys dropped, floats NaN-safe
    (None), counts as int."""
    if not isinstance(x, Mapping):
        return None
    kinds = {f.name: f.type for f in fields(cls)}
    clean = {k: _num(v) if kinds[k] in ("float | None", "float") else int(v or 0) if kinds[k] == "int" else v
             for k, v in x.items() if k in kinds}
    return from_json(cls, clean, cls.__name__)


@dataclass(frozen=True)
class EvalPeriod:
    """What was evaluated: the held-out period as the report states it."""

    start: str | None = None
    """First race date evaluated (ISO), None when nothing was."""
    end: str | None = None
    """Last race date evaluated (ISO)."""
    after: str | None = None
    """Races after this date are held out (the model set's cutoff or early-stopping end); None: in sample."""
    model_cutoff: str | None = None
    """The model set's training cutoff, as recorded."""
    early_stop_end: str | None = None
    """End of the early-stopping window, when the set kept one."""
    basis: str | None = None
    """How `after` was chosen."""
    races: int = 0
    """Races evaluated."""
    dogs: int = 0
    """Dogs with a runner evaluated."""
    rows: int = 0
    """Runners evaluated."""
    in_sample: bool | None = None
    """False when held out; None when the set recorded no cutoff (comparisons may be in sample)."""
    min_races: int = 0
    """Fewest races the comparisons need."""
    too_small: bool = False
    """Fewer races than min_races: the comparisons are skipped."""


@dataclass(frozen=True)
class Headline:
    """eval/headline.json, the fields page one reads (see the module docstring)."""

    rule: Mapping[str, Any] = field(default_factory=dict)
    """{name, version, params} of the cohort rule."""
    period: EvalPeriod | None = None
    """What was evaluated."""
    main_effect: Effect | None = None
    """Settled - settling, gap to the market, single-step strata, seeds pooled."""
    within_dog: Effect | None = None
    """The same dogs after - before their plateau, step fixed effects."""
    grid: tuple[GridPoint, ...] = ()
    composition: Mapping[str, Effect | None] = field(default_factory=dict)
    """{market_log_loss, market_win_rate}: the market's own differences between the same groups."""
    negative_control: Effect | None = None
    """Step-1 races by the dog's eventual plateau (selection only: h_0 = 0 for every dog)."""
    dose: tuple[DoseSlope, ...] = ()
    gap_by_race_count: tuple[Bucket, ...] = ()
    verdict: Verdict | None = None
    magnitude: Mapping[str, Any] = field(default_factory=dict)
    """{max_abs, q99_max_abs, share_states_any_090, share_states_any_095, n_states, tanh_comparable}."""
    plateau: Mapping[str, Any] = field(default_factory=dict)
    """{level, race_90, race_95, s_by_race: [{race, median_s}], km_median, km_grid: [{param, value, median}]}."""
    reliance: Mapping[str, Any] = field(default_factory=dict)
    """{write_by_race: [{race, median_write}], move_by_race: [{race, median_move}]}."""
    ensemble: Mapping[str, Any] = field(default_factory=dict)
    """{race_nll, by_seed: [race NLL per seed], ensemble_minus_mean_seed}."""
    race_nll: Mapping[str, Any] = field(default_factory=dict)
    """{model_mean, model (seed 0), market, uniform, rated}."""
    scope: Mapping[str, Any] = field(default_factory=dict)
    """{dogs, debut_dogs, runners, debut_runners, races}."""
    status_runners: Mapping[str, int] = field(default_factory=dict)
    """Runner rows (over seeds, in scope) per status group."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Every other key of the file (resilience_latest, repro, exemplars, ...)."""

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {**dict(self.extra), **to_json(d)}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Headline:
        d = dict(d or {})
        own = {f.name for f in fields(cls)} - {"extra"}
        comp = d.get("composition") or {}
        return cls(
            rule=d.get("rule") or {},
            period=_period(d.get("period")),
            main_effect=Effect.from_dict(d.get("main_effect")),
            within_dog=Effect.from_dict(d.get("within_dog")),
            grid=tuple(g for g in (_typed(GridPoint, x) for x in d.get("grid") or ()) if g is not None),
            composition={k: Effect.from_dict(v) for k, v in comp.items() if k.startswith("market_")},
            negative_control=Effect.from_dict(d.get("negative_control")),
            dose=tuple(x for x in (_typed(DoseSlope, x) for x in d.get("dose") or ()) if x is not None),
            gap_by_race_count=tuple(x for x in (_typed(Bucket, x) for x in d.get("gap_by_race_count") or ())
                                    if x is not None),
            verdict=_typed(Verdict, d.get("verdict")),
            magnitude=d.get("magnitude") or {}, plateau=d.get("plateau") or {}, reliance=d.get("reliance") or {},
            ensemble=d.get("ensemble") or {}, race_nll=d.get("race_nll") or {}, scope=d.get("scope") or {},
            status_runners=d.get("status_runners") or {},
            extra={k: v for k, v in d.items() if k not in own},
        )


def _period(x: Any) -> EvalPeriod | None:
    return x if isinstance(x, EvalPeriod) else _typed(EvalPeriod, x)


