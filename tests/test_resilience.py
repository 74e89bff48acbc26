"""Resilience: no-ops and duplicates counted, relative severity, measures' algebra, n/a kinds, batched re-scoring
equal to scoring each damaged history, and (d) the within-dog design finds a planted early sensitivity."""

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


def test_structural_severity_is_a_share_and_never_erases_a_short_history():
    for n, kept in ((12, [9, 6]), (4, [3, 2]), (2, [1, 1]), (1, [1, 1])):
        h = _hist(n)
        d = rs.draws_for(n, h.shape[1], np.random.default_rng(0))
        for kind in ("truncate", "drop_random"):
            got = [len(rs.perturb_history(h, rs.Perturbation(kind, f), GROUPS, d)[0]) for f in (0.25, 0.5)]
            assert got == kept, (kind, n, got)
    assert rs.races_hit("drop_last", 1, np.array([1, 2, 40])).tolist() == [1, 1, 1]  # the latest race only
    assert rs.races_hit("shuffle_recent", 0.25, np.array([1, 2, 8])).tolist() == [0, 2, 2]


def test_latest_race_kinds_touch_only_the_latest_race():
    h = _hist(10)
    d = rs.draws_for(10, h.shape[1], np.random.default_rng(0))
    for kind in ("blank_last", "noise_last"):
        out, dmg = rs.perturb_history(h, rs.Perturbation(kind, 1.0), GROUPS, d)
        assert dmg > 0 and np.array_equal(out[:-1], h[:-1]) and not np.array_equal(out[-1], h[-1])
    out, _ = rs.perturb_history(h, rs.Perturbation("blank_last", 1), GROUPS, d)
    assert all(out[-1, f] == 1 and out[-1, v] == 0 for v, f in GROUPS.value_flag)


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
    offsets, values, context, race, won = _setup(n_races=18)
    ok = np.ones(len(values), bool)
    cases = rs.target_cases(offsets, ok, sample_dogs=30, seed=0, steps=(3, 5, 17))
    models = [_model(0), _model(1)]
    others = [rs.others_in_race(np.zeros(len(values)), race, ok, cases.row) for _ in models]
    perts = (rs.Perturbation("drop_last", 1), rs.Perturbation("noise_time", 1.0), rs.Perturbation("truncate", 0.5))
    values_no_time = values.copy()
    for c in GROUPS.time:
        values_no_time[:, GROUPS.flag_of(int(c))] = 1.0
        values_no_time[:, c] = 0.0
    eff = rs.case_effects(models, values_no_time, context, offsets, cases, others, won[cases.row], perts, GROUPS,
                          {k: True for k in rs.SEVERITY_UNITS}, seed=0)
    e = eff[1]  # noise on times that were never observed: a no-op everywhere
    assert not e.changed.any() and not any(np.nan_to_num(v).any() for v in e.values.values())
    assert eff[0].changed.all() and np.abs(eff[0].values["d_nll"]).sum() > 0
    assert np.all(eff[0].values["abs_dlogp"] >= 0) and np.all(eff[0].values["kl"] >= 0)
    np.testing.assert_allclose(eff[0].share, 1 / (cases.step - 1))  # the latest race of t - 1
    res, con = rs.summarise([rs.Block("dog", cases, perts, eff)], n_boot=5, seed=0)
    row = res[(res.perturbation == "noise_time") & (res.bucket == "all")].iloc[0]
    assert row.status == "no change" and row.n_changed == 0 and row.changed_share == 0 and np.isnan(row.d_nll)
    row = res[(res.perturbation == "drop_last") & (res.bucket == "all")].iloc[0]
    assert row.changed_share == 1 and row.n_cases == len(cases.dog) and row.severity == 1
    assert {"abs_dlogp", "kl", "flip_rate", "d_nll"} <= set(con[con.perturbation == "drop_last"].measure)
    assert set(res.columns) == set(rs.RESILIENCE_COLUMNS) and set(con.columns) == set(rs.CONTRAST_COLUMNS)


def test_log_p_change_and_kl_match_a_full_softmax():
    rng = np.random.default_rng(1)
    others = rng.normal(size=6)
    lse = np.logaddexp.reduce(others)
    s0, s1 = 0.4, -1.1
    p0 = np.exp(np.r_[s0, others] - np.logaddexp.reduce(np.r_[s0, others]))
    p1 = np.exp(np.r_[s1, others] - np.logaddexp.reduce(np.r_[s1, others]))
    dlp, kl = rs.dog_logp_change(np.array([s0]), np.array([s1]), np.array([lse]))
    assert dlp[0] == pytest.approx(abs(np.log(p1[0]) - np.log(p0[0])))
    assert kl[0] == pytest.approx(np.sum(p0 * np.log(p0 / p1)))


