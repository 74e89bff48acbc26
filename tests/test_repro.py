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


# ------------------------------------------------------------------ status at a fixed race, kappa or not


@pytest.mark.parametrize(
    "t, want",
    [(5, "undecided"), (8, "undecided"), (9, "settling"), (12, "settling"), (13, "settled"), (40, "settled"),
     (41, "")],
)
def test_status_at_step_from_the_plateau_alone(t, want):
    # T* = 10, k = 3: confirmed at step 12, so settled from race 13; settling needs w + k = 8 earlier races
    got = rp.status_at_step(np.array([10.0, np.nan]), np.array([40, 40]), t, 5, 3)
    assert got[0] == want
    assert got[1] == ("" if t > 40 else "settling" if t >= 9 else "undecided")


def test_status_at_step_uses_only_earlier_steps():
    # the status of race t is the same whether the plateau is found at t or later: nothing at t or after decides it
    for t in range(1, 30):
        later = rp.status_at_step(np.array([float(t), 50.0, np.nan]), None, t, 5, 3)
        assert later[0] == later[1] == later[2]


def _planted_labels(n: int, k: int, alpha: float, p_settled: float, seed: int) -> np.ndarray:
    """Each seed copies the dog's true status with probability alpha, else draws from the prevalence: kappa = alpha^2."""
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < p_settled
    copy = rng.random((n, k)) < alpha
    draw = rng.random((n, k)) < p_settled
    return np.where(np.where(copy, truth[:, None], draw), "settled", "settling").astype(object)


@pytest.mark.parametrize("alpha", [0.5, 0.8, 0.95])
def test_kappa_recovers_a_planted_agreement_level(alpha):
    lab = _planted_labels(4000, 3, alpha, 0.4, seed=int(alpha * 100))
    w = np.random.default_rng(1).poisson(1.0, size=(200, 4000)).astype(np.float32)
    a = rp.kappa_or_not(lab, weights=w)
    assert a.note == "" and a.n == 4000
    assert a.kappa == pytest.approx(alpha**2, abs=0.035)
    assert a.lo <= a.kappa <= a.hi and a.lo - 0.01 <= alpha**2 <= a.hi + 0.01
    assert a.kappa == pytest.approx(rp.fleiss_kappa(lab))


def test_kappa_interval_by_blocks_of_replicates_is_exact_and_takes_the_columns_a_block_at_a_time(monkeypatch):
    """The bootstrap kappas are sums of whole numbers in float64: cut into many blocks of replicates they are the
    same to the bit as in one block, with the labelled dogs' columns selected block by block (a million dogs'
    float32 copy of the weights was 4 GB), and each replicate is Fleiss' kappa of its weighted counts."""
    from gruviz_core import comparisons

    lab = _planted_labels(3000, 4, 0.8, 0.4, seed=3)
    w = np.random.default_rng(2).poisson(1.0, size=(100, 5000)).astype(np.uint8)
    dogs = np.sort(np.random.default_rng(4).choice(5000, 3000, replace=False))
    whole = rp.kappa_or_not(lab, weights=w[:, dogs])
    counts = rp._counts(lab, sorted(set(lab.ravel())))
    reps_whole = rp._kappa_of(counts, w[:, dogs])
    monkeypatch.setattr(comparisons, "_BLOCK_BYTES", 16 * 3000 * 8)  # blocks of 16 replicates
    reps = rp._kappa_of(counts, w, dogs)
    np.testing.assert_array_equal(reps, reps_whole)
    blocked = rp.kappa_or_not(lab, weights=w, cols=dogs)
    assert (blocked.kappa, blocked.lo, blocked.hi) == (whole.kappa, whole.lo, whole.hi)
    for b in (0, 57):  # by the definition: weighted observed and chance agreement
        wb = w[b, dogs].astype(np.float64)
        k = 4
        p_i = ((counts**2).sum(1) - k) / (k * (k - 1))
        p_obs = (wb * p_i).sum() / wb.sum()
        p_c = (wb[:, None] * counts).sum(0) / (k * wb.sum())
        assert reps[b] == pytest.approx((p_obs - (p_c**2).sum()) / (1 - (p_c**2).sum()), rel=1e-12)


