"""Cohort comparisons: metric values on hand-built races, bootstrap over dogs, CKA, kappa, churn."""

from __future__ import annotations

import numpy as np
import pytest

from gruviz_core import evaluate as ev
from gruviz_core import racing


def _races(n_races=300, field=6, n_dogs=120, seed=0):
    """Random races; dogs 0..n/2 'saturated', rest 'unsaturated'; a model with some skill."""
    rng = np.random.default_rng(seed)
    race = np.repeat(np.arange(n_races), field)
    dog = np.concatenate([rng.choice(n_dogs, size=field, replace=False) for _ in range(n_races)])
    ability = rng.normal(size=n_dogs)
    util = ability[dog] + rng.gumbel(size=len(dog))
    won = np.zeros(len(dog))
    for r in range(n_races):
        rows = np.flatnonzero(race == r)
        won[rows[np.argmax(util[rows])]] = 1
    score = ability[dog] + rng.normal(scale=0.5, size=len(dog))
    p = racing.race_softmax(score, race)
    cohort = np.where(np.arange(n_dogs) < n_dogs // 2, "saturated", "unsaturated").astype(object)
    step = rng.integers(1, 60, size=len(dog))
    return p, won, race, dog, cohort, step


def test_metrics_match_racing_helpers_at_unit_weights():
    p, won, race, dog, cohort, _ = _races()
    s = ev.dog_sums(p, won, dog, ev.top_pick_mask(p, race), len(cohort))
    m = ev.metric_values(s, np.ones((1, len(cohort))))
    assert m["log_loss"][0] == pytest.approx(racing.win_log_loss(p, won).mean())
    assert m["brier"][0] == pytest.approx(racing.brier(p, won).mean())
    assert m["hit_rate"][0] == pytest.approx(racing.hit_rate(p, won, race))


@pytest.mark.parametrize(
    "p, won, auc",
    [
        ([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], 1.0),
        ([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1], 0.0),
        ([0.2, 0.2, 0.2, 0.2], [0, 1, 0, 1], 0.5),
        ([0.1, 0.3, 0.2, 0.4], [0, 0, 1, 1], 0.75),
    ],
)
def test_auc_known_values(p, won, auc):
    p, won = np.array(p), np.array(won, dtype=float)
    dog = np.arange(4)
    s = ev.dog_sums(p, won, dog, np.zeros(4, bool), 4)
    assert ev.metric_values(s, np.ones((1, 4)))["auc"][0] == pytest.approx(auc)


def test_bootstrap_reproducible_for_a_seed_and_intervals_cover_point():
    p, won, race, dog, cohort, _ = _races()
    srcs = {"model": p, "uniform": racing.uniform_probs(race)}
    t1 = ev.cohort_metrics(srcs, won, race, dog, cohort, weights=ev.poisson_weights(len(cohort), 100, seed=7))
    t2 = ev.cohort_metrics(srcs, won, race, dog, cohort, weights=ev.poisson_weights(len(cohort), 100, seed=7))
    t3 = ev.cohort_metrics(srcs, won, race, dog, cohort, weights=ev.poisson_weights(len(cohort), 100, seed=8))
    assert t1.equals(t2)
    assert not t1.equals(t3)
    ok = t1[t1.metric != "hit_rate"]
    assert ((ok.lo <= ok.value) & (ok.value <= ok.hi)).all()
    assert set(t1.cohort) == {"all", "saturated", "unsaturated"}
    ll = t1.set_index(["source", "cohort", "metric"])["value"]
    assert ll["model", "all", "log_loss"] < ll["uniform", "all", "log_loss"]


def test_bootstrap_resamples_dogs_not_rows():
    w = ev.poisson_weights(50, 400, seed=0)
    assert w.shape == (400, 50)
    assert abs(w.mean() - 1) < 0.05


def test_calibration_bins():
    p = np.array([0.01, 0.02, 0.55, 0.58])
    won = np.array([0, 0, 1, 0])
    cal = ev.calibration(p, won, np.array(["a", "a", "b", "b"], dtype=object))
    allb = cal[cal.cohort == "all"].set_index("bin")
    assert allb.loc[0, "n"] == 2 and allb.loc[0, "won_rate"] == 0
    assert allb.loc[8, "p_mean"] == pytest.approx(0.565) and allb.loc[8, "won_rate"] == 0.5


def test_cka_identity_orthogonal_and_scale_invariant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert ev.linear_cka(x, x) == pytest.approx(1.0)
    assert ev.linear_cka(x, x @ q) == pytest.approx(1.0)
    assert ev.linear_cka(x, 3.7 * x + 2.0) == pytest.approx(1.0)
    assert ev.linear_cka(x, rng.normal(size=(200, 16))) < 0.3


@pytest.mark.parametrize(
    "a, b, kappa",
    [
        (["s", "u", "s", "u"], ["s", "u", "s", "u"], 1.0),
        (["s", "u", "s", "u"], ["u", "s", "u", "s"], -1.0),
        (["s", "s", "u", "u"], ["s", "u", "s", "u"], 0.0),
    ],
)
def test_cohen_kappa(a, b, kappa):
    assert ev.cohen_kappa(np.array(a), np.array(b)) == pytest.approx(kappa)


def test_churn_and_spread():
    race = np.array([0, 0, 1, 1])
    probs = np.array([[0.6, 0.6], [0.4, 0.4], [0.7, 0.3], [0.3, 0.7]])
    assert ev.top_pick_churn(probs, race) == pytest.approx(0.5)
    np.testing.assert_allclose(ev.prob_spread(probs), [0, 0, 0.2 * np.sqrt(2), 0.2 * np.sqrt(2)])  # ddof=1


def test_churn_per_race_is_symmetric_in_the_seeds_and_counts_every_race_once():
    race = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.5, 0.2], [0.3, 0.5], [0.2, 0.3], [0.6, 0.6], [0.3, 0.3], [0.1, 0.1]])
    np.testing.assert_allclose(ev.race_disagreement(probs, race), [1.0, 0.0])
    assert ev.top_pick_churn(probs, race) == pytest.approx(ev.top_pick_churn(probs[:, ::-1], race)) == 0.5
    three = np.column_stack([probs, probs[:, 0]])  # pairs (0,1) and (1,2) differ in race 0, (0,2) agree
    np.testing.assert_allclose(ev.race_disagreement(three, race), [2 / 3, 0.0])


