"""The main comparison of information saturation, tested as science: simulated nights where the truth is
known (a planted effect, no effect, a planted composition confound) and the pipeline must recover it."""

from __future__ import annotations

import numpy as np
import pytest

from gruviz_core import comparisons as cmp
from gruviz_core import saturation as sat
from gruviz_core.cohorts import CohortRule

RULE = CohortRule()  # plateau-s v1 at its defaults


def _logit(p):
    return np.log(p / (1 - p))


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _night(seed: int, *, n_dogs: int = 900, effect: float = 0.0, confound: float = 0.0, seeds: int = 2):
    """A simulated held-out night: each dog's abs-sum rises to its own plateau at its own speed; every row is a
    one-runner race with a true win probability q; the market knows q up to small noise; each seed's model sees
    it through noise whose size grows by `effect` on rows that seed predicts settled. `confound` makes the dogs
    that settle fast (and so are settled at a given step) weaker. Returns (RowsBySeed, expected gap per row and seed)."""
    rng = np.random.default_rng(seed)
    n_steps = rng.integers(10, 60, n_dogs)
    offsets = np.concatenate([[0], np.cumsum(n_steps)])
    step = np.concatenate([np.arange(1, n + 1) for n in n_steps])
    dog = np.repeat(np.arange(n_dogs), n_steps)
    tau = rng.uniform(2.0, 12.0, n_dogs)  # races to settle
    level = rng.uniform(0.2, 0.4, n_dogs)
    s = np.stack([level[dog] * (1 - np.exp(-step / tau[dog])) * (1 + 0.003 * rng.standard_normal(len(step)))
                  for _ in range(seeds)])
    ability = rng.normal(0, 0.5, n_dogs) + confound * (tau - tau.mean()) / tau.std()
    q = _sig(-1.8 + ability[dog] + 0.3 * rng.standard_normal(len(step)))
    won = (rng.random(len(step)) < q).astype(float)
    market = _sig(_logit(q) + 0.1 * rng.standard_normal(len(step)))
    d0 = sat.RowsBySeed(p=np.zeros((len(step), seeds)), market=market, won=won, race=np.arange(len(step)),
                        dog=dog, row=np.arange(len(step)), in_scope=np.ones(len(step), bool), s=s,
                        write=np.stack([1 - s[k] for k in range(seeds)]), move=np.abs(np.diff(s, prepend=0, axis=1)),
                        step=step, offsets=offsets)
    settled = sat._status(d0, sat._plateaus(d0, RULE), RULE).status.reshape(seeds, -1) == "settled"  # (K, n)
    p = np.stack([_sig(_logit(q) + (0.3 + effect * settled[k]) * rng.standard_normal(len(step))) for k in range(seeds)],
                 axis=1)
    ll = lambda x: -(q * np.log(x) + (1 - q) * np.log(1 - x))  # noqa: E731  expected log-loss under the truth
    return sat.RowsBySeed(**{**d0.__dict__, "p": p}), np.stack([ll(p[:, k]) - ll(market) for k in range(seeds)]), settled


def _true_effect(d: sat.RowsBySeed, exp_gap: np.ndarray, settled: np.ndarray) -> float:
    """The estimand on the simulated population: the stratified difference of EXPECTED gaps (no outcome noise)."""
    step = np.tile(d.step[d.row], d.n_seeds)
    status = sat._status(d, sat._plateaus(d, RULE), RULE).status
    y = exp_gap.ravel()
    stratum = cmp.fine_stratum_of(step)
    diffs, wts = [], []
    for st in np.unique(stratum.astype(str)):
        a, b = (stratum == st) & (status == "settled"), (stratum == st) & (status == "settling")
        if a.any() and b.any():
            diffs.append(y[a].mean() - y[b].mean())
            wts.append(a.sum() + b.sum())
    return float(np.average(diffs, weights=wts))


def test_a_planted_effect_is_found_with_its_sign_and_size():
    d, exp_gap, settled = _night(1, effect=0.9)
    w = cmp.bootstrap_weights(d.n_dogs, 400, 0)
    res = sat.compare_saturation(d, RULE, w, grid_weights=w[:100])
    truth = _true_effect(d, exp_gap, settled)
    assert truth > 0.02  # the planted effect is real and not tiny
    m = res.main
    assert m["comparable"] and m["diff"] > 0 and m["lo"] <= truth <= m["hi"]
    assert res.within_dog["diff"] > 0 and res.within_dog["excludes_zero"]
    assert res.verdict["kind"] == "robust"


@pytest.mark.slow  # 24 simulated nights, ~7 s
def test_b_no_effect_is_claimed_at_most_one_night_in_ten():
    claims, mains = 0, 0
    nights = 24
    for night in range(nights):
        d, _, _ = _night(100 + night, n_dogs=500)
        w = cmp.bootstrap_weights(d.n_dogs, 200, night)
        res = sat.compare_saturation(d, RULE, w, grid_weights=w[:60])
        claims += res.verdict["kind"] == "robust"
        mains += bool(res.main["excludes_zero"])
    assert claims / nights <= 0.10
    assert mains / nights <= 0.25  # the raw main comparison alone is near its nominal 5%, with room for noise


