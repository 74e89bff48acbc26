"""The comparison itself, tested like science: simulated races where the effect is known (zero, or a
given sign and size) and the code must recover it, out of sample by construction."""

from __future__ import annotations

import numpy as np
import pytest

from gruviz_core import cohorts as co
from gruviz_core import comparisons as cmp
from gruviz_core.racing import race_softmax


def _races(seed: int, n_dogs: int = 600, n_races: int = 1500, field: int = 8):
    """Races of `field` runners drawn from `n_dogs` dogs; a market that knows true ability; the model = the
    market plus noise. -> dict of per-row arrays (race codes, dog, step, won, p_market, p_model)."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(0, 0.8, n_dogs)
    dog = np.concatenate([rng.choice(n_dogs, field, replace=False) for _ in range(n_races)])
    race = np.repeat(np.arange(n_races), field)
    true = race_softmax(ability[dog], race)
    won = np.zeros(len(dog))
    cum = np.cumsum(true.reshape(n_races, field), axis=1)
    pick = (rng.random((n_races, 1)) < cum).argmax(axis=1)
    won[np.arange(n_races) * field + pick] = 1.0
    market = race_softmax(ability[dog] + rng.normal(0, 0.3, len(dog)), race)
    model = race_softmax(ability[dog] + rng.normal(0, 0.5, len(dog)), race)
    order = np.lexsort((race, dog))  # steps: a dog's races in race order
    step = np.empty(len(dog), np.int64)
    first = np.r_[True, dog[order][1:] != dog[order][:-1]]
    idx = np.arange(len(dog))
    start = np.maximum.accumulate(np.where(first, idx, 0))
    step[order] = idx - start + 1
    return {"race": race, "dog": dog, "step": step, "won": won, "market": market, "model": model, "n_dogs": n_dogs}


def _effect(d, group, p, n_boot=200, seed=0):
    rm = cmp.row_metrics(p, d["won"], d["race"], d["market"])
    w = cmp.bootstrap_weights(d["n_dogs"], n_boot, seed)
    return cmp.stratified_effect(rm, d["dog"], group, cmp.stratum_of(d["step"]), w, a="saturated", b="unsaturated",
                                 metric="gap_vs_market", n_dogs=d["n_dogs"])


@pytest.mark.slow
def test_random_statuses_claim_an_effect_at_about_the_nominal_rate():
    claims, n = 0, 60
    for seed in range(n):
        d = _races(seed)
        rng = np.random.default_rng(1000 + seed)
        dog_status = rng.choice(["saturated", "unsaturated"], d["n_dogs"])  # independent of everything
        e = _effect(d, dog_status[d["dog"]], d["model"], seed=seed)
        assert e["comparable"]
        claims += e["excludes_zero"]
    # nominal 5%; with 60 replications a rate of 0.15 or more would be 3+ sd above it
    assert claims / n <= 0.15, claims


def test_a_known_degradation_is_found_with_its_sign_and_size():
    d = _races(7)
    rng = np.random.default_rng(3)
    status = rng.choice(["saturated", "unsaturated"], d["n_dogs"])[d["dog"]]
    sat = status == "saturated"
    # noise on the scores of saturated runners only: a known loss of skill on exactly those rows
    logit = np.log(d["model"])
    bad = race_softmax(np.where(sat, logit + rng.normal(0, 1.0, len(logit)), logit), d["race"])
    e = _effect(d, status, bad)
    ll = lambda p: -(d["won"] * np.log(p) + (1 - d["won"]) * np.log1p(-p))  # noqa: E731
    truth = np.mean((ll(bad) - ll(d["market"]))[sat]) - np.mean((ll(bad) - ll(d["market"]))[~sat])
    assert e["excludes_zero"] and e["diff"] > 0
    assert e["lo"] <= truth <= e["hi"]
    assert abs(e["diff"] - truth) < 0.5 * abs(truth)


def test_too_small_groups_are_not_compared():
    d = _races(1, n_dogs=150, n_races=60)
    status = np.where(d["dog"] < 20, "saturated", "unsaturated")
    e = _effect(d, status, d["model"])
    assert e["comparable"] is False and e["excludes_zero"] is False and e["n_dogs_a"] <= 20
    within = cmp.within_dog_effect(cmp.row_metrics(d["model"], d["won"], d["race"], d["market"]), d["dog"],
                                   d["step"] > 2, cmp.bootstrap_weights(d["n_dogs"], 50, 0), metric="gap_vs_market",
                                   n_dogs=d["n_dogs"])
    assert isinstance(within["comparable"], bool) and isinstance(within["excludes_zero"], bool)  # JSON true/false


def test_negative_control_at_step_one_sees_selection_not_state():
    """Dogs that go on to 'saturate' are better dogs: at step 1 (h_0 = 0 for all) any gap between the
    groups is selection. A model that is worse for good dogs at every step shows it at step 1 too."""
    d = _races(11)
    rng = np.random.default_rng(5)
    good = rng.random(d["n_dogs"]) < 0.5
    cohort = np.where(good, "saturated", "unsaturated")
    logit = np.log(d["model"])
    noisy = logit + rng.normal(0, 1.0, len(logit))
    p = race_softmax(np.where(good[d["dog"]], noisy, logit), d["race"])  # worse on these dogs at every step
    first = d["step"] == 1
    group = np.where(first, cohort[d["dog"]], "-")
    rm = cmp.row_metrics(p, d["won"], d["race"], d["market"])
    w = cmp.bootstrap_weights(d["n_dogs"], 200, 0)
    e = cmp.stratified_effect(rm, d["dog"], group, cmp.stratum_of(d["step"]), w, a="saturated", b="unsaturated",
                              metric="gap_vs_market", n_dogs=d["n_dogs"], sizes=cmp.Sizes(min_dogs=50, min_winners=10))
    assert e["diff"] > 0 and e["comparable"]


def test_status_at_prediction_uses_only_earlier_steps():
    rule = co.CohortRule(name="tanh-f", w=2, k=2)  # the magnitude rule: saturated once F stays high
    s = np.array([0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])
    f = np.array([0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    step, off = np.arange(1, 9), np.array([0, 8])
    got = co.status_at_prediction(s, f, step, off, np.array([3.0]), rule)
    # T* = 3, k = 2: checkable after step 4, so from race 5 on; race 5's F so far is the mean of steps 3-4
    assert list(got.plateau_reached) == [False] * 4 + [True] * 4
    assert got.f_run[4] == pytest.approx(0.5) and got.f_run[3] == pytest.approx(0.25)
    assert list(got.status[:4]) == ["undecided"] * 4 and set(got.status[4:]) == {"saturated"}
    assert got.s_prev[0] == 0 and got.s_prev[5] == pytest.approx(0.3)
    # changing the future (steps 6-8) changes nothing before it
    f2 = f.copy()
    f2[5:] = 0.0
    again = co.status_at_prediction(s, f2, step, off, np.array([3.0]), rule)
    assert list(again.status[:6]) == list(got.status[:6])


def test_tanh_rule_may_find_no_saturated_dog_and_unknown_rules_are_refused():
    rule = co.RULES["tanh-f"]
    assert (rule.name, rule.version, rule.scale) == ("tanh-f", 1, "absolute")
    cohorts = co.assign_cohorts(np.array([10.0, 12.0, np.nan]), np.array([40, 40, 3]), np.array([0.0, 0.01, 0.0]), rule)
    assert "saturated" not in set(cohorts) and list(cohorts) == ["unsaturated", "unsaturated", "undecided"]
    from gruviz_core.errors import ConfigError

    with pytest.raises(ConfigError, match="renamed"):
        co.CohortRule.from_dict({"name": "plateau-f"})
    with pytest.raises(ConfigError, match="unknown"):
        co.CohortRule.from_dict({"name": "plateau-q"})


def test_concordance_and_race_nll_by_hand():
    race = np.array([0, 0, 0, 1, 1])
    won = np.array([1.0, 0, 0, 0, 1])
    p = np.array([0.5, 0.3, 0.2, 0.6, 0.4])
    rm = cmp.row_metrics(p, won, race, None)
    np.testing.assert_allclose(rm.values[:, 4], [1.0, 1.0, 1.0, 0.0, 0.0])
    assert cmp.race_nll(p, won, race) == pytest.approx(np.mean([-np.log(0.5), -np.log(0.4)]))


def test_dose_response_recovers_a_linear_trend():
    d = _races(4)
    rng = np.random.default_rng(9)
    score = rng.random(len(d["dog"]))
    logit = np.log(d["model"])
    p = race_softmax(logit + rng.normal(0, 1.0, len(logit)) * 2 * score, d["race"])  # noisier as the score grows
    rm = cmp.row_metrics(p, d["won"], d["race"], d["market"])
    w = cmp.bootstrap_weights(d["n_dogs"], 200, 0)
    table, trend = cmp.dose_response(rm, d["dog"], score, np.ones(len(score), bool), w, metric="gap_vs_market",
                                     n_dogs=d["n_dogs"])
    assert len(table) == 10 and trend["slope"] > 0 and trend["lo"] > 0


def test_uint8_weights_give_the_numbers_float32_weights_gave():
    """bootstrap_weights keeps uint8 counts; every comparison casts the columns it uses, so the effects,
    group tables and within-dog intervals are the very numbers float32 weights give."""
    d = _races(11)
    w8 = cmp.bootstrap_weights(d["n_dogs"], 200, 0)
    assert w8.dtype == np.uint8 and int(w8.max()) < 16
    w32 = w8.astype(np.float32)
    rm = cmp.row_metrics(d["model"], d["won"], d["race"], d["market"])
    group = np.random.default_rng(4).choice(["saturated", "unsaturated"], d["n_dogs"])[d["dog"]]
    stratum = cmp.stratum_of(d["step"])
    kw = {"a": "saturated", "b": "unsaturated", "metric": "gap_vs_market", "n_dogs": d["n_dogs"]}
    assert cmp.stratified_effect(rm, d["dog"], group, stratum, w8, **kw) == \
        cmp.stratified_effect(rm, d["dog"], group, stratum, w32, **kw)
    t8, t32 = (cmp.group_table(rm, d["dog"], group, stratum, w, groups=("saturated", "unsaturated"),
                               n_dogs=d["n_dogs"]) for w in (w8, w32))
    assert t8.equals(t32)
    after = d["step"] > 3
    assert cmp.within_dog_effect(rm, d["dog"], after, w8, metric="runner_log_loss", n_dogs=d["n_dogs"]) == \
        cmp.within_dog_effect(rm, d["dog"], after, w32, metric="runner_log_loss", n_dogs=d["n_dogs"])


@pytest.fixture
def one_blas_thread():
    """One BLAS thread, as the stages run (OMP_NUM_THREADS=1): a pytest run outside `make test` may have started
    OpenBLAS with more before conftest set it, and at two threads a whole float32 product is split otherwise."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [None, 10])