def test_gap_vs_market_is_zero_against_itself_and_sign_is_right():
    p, won, race, dog, cohort, step = _races()
    w = ev.poisson_weights(len(cohort), 30, seed=2)
    unif = racing.uniform_probs(race)
    t = ev.cohort_metrics({"model": p, "market": p, "uniform": unif}, won, race, dog, cohort, weights=w)
    gap = t[t.metric == ev.GAP_METRIC]
    assert set(gap.source) == {"model"} and np.allclose(gap.value, 0)
    t2 = ev.cohort_metrics({"model": unif, "market": p}, won, race, dog, cohort, weights=w)
    g2 = t2[(t2.metric == ev.GAP_METRIC) & (t2.cohort == "all")].iloc[0]
    assert g2.value > 0 and g2.lo > 0  # uniform is worse than a skilled forecast
    assert g2.lo > 0 and g2.n_rows == len(p)


def test_the_stage_normalises_inputs_like_the_model_set_in_slices_and_on_demand():
    from flows.stages.evaluate import _lean_inputs
    from gruviz_core.features import fit_normaliser
    from gruviz_core.model_set import ModelSet
    from gruviz_core.sequences import Sequences

    rng = np.random.default_rng(0)
    n = 1000
    vals = rng.normal(size=(n, 4)).astype(np.float32)
    vals[rng.random((n, 4)) < 0.1] = np.nan
    ctx = rng.normal(2.0, 3.0, size=(n, 3)).astype(np.float32)
    seqs = Sequences(vals, ctx, np.array([0, 400, n]), np.array(["a", "b"], dtype=object),
                     np.array(["A", "B"], dtype=object), np.array([f"r{i}" for i in range(n)], dtype=object),
                     np.full(n, np.datetime64("2025-01-01")), np.zeros(n, np.float32), np.full(n, 0.5, np.float32),
                     ("f0", "f1", "f2", "f3"), ("c0", "c1", "c2"))
    norm = fit_normaliser(seqs).select(("f2", "f0", "f3"), ("c2", "c0"))  # a subset, reordered
    ms = ModelSet("s", [0], [], norm)
    want_v, want_c = ms.prepare(seqs)
    values, context = _lean_inputs(ms, seqs)
    rows = np.array([5, 999, 0, 400, 5])
    np.testing.assert_array_equal(context[rows], want_c[rows])
    assert context.shape == want_c.shape == (n, 2) and values.shape == want_v.shape == (n, 3)
    # values: rows on demand, by every kind of index resilience uses, each row computed once and kept
    np.testing.assert_array_equal(values[rows], want_v[rows])
    assert (values._slot >= 0).sum() == values._n == 4  # packed: only the rows asked for are kept
    np.testing.assert_array_equal(values[3:9], want_v[3:9])
    np.testing.assert_array_equal(values[7], want_v[7])
    mask = rng.random(n) < 0.3
    np.testing.assert_array_equal(values[mask], want_v[mask])
    np.testing.assert_array_equal(values[rows], want_v[rows])  # from the kept rows
    np.testing.assert_array_equal(values.columns(mask, [2, 0]), want_v[mask][:, [2, 0]])
    assert (values._slot >= 0).sum() == values._n == len(set(rows) | set(range(3, 9)) | set(np.flatnonzero(mask)))
    np.testing.assert_array_equal(values[:], want_v)
    np.testing.assert_array_equal(values[np.array([[1, 2], [999, 0]])], want_v[np.array([[1, 2], [999, 0]])])
    np.testing.assert_array_equal(values[-1], want_v[-1])


