"""Resilience: no-ops are counted and change nothing, severity grows with the damage, race NLL algebra, n/a kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gruviz_core import resilience as rs
from gruviz_core.features import FEATURE_NAMES
from gruviz_core.model import LoadedModel, ModelConfig, RaceGRU

CONTEXT = ("c0", "c1")
GROUPS = rs.feature_groups(FEATURE_NAMES)


def _hist(n=12, seed=0, times_missing=False):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    for _, f in GROUPS.value_flag:
        h[:, f] = 0.0
    if times_missing:
        for c in GROUPS.time:
            h[:, c] = 0.0
            h[:, GROUPS.flag_of(int(c))] = 1.0
    return h


def _model(seed=0):
    torch.manual_seed(seed)
    m = RaceGRU(ModelConfig(len(FEATURE_NAMES), len(CONTEXT), hidden_size=8))
    return LoadedModel.wrap(m, FEATURE_NAMES, CONTEXT)


@pytest.mark.parametrize("kind", sorted(rs.SEVERITY_UNITS))
def test_severity_is_monotone_on_a_fixed_dog(kind):
    h = _hist()
    d = rs.draws_for(len(h), h.shape[1], np.random.default_rng(1))
    sev = sorted(p.severity for p in rs.DEFAULT_PERTURBATIONS if p.kind == kind)
    damage = [rs.perturb_history(h, rs.Perturbation(kind, s), GROUPS, d)[1] for s in sev]
    assert all(b >= a for a, b in zip(damage, damage[1:])), damage
    assert damage[-1] > 0


def test_truncate_severity_counts_races_removed():
    h = _hist(12)
    d = rs.draws_for(12, h.shape[1], np.random.default_rng(0))
    kept = [len(rs.perturb_history(h, rs.Perturbation("truncate", s), GROUPS, d)[0]) for s in (2, 4, 8)]
    assert kept == [10, 8, 4]


def test_noise_only_on_observed_values_and_no_op_when_none_observed():
    h = _hist(times_missing=True)
    d = rs.draws_for(len(h), h.shape[1], np.random.default_rng(0))
    out, dmg = rs.perturb_history(h, rs.Perturbation("noise_time", 1.0), GROUPS, d)
    assert dmg == 0 and np.array_equal(out, h)
    h2 = h.copy()
    c = int(GROUPS.time[0])
    h2[:3, GROUPS.flag_of(c)] = 0.0  # three observed times
    out, dmg = rs.perturb_history(h2, rs.Perturbation("noise_time", 1.0), GROUPS, d)
    changed = np.flatnonzero(np.any(out != h2, axis=1))
    assert dmg > 0 and set(changed) <= {0, 1, 2}


def test_kinds_never_seen_in_training_are_not_applicable():
    h = _hist(times_missing=True)
    seen = rs.kinds_seen(h, GROUPS)
    assert seen["noise_time"] is False and seen["noise_price"] and seen["drop_last"]
    asked = []
    by_column = rs.kinds_seen(lambda c: asked.append(c) or h[:, c], GROUPS)  # columns computed on demand
    assert by_column == seen and set(asked) <= {GROUPS.flag_of(int(c)) for c in GROUPS.time} | set(range(h.shape[1]))
    h[:, GROUPS.flag_of(int(GROUPS.time[0]))] = 0.0  # one time column observed on every row
    assert rs.kinds_seen(h, GROUPS)["noise_time"] and rs.kinds_seen(lambda c: h[:, c], GROUPS)["noise_time"]
    assert not rs.kinds_seen(h[:0], GROUPS)["noise_price"]


def test_race_nll_change_matches_a_full_softmax():
    rng = np.random.default_rng(0)
    others = rng.normal(size=5)
    lse = np.logaddexp.reduce(others)
    for won in (0.0, 1.0):
        s0, s1 = 0.3, -0.7
        w_other = others[0]

        def nll(s, won=won, w_other=w_other):
            z = np.logaddexp(s, lse)
            return -(s - z) if won else -(w_other - z)

        got = rs.race_nll_change(np.array([s0]), np.array([s1]), np.array([lse]), np.array([won]))[0]
        assert got == pytest.approx(nll(s1) - nll(s0))


def _setup(n_dogs=30, n_races=8):
    """One race per 'round' with every dog in it; dog d has races at every round."""
    rng = np.random.default_rng(0)
    offsets = np.arange(n_dogs + 1) * n_races
    values = rng.normal(size=(n_dogs * n_races, len(FEATURE_NAMES))).astype(np.float32)
    for _, f in GROUPS.value_flag:
        values[:, f] = 0.0
    context = rng.normal(size=(len(values), len(CONTEXT))).astype(np.float32)
    step = np.tile(np.arange(1, n_races + 1), n_dogs)
    race = (step - 1) * 3 + np.repeat(np.arange(n_dogs) % 3, n_races)  # 3 races of 10 dogs per round
    won = np.zeros(len(values))
    for r in np.unique(race):
        won[np.flatnonzero(race == r)[0]] = 1
    return offsets, values, context, race, won


def test_a_no_op_reports_zero_change_and_is_counted():
    offsets, values, context, race, won = _setup()
    ok = np.ones(len(values), bool)
    cases = rs.target_cases(offsets, ok, np.full(30, np.nan), 3, sample_dogs=30, seed=0, steps=(3, 5, 8))
    models = [_model(0), _model(1)]
    others = [rs.others_in_race(np.zeros(len(values)), race, ok, cases.row) for _ in models]
    perts = (rs.Perturbation("drop_last", 1), rs.Perturbation("noise_time", 1.0), rs.Perturbation("truncate", 50))
    values_no_time = values.copy()
    for c in GROUPS.time:
        values_no_time[:, GROUPS.flag_of(int(c))] = 1.0
        values_no_time[:, c] = 0.0
    eff = rs.case_effects(models, values_no_time, context, offsets, cases, others, won[cases.row], perts, GROUPS,
                          {k: True for k in rs.SEVERITY_UNITS}, seed=0)
    changed, dl, flip, div = eff[1]  # noise on times that were never observed: a no-op everywhere
    assert not changed.any() and not dl.any() and not flip.any() and not div.any()
    assert eff[0][0].all() and np.abs(eff[0][1]).sum() > 0
    res, _ = rs.summarise({"dog": eff}, {"dog": cases}, perts, np.ones((5, 30)))
    row = res[(res.perturbation == "noise_time") & (res.bucket == "all") & (res.plateau == "all")].iloc[0]
    assert row.status == "no change" and row.n_changed == 0 and row.changed_share == 0 and np.isnan(row.d_nll)
    row = res[(res.perturbation == "drop_last") & (res.bucket == "all") & (res.plateau == "all")].iloc[0]
    assert row.changed_share == 1 and row.n_cases == len(cases.dog)


def test_feed_scope_with_nothing_changed_is_zero_and_counts_every_runner():
    offsets, values, context, race, won = _setup()
    ok = np.ones(len(values), bool)
    cases = rs.target_cases(offsets, ok, np.full(30, np.nan), 3, sample_dogs=6, seed=0, steps=(5,))
    row_dog = np.repeat(np.arange(30), 8)
    perts = (rs.Perturbation("drop_last", 1),)
    eff = rs.feed_effects([_model(0)], values, context, offsets, row_dog, race, ok, won, cases, perts, GROUPS,
                          {"drop_last": True}, seed=0)
    changed, dl, flip, div = eff[0]
    assert changed.all() and np.isfinite(dl).all() and np.all((flip == 0) | (flip == 1))
    eff = rs.feed_effects([_model(0)], values, context, offsets, row_dog, race, ok, won, cases,
                          (rs.Perturbation("missing", 0.0),), GROUPS, {"missing": True}, seed=0)
    assert not eff[0][0].any() and not eff[0][1].any()


def test_plateau_status_uses_only_steps_before_the_target():
    offsets = np.array([0, 20])
    ok = np.ones(20, bool)
    cases = rs.target_cases(offsets, ok, np.array([5.0]), 3, sample_dogs=1, seed=0, steps=(3, 5, 8, 12))
    # plateau at 5 is confirmed after step 5 + 3 - 1 = 7: known at t = 8 (steps 1..7), not at t = 5
    assert dict(zip(cases.step.tolist(), cases.plateau_reached.tolist())) == {3: False, 5: False, 8: True, 12: True}


@pytest.mark.parametrize("layers", [1, 2])
def test_batched_rescoring_equals_scoring_each_damaged_history(layers):
    """The shared-prefix, packed re-scoring gives what `final_scores` gives on each damaged history, for every kind."""
    offsets, values, context, race, won = _setup(n_dogs=12, n_races=15)
    values[::3, GROUPS.value_flag[0][1]] = 1.0  # some missing values
    torch.manual_seed(3)
    model = LoadedModel.wrap(RaceGRU(ModelConfig(len(FEATURE_NAMES), len(CONTEXT), hidden_size=8, num_layers=layers,
                                                 context_skip=True)), FEATURE_NAMES, CONTEXT)
    ok = np.ones(len(values), bool)
    cases = rs.target_cases(offsets, ok, np.full(12, np.nan), 3, sample_dogs=12, seed=0, steps=(1, 2, 5, 9, 15))
    items = rs._Items(offsets[cases.dog].astype(np.int64), cases.row.astype(np.int64))
    perts = rs.DEFAULT_PERTURBATIONS
    seen = {k: True for k in rs.SEVERITY_UNITS}
    assert rs._fast_mode(model, values, context, items) is not None
    base, pert = rs._rescore([model], values, context, items, perts, GROUPS, seen, seed=4, salt=0)
    hists = [values[a:b] for a, b in zip(items.start, items.row)]
    s0, h0 = rs.final_scores(model, hists, values[items.row], context[items.row])
    np.testing.assert_allclose(base[0][0], s0, atol=1e-5)
    np.testing.assert_allclose(base[0][1], h0, atol=1e-5)
    d = rs._FlatDraws(items, values, GROUPS, 4, 0)
    for j, p in enumerate(perts):
        dmg, ((s1, h1),) = pert[j]
        want_dmg, want = [], []
        for i in range(len(items.row)):
            sl = slice(d.cum[i], d.cum[i + 1])
            z = np.zeros((len(hists[i]), values.shape[1]), np.float32)
            z[:, d.noise_cols] = d.z[sl]
            dr = rs.Draws(d.u[sl], np.argsort(d.rank[sl], kind="stable"), z)
            h, dm = rs.perturb_history(hists[i], p, GROUPS, dr)
            want_dmg.append(dm)
            want.append(h)
        np.testing.assert_allclose(dmg, want_dmg, rtol=1e-5, err_msg=str(p))
        ch = np.flatnonzero(np.asarray(want_dmg) > 0)
        assert len(ch) > 0, p
        ws, wh = rs.final_scores(model, [want[i] for i in ch], values[items.row[ch]], context[items.row[ch]])
        np.testing.assert_allclose(s1, ws, atol=1e-5, err_msg=str(p))
        np.testing.assert_allclose(h1, wh, atol=1e-5, err_msg=str(p))


class _Embedded(torch.nn.Module):
    """A registered-style model whose GRU reads a projection of the features, not the features."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(len(FEATURE_NAMES), 5)
        self.rnn = torch.nn.GRU(5, 6, batch_first=True)
        self.out = torch.nn.Linear(6 + len(CONTEXT), 1)

    def forward(self, x, ctx):
        h, _ = self.rnn(self.proj(x))
        h_prev = torch.nn.functional.pad(h, (0, 0, 1, 0))[:, :-1]
        return self.out(torch.cat([h_prev, ctx], -1)).squeeze(-1)