def test_identical_damaged_inputs_are_counted_once():
    """At t = 3 (two earlier races) removing half the races at random removes one of the two: when it is the
    latest, the case is drop_last's again and counts only there; truncating a quarter keeps one race too."""
    offsets, values, context, race, won = _setup()
    ok = np.ones(len(values), bool)
    cases = rs.target_cases(offsets, ok, sample_dogs=30, seed=0, steps=(3,))
    perts = (rs.Perturbation("drop_last", 1), rs.Perturbation("drop_random", 0.5), rs.Perturbation("truncate", 0.25),
             rs.Perturbation("truncate", 0.5))
    models = [_model(0)]
    others = [rs.others_in_race(np.zeros(len(values)), race, ok, cases.row)]
    eff = rs.case_effects(models, values, context, offsets, cases, others, won[cases.row], perts, GROUPS,
                          {k: True for k in rs.SEVERITY_UNITS}, seed=0)
    rnd, tr1, tr2 = eff[1], eff[2], eff[3]
    assert not eff[0].duplicate.any()
    assert tr2.duplicate.all()  # a half of two races is the quarter's one race: the same input
    assert 0 < rnd.duplicate.sum() < len(cases.dog)  # random removal hit the latest race for some dogs
    assert np.all(tr1.duplicate == ~rnd.duplicate)  # ... and the oldest race for the others
    res, _ = rs.summarise([rs.Block("dog", cases, perts, eff)], n_boot=5, seed=0)
    row = res[(res.perturbation == "truncate") & (res.severity == 0.5) & (res.bucket == "all")].iloc[0]
    assert row.n_duplicate == len(cases.dog) and row.status == "no change" and np.isnan(row.flip_rate)


def test_feed_scope_with_nothing_changed_is_zero_and_counts_every_runner():
    offsets, values, context, race, won = _setup()
    ok = np.ones(len(values), bool)
    cases = rs.target_cases(offsets, ok, sample_dogs=6, seed=0, steps=(5,))
    row_dog = np.repeat(np.arange(30), 8)
    perts = (rs.Perturbation("drop_last", 1),)
    e = rs.feed_effects([_model(0)], values, context, offsets, row_dog, race, ok, won, cases, perts, GROUPS,
                        {"drop_last": True}, seed=0)[0]
    assert e.changed.all() and np.isfinite(e.values["d_nll"]).all() and np.all(np.isin(e.values["flip_rate"], (0, 1)))
    assert np.all(e.values["kl"] >= 0) and np.all(e.values["abs_dlogp"] >= 0)
    e = rs.feed_effects([_model(0)], values, context, offsets, row_dog, race, ok, won, cases,
                        (rs.Perturbation("missing", 0.0),), GROUPS, {"missing": True}, seed=0)[0]
    assert not e.changed.any() and not e.values["d_nll"].any()


def test_readings_need_enough_dogs_and_latest_race_summary_reads_the_contrasts():
    assert rs.reading(0.01, 0.05, 150, 300) == "early more"
    assert rs.reading(-0.05, -0.01, 150, 300) == "late more"
    assert rs.reading(-0.01, 0.05, 150, 300) == "no clear difference"
    assert rs.reading(0.01, 0.05, 24, 36) == "too few for a reading"
    assert rs.reading(np.nan, np.nan, 500, 500) == "too few for a reading"
    empty = rs.latest_race_summary(None)
    assert empty["held_out"] == {} and empty["sensitive"] is None


# ---------------------------------------------------------------- (d) the within-dog sensitivity design

_PRICE = int(GROUPS.price[0])


class _Planted(torch.nn.Module):
    """A 2-unit GRU built by hand. Unit 0 counts races (h0 = 1 - 0.7^t); unit 1 holds the latest race's
    price with update gate sigma(gain * h0 + bias): gain > 0 makes the model write the latest race wholly
    early in a career and keep its old state late (early targets truly more sensitive to the latest race);
    gain 0 with a very negative bias makes it hold only the latest race at every step (no effect of step).
    The score of race t reads h_{t-1}."""

    def __init__(self, gain: float, bias: float):
        super().__init__()
        F = len(FEATURE_NAMES)
        self.rnn = torch.nn.GRU(F, 2, batch_first=True)
        with torch.no_grad():
            for p in self.rnn.parameters():
                p.zero_()
            # gate rows: r (0:2), z (2:4), n (4:6)
            self.rnn.bias_ih_l0[2] = np.log(0.7 / 0.3)  # z0 = 0.7: the counter creeps to 1
            self.rnn.bias_ih_l0[4] = 20.0  # n0 = tanh(20) = 1
            self.rnn.weight_hh_l0[3, 0] = gain  # z1 = sigmoid(gain * h0 + bias)
            self.rnn.bias_hh_l0[3] = bias
            self.rnn.weight_ih_l0[5, _PRICE] = 1.0  # n1 = tanh(price)
        self.head = torch.nn.Linear(2, 1)
        with torch.no_grad():
            self.head.weight[:] = torch.tensor([[0.0, 3.0]])
            self.head.bias.zero_()

    def forward(self, x, ctx):
        h, _ = self.rnn(x)
        h_prev = torch.nn.functional.pad(h, (0, 0, 1, 0))[:, :-1]
        return self.head(h_prev).squeeze(-1)