def test_the_stage_reads_resilience_inputs_from_the_store_by_rows_as_the_whole_arrays_give(tmp_path, monkeypatch):
    """The normalised inputs evaluate gives resilience, read from the sequences store in windows of chunks (and the
    training rows scanned a few rows at a time), equal those of the whole arrays in memory."""
    from flows.stages import evaluate as stage
    from gruviz_core.features import fit_normaliser
    from gruviz_core.model_set import ModelSet
    from gruviz_core.sequences import Sequences
    from storage import sequences as sq

    monkeypatch.setattr(sq, "CHUNK_BYTES", 256)
    monkeypatch.setattr(sq.RowsOnDemand, "WINDOW_CHUNKS", 3)
    monkeypatch.setattr(stage, "_SCAN_ROWS", 37)
    rng = np.random.default_rng(1)
    n = 1000
    vals = rng.normal(size=(n, 4)).astype(np.float32)
    vals[rng.random((n, 4)) < 0.1] = np.nan
    vals[:, 3] = rng.random(n) < 0.2  # a flag
    seqs = Sequences(vals, rng.normal(2.0, 3.0, size=(n, 3)).astype(np.float32), np.array([0, 400, n]),
                     np.array(["a", "b"], dtype=object), np.array(["A", "B"], dtype=object),
                     np.array([f"r{i}" for i in range(n)], dtype=object),
                     np.datetime64("2025-01-01") + np.arange(n).astype("timedelta64[D]"), np.zeros(n, np.float32),
                     np.full(n, 0.5, np.float32), ("f0", "f1", "f2", "f3"), ("c0", "c1", "c2"))
    path = tmp_path / "sequences.zarr"
    sq.save_sequences(seqs, path)
    ms = ModelSet("s", [0], [], fit_normaliser(seqs).select(("f3", "f0", "f2"), ("c2", "c0")),
                  meta={"cutoff": "2025-06-30"})
    values, context, train = stage._run_inputs(str(path), ms, np.array([0, 400, n]))
    want_v, want_c = ms.prepare(seqs)
    np.testing.assert_array_equal(train, seqs.race_date <= np.datetime64("2025-06-30"))
    for rows in (np.array([999, 5, 5, 0, 400]), slice(3, 900), rng.random(n) < 0.3, np.arange(n)):
        np.testing.assert_array_equal(values[rows], want_v[rows])
        np.testing.assert_array_equal(context[rows], want_c[rows])
    np.testing.assert_array_equal(stage._training_rows(values, train)(0), want_v[train][:, 0])
