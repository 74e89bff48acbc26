"""Training the built-in model: the race loss, padding, learning a signal, determinism per seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gruviz_core.errors import ConfigError
from gruviz_core.features import (
    CATEGORICAL,
    CONTEXT_NAMES,
    TRACK_INDEX,
    build_sequences,
    fit_normaliser,
    home_group,
    track_embedding_columns,
)
from gruviz_core.model import ModelConfig, RaceGRU
from gruviz_core.racing import race_codes, race_softmax
from gruviz_core.sequences import pad_batch
from gruviz_core.synth import simulate
from gruviz_core.train import (
    TrainConfig,
    TrainData,
    conditional_logit_nll,
    score_rows,
    time_split,
    train_seed,
    win_metrics,
    window_report,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Two busy cores shared by several jobs: one intra-op thread is ~30x faster than two fighting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FAST = TrainConfig(epochs=6, lr=2e-2, batch_rows=3000, chunk_dogs=256, patience=2)


def _data(runs, val_frac: float = 0.2) -> TrainData:
    seqs = build_sequences(runs)
    _, train, val = time_split(seqs.race_date, val_frac)
    v, c = fit_normaliser(seqs, train).apply(seqs.values, seqs.context)
    return TrainData(v, c, seqs.offsets, race_codes(seqs.race_id), seqs.won, seqs.market_prob, train, val, home_group(seqs))


@pytest.fixture(scope="module")
def synth_data() -> TrainData:
    return _data(simulate(250, 7))


def _cfg(data: TrainData, seed: int = 0, **kw) -> ModelConfig:
    """The built-in model as the train stage configures it: track embedding and box x track table."""
    kw.setdefault("context_skip", True)
    if data.context.shape[1] == len(CONTEXT_NAMES):
        col, box = track_embedding_columns(CONTEXT_NAMES)
        kw = {"track_column": col, "n_tracks": CATEGORICAL[TRACK_INDEX], "box_columns": box, **kw}
    return ModelConfig(data.values.shape[1], data.context.shape[1], hidden_size=12, head_hidden=12, seed=seed, **kw)


def test_conditional_logit_matches_race_softmax():
    rng = np.random.default_rng(0)
    race = np.repeat(np.arange(30), rng.integers(2, 9, 30))
    scores = rng.normal(size=len(race))
    won = np.zeros(len(race))
    won[np.r_[0, np.flatnonzero(np.diff(race)) + 1]] = 1.0  # first runner of each race wins
    loss, n = conditional_logit_nll(torch.tensor(scores), torch.tensor(race), torch.tensor(won))
    expected = -np.log(race_softmax(scores, race)[won == 1]).sum()
    assert n == 30 and float(loss) == pytest.approx(expected, rel=1e-10)


def test_races_without_winner_or_single_runner_give_no_term():
    race = torch.tensor([0, 0, 1, 2, 2])
    won = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])
    loss, n = conditional_logit_nll(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0]), race, won)
    assert n == 1 and float(loss) == pytest.approx(np.log(2.0))


def test_time_split_holds_out_the_latest_dates():
    dates = np.array(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"], dtype="datetime64[D]").repeat(3)
    cutoff, train, val = time_split(dates, 0.25)
    assert cutoff == np.datetime64("2024-01-03") and val.sum() == 3 and (dates[val] > dates[train].max()).all()
    with pytest.raises(ConfigError, match="at least 2 dates"):
        time_split(dates[:3], 0.2)


def test_padding_and_chunking_change_nothing(synth_data):
    torch.manual_seed(0)
    model = RaceGRU(_cfg(synth_data))
    d = synth_data
    offsets = d.offsets[:41]  # the first 40 dogs, one at a time vs all in one padded chunk
    alone = score_rows(model, d.values, d.context, offsets, chunk_dogs=1)[: offsets[-1]]
    together = score_rows(model, d.values, d.context, offsets, chunk_dogs=10_000)[: offsets[-1]]
    np.testing.assert_allclose(alone, together, atol=1e-5)
    dogs = np.array([0, 5, 9])
    x, lengths = pad_batch(d.values, d.offsets, dogs)
    c, _ = pad_batch(d.context, d.offsets, dogs)
    with torch.no_grad():
        padded = model(torch.from_numpy(x), torch.from_numpy(c)).numpy()
    for b, dog in enumerate(dogs):
        np.testing.assert_allclose(padded[b, : lengths[b]], alone[d.offsets[dog]:d.offsets[dog + 1]], atol=1e-5)


def test_gru_learns_form_on_synth_without_prices():
    runs = simulate(250, 7)
    runs["bsp_decimal"], runs["sp_decimal"] = pd.NA, pd.NA  # no market: only the dogs' histories tell
    data = _data(runs)
    result = train_seed(data, _cfg(data), FAST)
    m = result.metrics
    assert m["model"]["n_races"] > 20 and "market" not in m
    assert m["model"]["race_log_loss"] < m["uniform"]["race_log_loss"] - 0.3
    assert m["model"]["log_loss"] < m["uniform"]["log_loss"]
    assert m["model"]["hit_rate"] > m["uniform"]["hit_rate"] + 0.2
    assert 1 <= result.best_epoch <= len(result.curve)
    assert {"batch_loss", "train_loss", "val_loss"} <= set(result.curve.columns)


def test_context_skip_starts_from_the_market(synth_data):
    result = train_seed(synth_data, _cfg(synth_data), TrainConfig(epochs=1, batch_rows=5000))
    m = result.metrics
    assert m["market"]["n_rows"] == m["model_priced"]["n_rows"]
    assert m["model_priced"]["race_log_loss"] < m["market"]["race_log_loss"] + 0.05
    assert m["model"]["race_log_loss"] < m["uniform"]["race_log_loss"] - 0.3


def test_training_is_deterministic_per_seed(synth_data):
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_rows=1500, chunk_dogs=64, patience=5)
    a, b = train_seed(synth_data, _cfg(synth_data, 3), cfg), train_seed(synth_data, _cfg(synth_data, 3), cfg)
    c = train_seed(synth_data, _cfg(synth_data, 4), cfg)
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], rtol=0, atol=0)
    assert a.metrics == b.metrics
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_track_embedding_and_box_by_track_learn_only_seen_tracks(synth_data):
    cfg = TrainConfig(epochs=1, batch_rows=5000, chunk_dogs=128)
    r = train_seed(synth_data, _cfg(synth_data), cfg)
    seen = np.unique(synth_data.context[synth_data.train_rows, CONTEXT_NAMES.index(TRACK_INDEX)]).astype(int)
    table = r.state_dict["box_track_emb.weight"].numpy()  # (tracks, boxes), starts at 0
    assert table.shape == (CATEGORICAL[TRACK_INDEX], 8) and len(seen) >= 2
    assert np.abs(table[seen]).sum() > 0
    unseen = np.setdiff1d(np.arange(len(table)), seen)
    np.testing.assert_array_equal(table[unseen], 0.0)  # no gradient reaches a track never raced on
    model = RaceGRU(r.config)
    model.load_state_dict(r.state_dict)
    ctx = torch.from_numpy(synth_data.context[:50][None].copy())
    x = torch.from_numpy(synth_data.values[:50][None].copy())
    other = ctx.clone()
    other[..., CONTEXT_NAMES.index(TRACK_INDEX)] = float(unseen[0])
    with torch.no_grad():
        assert not torch.allclose(model(x, ctx), model(x, other))  # the track reaches the score via its embedding


def test_two_layer_model_trains(synth_data):
    cfg = TrainConfig(epochs=1, batch_rows=5000, chunk_dogs=128)
    r = train_seed(synth_data, _cfg(synth_data, num_layers=2), cfg)
    assert "gru.weight_hh_l1" in r.state_dict and np.isfinite(r.metrics["model"]["log_loss"])


def test_win_metrics_of_a_perfect_forecast():
    race = np.array([0, 0, 1, 1, 1])
    won = np.array([1.0, 0, 0, 1, 0])
    m = win_metrics(won * 0.999 + 0.0002, won, race)
    assert m["hit_rate"] == 1.0 and m["race_log_loss"] < 0.01 and m["n_races"] == 2


def test_window_report_scores_the_mean_of_seeds_beside_baselines_on_the_same_races():
    race = np.repeat(np.arange(4), 3)
    won = np.tile([1.0, 0.0, 0.0], 4).astype(np.float32)
    market = np.tile([0.5, 0.3, 0.2], 4).astype(np.float32)
    market[3:6] = np.nan  # race 1 unpriced: left out of the market comparison only
    data = TrainData(np.zeros((12, 1), np.float32), np.zeros((12, 1), np.float32), np.array([0, 12]), race, won,
                     market, np.zeros(12, bool), np.zeros(12, bool), np.zeros(1, np.int64), np.ones(12, bool))
    s0, s1 = np.tile([1.0, 0.0, 0.0], 4), np.tile([0.0, 0.0, 0.0], 4)
    rated = np.tile([2.0, 1.0, 1.0], 4)  # unnormalised: renormalised within the race -> 0.5, 0.25, 0.25
    rated[0] = np.nan  # race 0 unrated
    out = window_report({"0": s0, "1": s1}, data, np.ones(12, bool), {"rated": rated})
    p0 = np.exp(1.0) / (np.exp(1.0) + 2.0)
    ens = (p0 + 1.0 / 3.0) / 2.0
    assert out["per_seed"]["0"]["race_log_loss"] == pytest.approx(-np.log(p0))
    assert out["ensemble"]["race_log_loss"] == pytest.approx(-np.log(ens))
    m = out["vs"]["market"]
    assert m["baseline"]["n_races"] == 3 and m["baseline"]["race_log_loss"] == pytest.approx(-np.log(0.5))
    assert m["diff"]["race_log_loss"] == pytest.approx(-np.log(ens) + np.log(0.5))
    r = out["vs"]["rated"]
    assert r["baseline"]["n_races"] == 3 and r["baseline"]["race_log_loss"] == pytest.approx(-np.log(0.5))
    assert out["vs"]["uniform"]["diff"]["race_log_loss"] == pytest.approx(-np.log(ens) - np.log(3.0))


def test_place_term_only_acts_where_a_second_is_known(synth_data):
    from dataclasses import replace

    cfg = TrainConfig(epochs=1, batch_rows=5000, chunk_dogs=128)
    placed = TrainConfig(epochs=1, batch_rows=5000, chunk_dogs=128, place_weight=1.0)
    base = train_seed(synth_data, _cfg(synth_data), cfg)
    none_known = train_seed(replace(synth_data, second=np.zeros_like(synth_data.won)), _cfg(synth_data), placed)
    for k in base.state_dict:  # no race with a known second: no place term, the same weights
        torch.testing.assert_close(base.state_dict[k], none_known.state_dict[k], rtol=0, atol=0)
    race = synth_data.race
    rng = np.random.default_rng(0)
    second = np.zeros_like(synth_data.won)
    for r in np.unique(race[:3000]):  # one loser of each race comes second
        losers = np.flatnonzero((race == r) & (synth_data.won == 0))
        if len(losers):
            second[rng.choice(losers)] = 1.0
    with_term = train_seed(replace(synth_data, second=second), _cfg(synth_data), placed)
    assert any(not torch.equal(base.state_dict[k], with_term.state_dict[k]) for k in base.state_dict)
    assert np.isfinite(with_term.curve["val_loss"]).all()