def _within_dog_contrast(gain: float, bias: float, n_dogs: int = 120, n_races: int = 32):
    rng = np.random.default_rng(5)
    offsets = np.arange(n_dogs + 1) * n_races
    values = np.zeros((n_dogs * n_races, len(FEATURE_NAMES)), np.float32)
    scale = rng.uniform(0.3, 1.5, n_dogs)  # dogs differ in how volatile their prices are
    values[:, _PRICE] = rng.normal(size=len(values)) * np.repeat(scale, n_races)
    context = np.zeros((len(values), len(CONTEXT)), np.float32)
    model = LoadedModel.wrap(_Planted(gain, bias), FEATURE_NAMES, CONTEXT)
    ok = np.ones(len(values), bool)
    cases = rs.within_dog_cases(offsets, ok, sample_dogs=n_dogs, seed=0, steps=(3, 5, 20, 30))
    n = len(cases.row)
    others = [(np.full(n, np.log(5.0)), np.zeros(n))]  # five rivals scored 0
    perts = (rs.Perturbation("drop_last", 1),)
    eff = rs.case_effects([model], values, context, offsets, cases, others, None, perts, GROUPS,
                          {k: True for k in rs.SEVERITY_UNITS}, seed=0)
    res, con = rs.summarise([rs.Block("within-dog", cases, perts, eff)], n_boot=400, seed=1)
    return res, con.set_index("measure")


def test_a_planted_early_sensitivity_is_found_within_the_same_dogs():
    res, con = _within_dog_contrast(gain=8.0, bias=-3.0)
    for m in ("abs_dlogp", "kl", "state_divergence", "flip_rate"):
        r = con.loc[m]
        assert r.contrast == "early - late, same dogs" and r.n_dogs_a == r.n_dogs_b == 120
        assert r["diff"] > 0 and r.lo > 0 and r.lo <= r["diff"] <= r.hi, (m, r["diff"], r.lo, r.hi)
    assert "d_nll" not in con.index  # harm is not measured off the held-out races
    assert con.loc["abs_dlogp", "reading"] == "early more"
    by_step = res[res.bucket.str.startswith("t=")].set_index("bucket")["abs_dlogp"]
    assert by_step["t=3"] > by_step["t=5"] > by_step["t=20"] >= by_step["t=30"] - 1e-3  # sensitivity falls


def test_no_planted_effect_gives_an_interval_that_includes_zero():
    _, con = _within_dog_contrast(gain=0.0, bias=-30.0)
    for m in ("abs_dlogp", "kl", "state_divergence"):
        r = con.loc[m]
        assert r.lo <= 0 <= r.hi, (m, r["diff"], r.lo, r.hi)
    assert con.loc["abs_dlogp", "reading"] == "no clear difference"


@pytest.mark.parametrize("layers", [1, 2])
def test_batched_rescoring_equals_scoring_each_damaged_history(layers):
    """The shared-prefix, packed re-scoring gives what `final_scores` gives on each damaged history, for every kind."""
    offsets, values, context, race, won = _setup(n_dogs=12, n_races=15)
    values[::3, GROUPS.value_flag[0][1]] = 1.0  # some missing values
    torch.manual_seed(3)
    model = LoadedModel.wrap(RaceGRU(ModelConfig(len(FEATURE_NAMES), len(CONTEXT), hidden_size=8, num_layers=layers,
                                                 context_skip=True)), FEATURE_NAMES, CONTEXT)
    ok = np.ones(len(values), bool)
    cases = rs.target_cases(offsets, ok, sample_dogs=12, seed=0, steps=(1, 2, 5, 9, 15))
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
        dmg, _, ((s1, h1),) = pert[j]
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
    cases = rs.target_cases(offsets, ok, sample_dogs=8, seed=0, steps=(4, 9))
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
    dmg, _, ((s1, _),) = pert[0]
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