def _module_cases(module_class):
    """8 dogs of 10 races, a team-style module (seeded) wrapped as a model, the items of target steps 4 and 9."""
    offsets, values, context, race, won = _setup(n_dogs=8, n_races=10)
    torch.manual_seed(0)
    model = LoadedModel.wrap(module_class(), FEATURE_NAMES, CONTEXT)
    ok = np.ones(len(values), bool)
    cases = rs.target_cases(offsets, ok, np.full(8, np.nan), 3, sample_dogs=8, seed=0, steps=(4, 9))
    return model, values, context, rs._Items(offsets[cases.dog].astype(np.int64), cases.row.astype(np.int64))


def test_a_model_whose_gru_does_not_read_the_features_falls_back_to_full_scoring():
    model, values, context, items = _module_cases(_Embedded)
    assert rs._fast_mode(model, values, context, items) is None
    perts = (rs.Perturbation("drop_last", 1), rs.Perturbation("noise_price", 0.5))
    base, pert = rs._rescore([model], values, context, items, perts, GROUPS, {k: True for k in rs.SEVERITY_UNITS},
                             seed=0, salt=0)
    hists = [values[a:b] for a, b in zip(items.start, items.row)]
    s0, _ = rs.final_scores(model, hists, values[items.row], context[items.row])
    np.testing.assert_allclose(base[0][0], s0, atol=1e-6)
    dmg, ((s1, _),) = pert[0]
    ws, _ = rs.final_scores(model, [h[:-1] for h in hists], values[items.row], context[items.row])
    np.testing.assert_allclose(s1, ws, atol=1e-6)


class _Unshifted(torch.nn.Module):
    """A model that scores race t from the state AFTER it (reads the GRU's output at t): needs the next step."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.GRU(len(FEATURE_NAMES), 6, batch_first=True)
        self.out = torch.nn.Linear(6 + len(CONTEXT), 1)

    def forward(self, x, ctx):
        h, _ = self.rnn(x)
        return self.out(torch.cat([h, ctx], -1)).squeeze(-1)


def test_a_module_reading_the_state_after_the_target_is_scored_with_it():
    model, values, context, items = _module_cases(_Unshifted)
    f = rs._fast_mode(model, values, context, items)
    assert f is not None and f.next_step
    assert not rs._fast_mode(_model(0), values, context, items).next_step  # the built-in model scores from h_{t-1}
    base, _ = rs._rescore([model], values, context, items, (), GROUPS, {}, seed=0, salt=0)
    hists = [values[a:b] for a, b in zip(items.start, items.row)]
    s0, _ = rs.final_scores(model, hists, values[items.row], context[items.row])
    np.testing.assert_allclose(base[0][0], s0, atol=1e-5)