def test_c_a_composition_confound_is_flagged_and_not_called_an_effect():
    d, exp_gap, settled = _night(7, confound=1.0)
    w = cmp.bootstrap_weights(d.n_dogs, 400, 0)
    res = sat.compare_saturation(d, RULE, w, grid_weights=w[:100])
    comp = res.composition
    # settled dogs at a given step are the fast settlers, made weaker: fewer wins, lower market log-loss
    assert comp["market_win_rate"]["diff"] < 0 and comp["market_win_rate"]["excludes_zero"]
    assert comp["market_log_loss"]["excludes_zero"]
    assert res.verdict["kind"] != "robust"
    truth = _true_effect(d, exp_gap, settled)
    assert abs(truth) < 0.01  # the model is equally good on both groups
    assert abs(res.main["diff"] - truth) < 0.01  # and the comparison says so, within its noise
    assert abs(comp["market_log_loss"]["diff"]) > 5 * abs(truth)  # while the market's own log-loss differs a lot


def test_dose_slope_recovers_a_planted_step_adjusted_slope_and_ignores_the_step_trend():
    rng = np.random.default_rng(3)
    n_dogs, per = 400, 30
    dog = np.repeat(np.arange(n_dogs), per)
    step = np.tile(np.arange(1, per + 1), n_dogs)
    x = step / per + rng.normal(0, 0.2, len(step))  # rises with step, as s does
    y = -0.05 * step / per + 0.01 * (x - step / per) / 0.2 + rng.normal(0, 0.05, len(step))  # 0.01 per SD within step
    w = cmp.bootstrap_weights(n_dogs, 300, 0)
    r = sat.dose_fe(y, x, dog, step.astype(str), np.ones(len(y), bool), w, n_dogs=n_dogs, name="x")
    sd = float(np.std(x))
    assert r["lo"] <= 0.01 * sd / 0.2 <= r["hi"] and r["slope_per_sd"] > 0  # the raw trend would be negative


def test_holm_adjusts_only_tests_that_produced_a_p_value():
    out = sat.holm({"a": 0.01, "b": 0.04, "c": None, "d": 0.03})
    assert [x["name"] for x in out] == ["a", "d", "b"]
    assert out[0]["p_adj"] == pytest.approx(0.03) and out[1]["p_adj"] == pytest.approx(0.06)
    assert [x["rejected"] for x in out] == [True, False, False]


def test_gap_by_race_count_recovers_a_gap_that_shrinks_with_history():
    rng = np.random.default_rng(5)
    n_dogs, per = 600, 50
    dog = np.repeat(np.arange(n_dogs), per)
    step = np.tile(np.arange(1, per + 1), n_dogs)
    q = _sig(rng.normal(-1.8, 0.6, len(step)))
    won = (rng.random(len(step)) < q).astype(float)
    noise = 0.9 / np.sqrt(step)  # the model knows less about young dogs
    p = _sig(_logit(q) + noise * rng.standard_normal(len(step)))
    w = cmp.bootstrap_weights(n_dogs, 300, 0)
    out = sat.gap_by_race_count(p, q, won, np.arange(len(step)), dog, step, np.ones(len(step), bool), w, n_dogs=n_dogs)
    by = {x["bucket"]: x for x in out}
    assert list(by) == ["1", "2-5", "6-10", "11-20", "21-40", "41+"]
    assert by["1"]["diff"] > by["41+"]["diff"] and by["1"]["lo"] > by["41+"]["hi"]


def test_dose_and_within_dog_by_blocks_of_replicates_give_the_whole_numbers(monkeypatch):
    """dose_fe and within_dog_fe cast uint8 weights to float64 a block of replicates at a time: the same
    records as float32 weights cast whole (one float64 (B, dog) copy, 8 GB at 1M dogs and B = 1,000)."""
    rng = np.random.default_rng(8)
    n_dogs, per = 3000, 20
    dog = np.repeat(np.arange(n_dogs), per)
    step = np.tile(np.arange(1, per + 1), n_dogs)
    x = step / per + rng.normal(0, 0.2, len(step))
    y = 0.01 * x + rng.normal(0, 0.05, len(step))
    after = step > rng.integers(3, per, n_dogs)[dog]
    keep = rng.random(len(y)) < 0.9
    w8 = cmp.bootstrap_weights(n_dogs, 200, 0)
    args = (dog, step.astype(str), keep)

    def both(w):
        return (sat.dose_fe(y, x, *args, w, n_dogs=n_dogs, name="x"),
                sat.within_dog_fe(y, dog, after, step.astype(str), keep, w, n_dogs=n_dogs))

    whole = both(w8.astype(np.float32))
    monkeypatch.setattr(cmp, "_BLOCK_BYTES", 16 * n_dogs * 8)  # blocks of 16 replicates
    assert len(list(cmp.replicate_blocks(w8, dtype=np.float64))) == 13
    for got, want in zip(both(w8), whole):  # bit for bit here; to rounding on another CPU's OpenBLAS kernels
        assert got.keys() == want.keys()
        for key, v in want.items():
            assert got[key] == (pytest.approx(v, rel=1e-9, abs=1e-15, nan_ok=True) if isinstance(v, float) else v), key
