"""Leak-free sequences from a canonical runs table, and the normaliser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gruviz_core.errors import FeatureMismatchError
from gruviz_core.features import (
    CONTEXT_NAMES, FEATURE_NAMES, Normaliser, build_sequences, fit_normaliser, grade_number, home_group,
)
from gruviz_core.schema import conform


def toy_runs(n_dogs: int = 60, n_races: int = 200, seed: int = 0, *, tracks: int = 3) -> pd.DataFrame:
    """A canonical table with a learnable signal: latent ability decides wins, times and prices."""
    rng = np.random.default_rng(seed)
    ability = rng.normal(0.0, 1.0, n_dogs)
    home = rng.integers(0, tracks, n_dogs)
    rows = []
    for r in range(n_races):
        track = r % tracks
        pool = np.flatnonzero(home == track)
        field = rng.choice(pool, size=min(len(pool), int(rng.integers(6, 9))), replace=False)
        perf = 1.5 * ability[field] + rng.gumbel(size=len(field))
        order = np.argsort(-perf)
        place = np.empty(len(field), dtype=int)
        place[order] = np.arange(1, len(field) + 1)
        p = np.exp(1.5 * ability[field] + rng.normal(0, 0.3, len(field)))
        p = p / p.sum() * 1.15
        for i, d in enumerate(field):
            run_time = 30.0 + track - 0.15 * perf[i] + rng.normal(0, 0.05)
            rows.append({
                "dog_id": f"D{d:04d}", "dog_name": f"Dog {d}", "race_id": f"R{r:05d}",
                "race_date": pd.Timestamp("2024-01-01") + pd.Timedelta(days=r // tracks),
                "track": f"Track {track}", "distance_m": 500, "grade": "Gr5", "box": i + 1,
                "field_size": len(field), "finish_pos": place[i], "won": place[i] == 1,
                "run_time_s": run_time, "win_time_s": np.nan, "sectional_s": run_time / 3.0,
                "margin_lengths": (place[i] - 1) * 1.5, "weight_kg": 30.0 + d % 5,
                "sp_decimal": np.nan, "bsp_decimal": max(1.0 / p[i], 1.01), "source": "synth",
            })
    return conform(pd.DataFrame(rows))


def _by_key(seqs) -> pd.DataFrame:
    dog = np.repeat(seqs.dog_id, seqs.row_size)
    cols = {f"v:{n}": seqs.values[:, i] for i, n in enumerate(seqs.feature_names)}
    cols |= {f"c:{n}": seqs.context[:, i] for i, n in enumerate(seqs.context_names)}
    return pd.DataFrame({"dog": dog, "race": seqs.race_id, **cols}).set_index(["dog", "race"]).sort_index()


def test_shapes_names_and_order():
    runs = toy_runs()
    seqs = build_sequences(runs.sample(frac=1.0, random_state=1))
    assert seqs.values.shape == (len(runs), len(FEATURE_NAMES))
    assert seqs.context.shape == (len(runs), len(CONTEXT_NAMES))
    assert seqs.offsets[-1] == len(runs) and seqs.n_dogs == runs["dog_id"].nunique()
    for d in range(seqs.n_dogs):
        dates = seqs.race_date[seqs.dog_rows(d)]
        assert (np.diff(dates.astype(np.int64)) >= 0).all()
    assert set(np.unique(seqs.won)) <= {0.0, 1.0}
    np.testing.assert_allclose(pd.Series(seqs.market_prob).groupby(seqs.race_id).sum(), 1.0, rtol=1e-5)


def test_no_leakage_when_later_races_are_added():
    runs = toy_runs(n_races=240)
    cut = runs["race_date"] < runs["race_date"].quantile(0.6)
    early, full = _by_key(build_sequences(runs[cut])), _by_key(build_sequences(runs))
    pd.testing.assert_frame_equal(early, full.loc[early.index])


def test_reference_uses_earlier_dates_only():
    runs = toy_runs(n_races=120)
    seqs = build_sequences(runs)
    t = seqs.feature_names.index("time_z")
    first_dates = seqs.race_date <= np.sort(np.unique(seqs.race_date))[4]
    # fewer than 5 earlier runs at the first meetings: no reference yet, flagged missing
    assert np.isnan(seqs.values[seqs.race_date == seqs.race_date.min(), t]).all()
    assert np.isfinite(seqs.values[~first_dates, t]).mean() > 0.9
    miss = seqs.values[:, seqs.feature_names.index("time_missing")]
    np.testing.assert_array_equal(miss == 1, np.isnan(seqs.values[:, t]))


def test_missing_inputs_are_flagged_and_unknown_results_dropped():
    runs = toy_runs(n_races=60)
    runs.loc[0:9, "weight_kg"] = pd.NA
    runs.loc[0:3, "bsp_decimal"] = pd.NA
    runs.loc[20, ["won", "finish_pos"]] = pd.NA
    seqs = build_sequences(runs)
    assert seqs.n_obs == len(runs) - 1
    ctx = seqs.context_names
    assert np.isnan(seqs.market_prob).sum() >= 4
    np.testing.assert_array_equal(seqs.context[:, ctx.index("market_missing")] == 1, np.isnan(seqs.market_prob))
    days_missing = seqs.values[:, seqs.feature_names.index("days_missing")]
    assert days_missing[seqs.offsets[:-1]].all() and days_missing.sum() == seqs.n_dogs


def test_grade_numbers():
    assert grade_number("Gr4/5") == 4.5
    assert grade_number("Mdn") == 8.0 and grade_number("Nvce") == 7.0 and grade_number("FFA") == 1.0
    assert np.isnan(grade_number("Heat"))


def test_normaliser_round_trip_and_apply():
    seqs = build_sequences(toy_runs(n_races=80))
    norm = fit_normaliser(seqs, seqs.race_date < np.datetime64("2024-01-15"))
    again = Normaliser.from_dict(norm.to_dict())
    assert again == norm
    v, c = norm.apply(seqs.values, seqs.context)
    assert v.dtype == np.float32 and np.isfinite(v).all() and np.isfinite(c).all()
    won = seqs.feature_names.index("won")
    np.testing.assert_array_equal(v[:, won], seqs.values[:, won])  # binary columns untouched
    sub = norm.select(["won", "box"], ["market_prob"])
    v2, _ = sub.apply(seqs.values[:, [won, seqs.feature_names.index("box")]], seqs.context[:, [ctx_i(seqs)]])
    np.testing.assert_array_equal(v2[:, 1], v[:, seqs.feature_names.index("box")])
    with pytest.raises(FeatureMismatchError, match="nope"):
        norm.select(["nope"], [])


def ctx_i(seqs) -> int:
    return seqs.context_names.index("market_prob")


def test_home_group_is_the_most_frequent_track():
    seqs = build_sequences(toy_runs(n_races=60, tracks=3))
    g = home_group(seqs)
    assert g.shape == (seqs.n_dogs,) and len(np.unique(g)) <= 3