def test_degenerate_labelling_is_not_estimable_with_the_reason_and_per_category_agreement():
    lab = np.full((1000, 3), "settling", dtype=object)
    lab[0, :2] = "settled"  # one dog settled under two of three seeds: kappa would be an unstable ratio of tiny numbers
    a = rp.kappa_or_not(lab, weights=np.ones((5, 1000)))
    assert np.isnan(a.kappa) and np.isnan(a.lo) and a.note.startswith("not estimable")
    assert "settling" in a.note and "99.9" in a.note
    cats = {c: (v, n) for c, v, n in a.categories}
    assert cats["settled"] == (pytest.approx(0.5), 1) and cats["settling"][1] == 1000
    assert rp.kappa_or_not(np.empty((0, 3), dtype=object)).note.startswith("not estimable")


def test_status_labels_take_dogs_that_ran_race_t_decided_under_every_seed():
    plateau = np.array([[10.0, 10.0], [np.nan, 12.0], [6.0, 6.0], [10.0, 10.0]])
    n_steps = np.array([30, 30, 30, 10])  # the last dog never ran race 20
    lab, dogs = rp.status_labels(plateau, n_steps, 20, w=5, k=3)
    assert dogs.tolist() == [0, 1, 2] and lab[1].tolist() == ["settling", "settled"]
    assert len(rp.status_labels(plateau, n_steps, 8, w=5, k=3)[1]) == 0  # before w + k races nobody is decided
    _, kept = rp.status_labels(plateau, n_steps, 20, w=5, k=3, keep=np.array([True, False, True, True]))
    assert kept.tolist() == [0, 2]


# ------------------------------------------------------------------ churn, spread, ensemble on simulated races


def _races(n_races=3000, field=6, n_dogs=1500, k=3, noise=0.5, seed=0, same=False):
    """Races whose seeds are noisy copies of the true logits (identical seeds when same); winners drawn from the truth."""
    rng = np.random.default_rng(seed)
    race = np.repeat(np.arange(n_races), field)
    dog = rng.integers(0, n_dogs, len(race))
    step = rng.integers(1, 60, len(race))
    z = rng.normal(size=len(race))

    def soft(x):
        e = np.exp(x - x.max())
        return e / np.bincount(race, e)[race]

    truth = soft(z)
    eps = rng.normal(size=len(race))
    probs = np.stack([soft(z + noise * (eps if same else rng.normal(size=len(race)))) for _ in range(k)], axis=1)
    cum = np.cumsum(truth.reshape(n_races, field), axis=1)
    win = (cum < rng.random((n_races, 1))).sum(1)
    won = np.zeros(len(race))
    won[np.arange(n_races) * field + np.minimum(win, field - 1)] = 1
    return probs, race, dog, step, won


def _status(n_dogs=1500, k=3, seed=0, step_ok=None):
    rng = np.random.default_rng(seed + 7)
    plateau = np.where(rng.random((n_dogs, 1)) < 0.5, rng.integers(6, 30, (n_dogs, 1)), np.nan).repeat(k, axis=1)
    return ev.SeedStatus(plateau, rng.integers(20, 80, n_dogs), 5, 3, step_ok)


def _value(t: pd.DataFrame, metric: str, by: str, scope: str) -> float:
    return float(t[(t.metric == metric) & (t.by == by) & (t.scope == scope)]["value"].iloc[0])


def test_churn_and_spread_are_zero_for_identical_seeds_and_positive_for_independent_ones():
    probs, race, dog, step, won = _races(same=True)
    t = ev.repro_table(probs, race, dog, step, won, _status())
    rows = t[t.metric.isin(["top_pick_churn", "prob_spread"]) & (t.scope != "settled - settling")]
    assert len(rows) > 10 and np.allclose(rows["value"], 0.0, atol=1e-12)
    assert (t[t.metric == "top_pick_churn"]["value"] == 0).all()
    rng = np.random.default_rng(5)
    field = 6
    indep = rng.dirichlet(np.ones(field), size=(3000, 3)).transpose(0, 2, 1).reshape(-1, 3)  # (race * field, seed)
    t = ev.repro_table(indep, race, dog, step, won, _status())
    churn = t[(t.metric == "top_pick_churn") & (t.scope != "settled - settling")]
    assert (churn["value"] > 0.5).all()
    assert _value(t, "top_pick_churn", "all", "all") == pytest.approx(1 - 1 / field, abs=0.02)  # P(two picks differ)
    assert (t[t.metric == "prob_spread"]["value"].iloc[:-1] > 0).all()


