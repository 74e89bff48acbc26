"""Reproducibility maths: debiased CKA is unbiased where the classic one is not; Fleiss' kappa on hand-made labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gruviz_core import evaluate as ev
from gruviz_core import repro as rp


def test_debiased_cka_of_independent_representations_is_near_zero_at_n50_while_biased_is_not():
    rng = np.random.default_rng(0)
    deb, bia = [], []
    for _ in range(100):
        x, y = rng.normal(size=(50, 64)), rng.normal(size=(50, 64))
        deb.append(rp.debiased_cka(x, y))
        bia.append(rp.biased_cka(x, y))
    assert abs(np.mean(deb)) < 0.01 and np.std(deb) < 0.06
    assert np.mean(bia) > 0.4
    assert np.mean(bia) == pytest.approx(np.mean([ev.linear_cka(rng.normal(size=(50, 64)), rng.normal(size=(50, 64)))
                                                  for _ in range(30)]), abs=0.05)


def test_debiased_cka_is_one_for_the_same_representation_up_to_rotation_and_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert rp.debiased_cka(x, 2.5 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-9)


def test_hsic_unbiased_matches_the_gram_formula():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 5)), rng.normal(size=(20, 3))
    k, l_ = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l_, 0)
    n, one = 20, np.ones(20)
    want = (np.trace(k @ l_) + one @ k @ one * (one @ l_ @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l_ @ one) / (n * (n - 3))
    assert rp.hsic_unbiased(x, y) == pytest.approx(want)
    assert rp.cka_replicates(x, y, np.ones((1, n)))[0] == pytest.approx(rp.debiased_cka(x, y), abs=1e-5)


def test_cka_replicates_drop_dogs_with_zero_weight():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
    w = np.ones((1, 40))
    w[0, 30:] = 0
    assert rp.cka_replicates(x, y, w)[0] == pytest.approx(rp.debiased_cka(x[:30], y[:30]), abs=1e-4)


def test_cka_curve_has_a_baseline_near_zero_and_an_interval_around_the_point():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 16))
    states = {1: {0: x, 1: x + 0.5 * rng.normal(size=x.shape)}}
    df = rp.cka_curve(states, weights_of=lambda n: rng.poisson(1.0, size=(50, n)), seed=0)
    r = df.iloc[0]
    assert r["n"] == 400 and r["lo"] <= r["cka"] <= r["hi"] and abs(r["cka_perm"]) < 0.02 and r["cka"] > 0.5


def test_cka_dogs_draws_fixed_n_among_dogs_with_t_races_and_stops_below_the_minimum():
    n_steps = np.r_[np.full(500, 3), np.full(300, 10), np.full(150, 40)]
    picks = rp.cka_dogs(n_steps, seed=0, n_per_step=250, min_dogs=200, steps=(1, 3, 5, 10, 20, 40))
    assert sorted(picks) == [1, 3, 5, 10]  # 150 dogs have 20+ races: the curve stops
    assert all(len(d) == 250 for d in picks.values())
    assert all((n_steps[d] >= t).all() for t, d in picks.items())


@pytest.mark.parametrize(
    "labels, kappa",
    [
        ([["a", "a", "a"], ["b", "b", "b"], ["a", "a", "a"], ["b", "b", "b"]], 1.0),
        ([["a", "a", "a"], ["a", "b", "a"], ["b", "b", "b"], ["c", "c", "b"]], 0.4666666666666667),
        # Fleiss (1971)-style hand count: 2 items, 4 raters, perfect split -> P_i = 1/3, P_e = 1/2
        ([["a", "a", "b", "b"], ["a", "a", "b", "b"]], -1 / 3),
    ],
)
def test_fleiss_kappa_on_hand_made_labels(labels, kappa):
    assert rp.fleiss_kappa(np.array(labels, dtype=object)) == pytest.approx(kappa)


def test_fleiss_kappa_of_two_raters_equals_scotts_pi_and_is_nan_when_one_label():
    a = np.array(["s", "u", "s", "s", "u", "u"], dtype=object)
    b = np.array(["s", "u", "u", "s", "u", "s"], dtype=object)
    p_o = np.mean(a == b)
    p_s = (np.sum(a == "s") + np.sum(b == "s")) / 12
    pi = (p_o - (p_s**2 + (1 - p_s) ** 2)) / (1 - (p_s**2 + (1 - p_s) ** 2))
    assert rp.fleiss_kappa(np.stack([a, b], axis=1)) == pytest.approx(pi)
    assert np.isnan(rp.fleiss_kappa(np.full((5, 3), "x", dtype=object)))


def test_specific_agreement_counts_items_any_seed_chose():
    lab = np.array([["s", "s", "s"], ["s", "u", "u"], ["u", "u", "u"]], dtype=object)
    agree = rp.specific_agreement(lab)
    assert agree["s"] == (pytest.approx((6 + 0) / (4 * 2)), 2)
    assert agree["u"] == (pytest.approx((2 + 6) / (5 * 2)), 2)


def test_repro_table_leaves_out_undecided_dogs():
    probs = np.array([[0.6, 0.5, 0.55], [0.4, 0.5, 0.45]])
    race, dog = np.array([0, 0]), np.array([0, 1])
    cohort = np.array(["saturated", "undecided"], dtype=object)
    labels = np.array([["saturated", "saturated", "partial"], ["undecided"] * 3], dtype=object)
    t = ev.repro_table(probs, race, dog, cohort, labels, np.array([True, False]))
    k = t[t.metric == "fleiss_kappa"].iloc[0]
    assert k["n"] == 1 and "undecided" not in set(t[t.metric == "agreement"].scope)
    assert isinstance(t, pd.DataFrame) and set(t.columns) == {"scope", "metric", "value", "n"}


def test_report_shows_resilience_by_step_contrasts_and_cka_with_n(tmp_path):
    from reports.render import render
    from tests.report_fixtures import report_of, write_run

    run = write_run(tmp_path / "run", n_dogs=30)
    model = report_of(run)
    sec = {s.id: s for s in model.sections}
    res = {p.title: p for p in sec["resilience"].panels}
    assert "Early vs late within each kind" in res and "hypothesis holds" in res["Early vs late within each kind"].explain
    table = res["All resilience numbers"].table
    assert any("n/a" in r for r in table.rows)  # noise on never-observed times
    cka = {p.title: p for p in sec["reproducibility"].panels}["Debiased CKA between seeds by race"]
    assert "dogs compared at each race" in [p.title for p in cka.figure.panels]
    html = render(model)
    assert "fleiss_kappa" in html and "change in race NLL" in html and "shuffled" in html
