"""Cohort rule: known assignments, censoring, sensitivity grid, round trip of the stored rule."""

from __future__ import annotations

import numpy as np
import pytest

from gruviz_core import cohorts
from gruviz_core.cohorts import CohortRule
from gruviz_core.errors import ConfigError

RULE = CohortRule(name="tanh-f", version=1, w=3, k=2, theta=0.5, low=0.1, scale="absolute")
PLATEAU = CohortRule(w=3, k=2)  # plateau-s, the default


@pytest.mark.parametrize(
    "plateau, n_steps, f_tail, expected",
    [
        (6.0, 20, 0.8, "saturated"),
        (6.0, 20, 0.5, "saturated"),  # theta inclusive
        (6.0, 20, 0.3, "partial"),
        (6.0, 20, 0.02, "unsaturated"),
        (6.0, 20, 0.1, "partial"),  # absolute rule: unsaturated is strictly below low
        (np.nan, 30, 0.02, "unsaturated"),  # no plateau but F stays low
        (np.nan, 30, 0.8, "partial"),  # high F but never flat
        (np.nan, 4, 0.8, "undecided"),  # shorter than w + k: censored
        (np.nan, 5, 0.0, "unsaturated"),  # exactly w + k: decided
        (np.nan, 1, np.nan, "undecided"),
    ],
)
def test_assign_table(plateau, n_steps, f_tail, expected):
    got = cohorts.assign_cohorts(np.array([plateau]), np.array([n_steps]), np.array([f_tail]), RULE)
    assert got[0] == expected


@pytest.mark.parametrize(
    "plateau, n_steps, expected",
    [(6.0, 20, "settled"), (np.nan, 5, "settling"), (np.nan, 30, "settling"), (np.nan, 4, "undecided"),
     (np.nan, 1, "undecided")],
)
def test_plateau_s_assigns_by_the_plateau_alone(plateau, n_steps, expected):
    f_tail = np.array([0.9])  # magnitude plays no part in the information-saturation rule
    got = cohorts.assign_cohorts(np.array([plateau]), np.array([n_steps]), f_tail, PLATEAU)
    assert got[0] == expected


def test_plateau_s_status_at_prediction_uses_only_earlier_races():
    # one dog with T* = 5 under w=3, k=2: the plateau is confirmed by race 6, so race 7 is the first settled one
    step = np.arange(1, 13)
    s = np.linspace(0.1, 0.3, 12)
    st = cohorts.status_at_prediction(s, np.zeros(12), step, np.array([0, 12]), np.array([5.0]), PLATEAU)
    assert list(st.status[:5]) == ["undecided"] * 5  # t - 1 < w + k = 5
    assert list(st.status[5:7]) == ["settling", "settled"]  # race 6 knows races 1-5 only; race 7 knows 1-6
    assert set(st.status[7:]) == {"settled"}


def test_old_rule_names_are_refused_naming_the_new_ones():
    for old in ("plateau-f-abs", "plateau-f"):
        with pytest.raises(ConfigError, match="tanh-f") as e:
            CohortRule.coerce({"name": old})
        assert "plateau-s" in str(e.value)
    assert CohortRule().name == "plateau-s" and CohortRule().version == 1
    assert cohorts.RULES["tanh-f"].groups == cohorts.TANH_COHORTS


def test_tail_mean_from_plateau_or_after_warmup():
    f = np.array([0, 0, 0, 1, 1, 1, 0.5, 0.5, 0.5, 0.5], dtype=float)
    offsets = np.array([0, 6, 10])
    step = np.array([1, 2, 3, 4, 5, 6, 1, 2, 3, 4])
    start = cohorts.tail_start(np.array([4.0, np.nan]), RULE)  # dog 1: after w=3
    np.testing.assert_allclose(cohorts.tail_mean(f, step, offsets, start), [1.0, 0.5])


def test_rule_round_trip_and_validation():
    d = RULE.to_dict()
    assert d["name"] == "tanh-f" and d["version"] == 1 and d["params"]["theta"] == 0.5
    assert CohortRule.from_dict(d) == RULE
    with pytest.raises(ConfigError):
        CohortRule(low=0.6, theta=0.5)
    with pytest.raises(ConfigError):
        CohortRule(w=0)
    with pytest.raises(ConfigError):
        CohortRule(scale="relative")