def test_churn_groups_partition_races_so_a_small_group_is_not_inflated():
    # seeds pick independently of a label that marks 10% of runners: every group's churn is the overall churn
    # (counting a race when either seed picked such a runner would give about 2c / (1 + c) in the small group)
    rng = np.random.default_rng(6)
    probs, race, dog, step, won = _races(n_races=6000, noise=1.5, seed=6)
    small = rng.random(1500) < 0.1
    plateau = np.where(small, 2.0, np.nan)[:, None].repeat(3, axis=1)  # settled early: a status independent of p
    t = ev.repro_table(probs, race, dog, np.full(len(race), 30), won, ev.SeedStatus(plateau, np.full(1500, 60), 5, 3),
                       weights=ev.poisson_weights(1500, 200, 1))
    c = _value(t, "top_pick_churn", "all", "all")
    settled = t[(t.metric == "top_pick_churn") & (t.scope == "settled")].iloc[0]
    assert 0.2 < c < 0.8 and settled["n"] < 0.2 * 6000
    assert settled["lo"] - 0.02 <= c <= settled["hi"] + 0.02
    assert settled["value"] < 2 * c / (1 + c) - 0.05
    n_all = t[(t.metric == "top_pick_churn") & (t.by == "status")].set_index("scope")["n"]
    assert n_all[["settled", "settling"]].sum() == 6000  # every race in exactly one status group


def test_ensemble_race_nll_is_at_most_the_mean_seed_when_seeds_are_noisy_copies_of_the_truth():
    from gruviz_core.comparisons import race_nll

    probs, race, dog, step, won = _races(noise=0.8, seed=3)
    out = rp.seed_vs_ensemble(probs, won, race, dog=dog, weights=ev.poisson_weights(1500, 300, 2))
    assert set(out) == {"seed_nll", "ensemble_nll", "mean_seed_nll", "diff", "lo", "hi", "n_races"}
    assert out["seed_nll"][0] == pytest.approx(race_nll(probs[:, 0], won, race))
    assert out["ensemble_nll"] == pytest.approx(race_nll(probs.mean(axis=1), won, race))
    assert out["ensemble_nll"] <= out["mean_seed_nll"] and out["diff"] < -0.01  # Jensen, and a real gain here
    assert out["lo"] <= out["diff"] <= out["hi"] < 0 and out["n_races"] == 3000
    same = rp.seed_vs_ensemble(probs[:, [0, 0]], won, race)
    assert same["diff"] == pytest.approx(0.0, abs=1e-12) and same["lo"] is None


def test_repro_table_uses_debut_observed_dogs_for_race_count_and_status_only():
    probs, race, dog, step, won = _races(seed=4)
    ok = np.zeros(1500, bool)
    ok[:750] = True
    t = ev.repro_table(probs, race, dog, step, won, _status(step_ok=ok))
    assert list(t.columns) == list(ev.REPRO_COLUMNS)
    spread = t[t.metric == "prob_spread"]
    assert spread[spread.by == "all"]["n"].iloc[0] == len(race)
    assert spread[spread.by == "race_count"]["n"].sum() == int(ok[dog].sum())
    kappa = t[t.metric == "fleiss_kappa"]
    assert kappa["step"].tolist() == list(rp.KAPPA_STEPS) and (kappa["n"] <= 750).all()
    # identical plateaus under every seed: full agreement where both labels occur
    assert np.allclose(kappa["value"].dropna(), 1.0)


def test_repro_table_prints_kappa_not_estimable_for_a_degenerate_labelling():
    probs, race, dog, step, won = _races(seed=8)
    none = ev.SeedStatus(np.full((1500, 3), np.nan), np.full(1500, 60), 5, 3)  # no plateau: every dog settling
    t = ev.repro_table(probs, race, dog, step, won, none)
    kappa = t[t.metric == "fleiss_kappa"]
    assert kappa["value"].isna().all() and kappa["note"].str.startswith("not estimable: one label (settling)").all()
    agree = t[t.metric == "agreement"]
    assert set(agree.scope) == {"settling"} and (agree["n"] == 1500).all()