@pytest.mark.parametrize("columns", ["all", "some"])
def test_products_by_blocks_of_replicates_are_the_whole_product(monkeypatch, one_blas_thread, dtype, k, columns):
    """weighted / weighted_mean cast the weights a block of replicates at a time: the numbers of the whole float
    product (blocks of 16 replicates here, on 200,000 dogs). Bit for bit with this machine's OpenBLAS (the
    golden night is unchanged); asserted to rounding, since another CPU's kernels may group rows otherwise."""
    rng = np.random.default_rng(5)
    w = cmp.poisson1(rng, (200, 200_000))
    cols = rng.random(w.shape[1]) < 0.6 if columns == "some" else None
    n = w.shape[1] if cols is None else int(cols.sum())
    x = rng.standard_normal(n if k is None else (n, k))
    monkeypatch.setattr(cmp, "_BLOCK_BYTES", 16 * n * np.dtype(dtype).itemsize)
    blocks = [r for r, _ in cmp.replicate_blocks(w, cols, dtype=dtype)]
    assert len(blocks) == 13 and blocks[-1] == slice(192, 200)
    whole = (w if cols is None else w[:, cols]).astype(dtype) @ x.astype(dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cmp.weighted(w, x, cols, dtype=dtype), whole, rtol=rtol, atol=0)
    if k is None and dtype == np.float64:  # within-dog effects: the dogs with both kinds of race
        idx = np.flatnonzero(cols) if cols is not None else np.arange(n)
        wf = w[:, idx].astype(np.float64)
        np.testing.assert_allclose(cmp.weighted_mean(w, x, idx), (wf @ x) / wf.sum(axis=1), rtol=1e-12, atol=0)