def test_rule_from_flat_settings_dict():
    r = CohortRule.coerce({"name": "tanh-f", "tau": 0.95, "theta": 0.5})
    assert r.name == "tanh-f" and r.theta == 0.5 and r.w == CohortRule().w and r.scale == "absolute"
    rel = CohortRule.coerce({"name": "relative-s-quartile"})
    assert rel.scale == "quantile" and rel.version == 1
    with pytest.raises(ConfigError, match="unknown"):
        CohortRule.coerce({"name": "plateau-f95-v1"})  # a rule name that is not registered is refused
    assert CohortRule.coerce(None) == CohortRule()
    assert CohortRule.coerce({"theta": 0.01}).low == 0.01  # a theta below the default low keeps low <= theta
    with pytest.raises(ConfigError):
        CohortRule.coerce({"name": "x", "thetaa": 0.5})


def test_quantile_scale_splits_runs_where_every_dog_is_somewhat_saturated():
    rule = CohortRule(name="relative-s-quartile", w=3, k=2, theta=0.75, low=0.25, scale="quantile")
    f = np.linspace(0.2, 0.4, 9)  # every dog has 20-40% of units pinned
    plateau = np.full(9, 5.0)
    n = np.full(9, 30)
    theta, low = cohorts.resolve_thresholds(plateau, n, f, rule)
    assert theta == pytest.approx(0.35) and low == pytest.approx(0.25)
    got = cohorts.assign_cohorts(plateau, n, f, rule)
    assert list(got) == ["unsaturated"] * 3 + ["partial"] * 3 + ["saturated"] * 3


def test_quantile_scale_with_no_unit_near_the_boundary_is_all_unsaturated():
    rule = CohortRule(name="tanh-f", w=3, k=2)
    got = cohorts.assign_cohorts(np.full(5, 4.0), np.full(5, 20), np.zeros(5), rule)
    assert (got == "unsaturated").all()


def test_status_at_chosen_rows_equals_the_full_status_there():
    rng = np.random.default_rng(0)
    sizes = np.array([1, 12, 0, 7, 20])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    step = np.concatenate([np.arange(1, k + 1) for k in sizes])
    s, f = rng.random(n), rng.random(n)
    plateau = np.array([np.nan, 4.0, np.nan, np.nan, 9.0])
    rule = CohortRule(name="tanh-f", theta=0.4, low=0.3)
    full = cohorts.status_at_prediction(s, f, step, offsets, plateau, rule)
    rows = np.array([0, 1, 5, 12, 13, 20, 39])
    part = cohorts.status_at_prediction(s, f, step, offsets, plateau, rule, rows=rows)
    for name in ("status", "plateau_reached", "f_run", "s_prev", "f_prev"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[rows], err_msg=name)


def test_plateau_s_status_never_reads_the_race_it_predicts_or_later():
    """Changing s at steps >= t changes no status at steps <= t (the race at t is predicted from h_{t-1})."""
    from gruviz_core.stats import plateau_steps

    rng = np.random.default_rng(4)
    n = 40
    step = np.arange(1, n + 1)
    base = 0.3 * (1 - np.exp(-step / 6)) + 0.002 * rng.standard_normal(n)
    off = np.array([0, n])

    def status(s):
        p = plateau_steps(s, step, off, w=PLATEAU.w, delta=PLATEAU.delta, k=PLATEAU.k)
        return cohorts.status_at_prediction(s, np.zeros(n), step, off, p, PLATEAU).status

    before = status(base)
    assert "settled" in set(before) and "settling" in set(before)
    for t in range(2, n + 1):
        changed = base.copy()
        changed[t - 1:] = rng.uniform(0, 1, n - t + 1)  # the state after race t and every later one
        assert list(status(changed)[:t]) == list(before[:t]), t


def test_status_at_prediction_without_f_is_its_status_with_zeros():
    """f None (the plateau rules read no F): the very fields f = zeros gives, without a per-row array."""
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 40, 300)
    offsets = np.r_[0, np.cumsum(sizes)]
    step = np.concatenate([np.arange(1, n + 1) for n in sizes])
    s = rng.random(offsets[-1]).astype(np.float32)
    plateau = np.where(rng.random(len(sizes)) < 0.5, rng.integers(3, 30, len(sizes)), np.nan)
    rows = np.sort(rng.choice(offsets[-1], 500, replace=False))
    rule = CohortRule()
    assert rule.by_plateau
    a = cohorts.status_at_prediction(s, np.zeros(len(s)), step, offsets, plateau, rule, rows=rows)
    b = cohorts.status_at_prediction(s, None, step, offsets, plateau, rule, rows=rows)
    for f in ("status", "plateau_reached", "f_run", "s_prev", "f_prev"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f