def test_report_says_not_estimable_and_prints_no_kappa_number():
    from gruviz_core.results import RunResults
    from reports.sections.seeds import NOT_ESTIMABLE, repro_section

    probs, race, dog, step, won = _races(seed=8)
    none = ev.SeedStatus(np.full((1500, 3), np.nan), np.full(1500, 60), 5, 3)
    rep = ev.repro_table(probs, race, dog, step, won, none, weights=ev.poisson_weights(1500, 50, 1))
    sec = repro_section(RunResults(name="x", meta={}, summary=None, headline={}, repro=rep))
    kappa = {p.title: p for p in sec.panels}["Agreement on status at fixed races"]
    assert all(r[1] == NOT_ESTIMABLE and r[2] is None for r in kappa.table.rows)
    assert "not estimable at races 15, 20, 25, 30" in kappa.explain and "kappa 0" not in kappa.explain
    assert "nan" not in kappa.explain.lower()
    churn = {p.title: p for p in sec.panels}["Churn and spread by race count and status"]
    assert "Two seeds pick different favourites in" in churn.explain and churn.figure is not None
    ens = {p.title: p for p in sec.panels}["The ensemble against a single seed"]
    assert "The ensemble of the 3 seeds scores race NLL" in ens.explain
    assert ens.explain.count("nan") == 0


def test_report_shows_resilience_by_step_contrasts_and_cka_as_one_health_line(tmp_path):
    from reports.render import render
    from storage.results import read_run_results
    from tests.report_fixtures import report_of, write_run

    run = write_run(tmp_path / "run", n_dogs=30)
    model = report_of(run)
    sec = {s.id: s for s in model.sections}
    res = {p.title: p for p in sec["resilience"].panels}
    assert res  # the resilience section renders (its content is tested in test_resilience)
    panels = {p.title: p for p in sec["reproducibility"].panels}
    cka = panels["Representation health (CKA)"]
    assert cka.figure is None and cka.collapsed and "debiased CKA falls to 0.63 at race 1" in cka.explain
    assert "rise" not in cka.explain and len(cka.table.rows) == len(read_run_results(run).cka)
    kappa = panels["Agreement on status at fixed races"]
    assert kappa.table.rows[0][1] == "not estimable" and "kappa 0.52" in kappa.explain
    html = render(model)
    assert "not estimable" in html and "Fleiss&#39; kappa" in html and "shuffled" in html


def test_cka_health_line_reads_the_lowest_cka_with_n_and_the_shuffled_baseline():
    from gruviz_core.results import RunResults
    from reports.sections.seeds import repro_section

    cka = pd.DataFrame([(t, 0, 1, 1000 - t, 0.95 + 0.0005 * t, 0.94, 0.99, 0.001, 0.96) for t in (1, 5, 20, 60)],
                       columns=list(rp.CKA_COLUMNS))
    sec = repro_section(RunResults(name="x", meta={}, summary=None, headline={}, cka=cka))
    line = {p.title: p for p in sec.panels}["Representation health (CKA)"].explain
    assert line.startswith("The seeds learn the same representation: debiased CKA >= 0.95 at every race drawn")
    assert "races 1-60, 940 to 999 dogs" in line and "at most 0.001" in line


def test_ensemble_reading_claims_a_gain_only_when_its_interval_is_below_zero():
    from gruviz_core.results import RunResults
    from reports.sections.seeds import repro_section

    probs, race, dog, step, won = _races(seed=9, same=True)  # identical seeds: the ensemble is each seed
    rep = ev.repro_table(probs, race, dog, step, won, _status(), weights=ev.poisson_weights(1500, 50, 1))
    ens = {p.title: p for p in repro_section(RunResults(name="x", meta={}, summary=None, headline={},
                                                        repro=rep)).panels}["The ensemble against a single seed"]
    assert "no clear gain from averaging" in ens.explain and "costs accuracy" not in ens.explain
